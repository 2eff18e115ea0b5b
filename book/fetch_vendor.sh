#!/usr/bin/env bash
# Fetch the book's offline JavaScript from the npm registry (the only place we
# may download from) into book/_vendor/. The files are generated: never edit them.
# Pinned versions: the book must render the same way on every machine.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="$here/_vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

packages=(mathjax@3.2.2 @jupyter-widgets/html-manager@1.0.7 requirejs@2.3.8)
( cd "$work" && for p in "${packages[@]}"; do npm pack --silent "$p" >/dev/null; done )

unpack() {  # unpack TARBALL DIR
  mkdir -p "$2" && tar -xzf "$1" -C "$2" --strip-components=1
}
unpack "$work"/mathjax-3.2.2.tgz "$work/mathjax"
unpack "$work"/jupyter-widgets-html-manager-1.0.7.tgz "$work/html-manager"
unpack "$work"/requirejs-2.3.8.tgz "$work/requirejs"

rm -rf "$dest.tmp" && mkdir -p "$dest.tmp/mathjax/output/chtml/fonts"
cp "$work/mathjax/es5/tex-mml-chtml.js" "$dest.tmp/mathjax/"
cp -r "$work/mathjax/es5/output/chtml/fonts/woff-v2" "$dest.tmp/mathjax/output/chtml/fonts/"
cp "$work/html-manager/dist/embed-amd.js" "$dest.tmp/embed-amd.js"
cp "$work/requirejs/require.js" "$dest.tmp/require.js"
rm -rf "$dest" && mv "$dest.tmp" "$dest"
echo "vendored: ${packages[*]} -> $dest"
