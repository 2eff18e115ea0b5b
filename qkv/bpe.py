"""Byte-level BPE (Sennrich et al. 2016; GPT-2's byte-level variant, Radford et al. 2019).

Conventions used throughout the course:

* token ids ``0..255`` are the single bytes (id ``b`` is ``bytes([b])``);
* merge ``i`` (``merges[i] == (a, b)``, two token ids) creates token id ``256 + i``
  whose bytes are ``vocab[a] + vocab[b]``;
* special tokens (e.g. ``"<|endoftext|>"``) come last: id ``256 + len(merges) + j``.

Training pre-tokenizes the text with GPT-2's regular expression (so merges never
cross a word/space/punctuation boundary), keeps special tokens whole and out of
the statistics, then repeatedly merges the most frequent adjacent pair. Ties
between equally frequent pairs go to the lexicographically greatest pair of byte
strings ``(vocab[a], vocab[b])``, so training is deterministic.

Two trainers produce identical merges: :func:`train_bpe_naive` recounts every
pair after every merge; :func:`train_bpe` updates the counts incrementally
(only the words that contain the merged pair change) and keeps a lazy max-heap.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence

import regex

# GPT-2's pre-tokenizer (openai/gpt-2, src/encoder.py): contractions, letters, numbers,
# other symbols, each optionally preceded by one space; then runs of whitespace.
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_GPT2_SPLIT = regex.compile(GPT2_SPLIT_PATTERN)

Pair = tuple[int, int]


# ----------------------------------------------------------------------------- small helpers


def get_pair_counts(ids: Sequence[int], counts: dict[Pair, int] | None = None, weight: int = 1) -> dict[Pair, int]:
    """Count adjacent pairs in ``ids`` (overlapping: ``[a, a, a]`` has the pair ``(a, a)`` twice).

    Adds ``weight`` per occurrence to ``counts`` (a new dict if None) and returns it.
    """
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def merge(ids: Sequence[int], pair: Pair, new_id: int) -> list[int]:
    """Replace every occurrence of ``pair`` in ``ids`` by ``new_id``, scanning left to right.

    Occurrences are non-overlapping and taken from the left: merging ``(a, a)`` in
    ``[a, a, a]`` gives ``[aa, a]``, not ``[a, aa]`` nor ``[aa, aa]``.
    """
    out: list[int] = []
    i = 0
    n = len(ids)
    while i < n:
        if i + 1 < n and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2  # skip both halves: the second one may not start another occurrence
        else:
            out.append(ids[i])
            i += 1
    return out


def _special_splitter(special_tokens: Iterable[str]):
    specials = sorted(set(special_tokens), key=len, reverse=True)  # longest first: "<|a|><|b|>" overlaps
    if any(not s for s in specials):
        raise ValueError("special tokens must be non-empty strings")
    if not specials:
        return None
    return regex.compile("(" + "|".join(regex.escape(s) for s in specials) + ")")


def split_special(text: str, special_tokens: Iterable[str] = ()) -> list[tuple[str, bool]]:
    """Split ``text`` into ``(piece, is_special)`` pieces; special tokens are kept whole."""
    splitter = _special_splitter(special_tokens)
    if splitter is None:
        return [(text, False)] if text else []
    specials = set(special_tokens)
    return [(p, p in specials) for p in splitter.split(text) if p]


def pretokenize(text: str, special_tokens: Iterable[str] = ()) -> list[str]:
    """GPT-2 pre-tokens of ``text``; special tokens are dropped (they are never trained on)."""
    chunks: list[str] = []
    for piece, is_special in split_special(text, special_tokens):
        if not is_special:
            chunks.extend(_GPT2_SPLIT.findall(piece))
    return chunks


def _check_text(text: str) -> bytes:
    """UTF-8 bytes of ``text``; a lone surrogate (not valid Unicode) raises ValueError."""
    if not isinstance(text, str):
        raise ValueError(f"expected text of type str, got {type(text).__name__}")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as err:
        bad = text[err.start]
        raise ValueError(
            f"text contains a lone surrogate U+{ord(bad):04X} at index {err.start}: it is not a Unicode character "
            "and has no UTF-8 encoding, so byte-level BPE rejects it (fix the text, e.g. "
            "s.encode('utf-16', 'surrogatepass').decode('utf-16', 'replace'))"
        ) from None


def _word_counts(text: str, special_tokens: Iterable[str]) -> Counter:
    _check_text(text)
    return Counter(chunk.encode("utf-8") for chunk in pretokenize(text, special_tokens))


def _num_merges(vocab_size: int, special_tokens: Sequence[str]) -> int:
    n = vocab_size - 256 - len(set(special_tokens))
    if n < 0:
        raise ValueError(
            f"vocab_size={vocab_size} is smaller than the 256 bytes plus {len(set(special_tokens))} special token(s)")
    return n


def build_vocab(merges: Sequence[Pair], special_tokens: Sequence[str] = ()) -> dict[int, bytes]:
    """id -> bytes for the 256 bytes, then each merge, then the special tokens (UTF-8)."""
    vocab = {i: bytes([i]) for i in range(256)}
    for i, (a, b) in enumerate(merges):
        vocab[256 + i] = vocab[a] + vocab[b]
    for j, s in enumerate(dict.fromkeys(special_tokens)):
        vocab[256 + len(merges) + j] = s.encode("utf-8")
    return vocab


# ----------------------------------------------------------------------------- training


def train_bpe_naive(text: str, vocab_size: int,
                    special_tokens: Sequence[str] = ()) -> tuple[dict[int, bytes], list[Pair]]:
    """Reference trainer: recount every pair in every distinct pre-token after every merge.

    Returns ``(vocab, merges)``: ``vocab`` maps id -> bytes (ids 0-255 are the bytes,
    then one id per merge, then the special tokens); ``merges[i] = (a, b)`` created id
    ``256 + i``. Stops early if no pair is left. Raises ValueError if ``vocab_size`` is
    below ``256 + len(special_tokens)`` or the text contains a lone surrogate.
    Cost: O(merges x corpus symbols).
    """
    n_merges = _num_merges(vocab_size, special_tokens)
    words = [(list(w), c) for w, c in _word_counts(text, special_tokens).items()]
    vocab = {i: bytes([i]) for i in range(256)}
    merges: list[Pair] = []
    for step in range(n_merges):
        counts: dict[Pair, int] = {}
        for ids, c in words:
            get_pair_counts(ids, counts, c)
        if not counts:
            break
        # Most frequent; ties -> lexicographically greatest (bytes_a, bytes_b).
        best = max(counts, key=lambda p: (counts[p], vocab[p[0]], vocab[p[1]]))
        new_id = 256 + step
        words = [(merge(ids, best, new_id), c) for ids, c in words]
        merges.append(best)
        vocab[new_id] = vocab[best[0]] + vocab[best[1]]
    return build_vocab(merges, special_tokens), merges


class _Desc:
    """Wraps a (bytes, bytes) key so that heapq's min-heap pops the *greatest* key first."""

    __slots__ = ("key",)

    def __init__(self, key: tuple[bytes, bytes]):
        self.key = key

    def __lt__(self, other: _Desc) -> bool:
        return self.key > other.key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and self.key == other.key


def train_bpe(text: str, vocab_size: int, special_tokens: Sequence[str] = ()) -> tuple[dict[int, bytes], list[Pair]]:
    """Efficient trainer: same result as :func:`train_bpe_naive`, with incremental pair counts.

    Keeps ``counts[pair]``, an index ``where[pair]`` of the distinct words that may contain
    the pair, and a lazy max-heap of ``(count, bytes_a, bytes_b)``. A merge only touches the
    words that contain the pair: their old pairs are subtracted and their new pairs added,
    and every changed count is pushed again (stale heap entries are skipped on pop).
    Returns ``(vocab, merges)`` as :func:`train_bpe_naive`; raises the same ValueErrors.
    """
    n_merges = _num_merges(vocab_size, special_tokens)
    word_counts = _word_counts(text, special_tokens)
    words = [list(w) for w in word_counts]
    freqs = list(word_counts.values())
    vocab = {i: bytes([i]) for i in range(256)}

    counts: dict[Pair, int] = defaultdict(int)
    where: dict[Pair, set[int]] = defaultdict(set)
    for idx, (ids, f) in enumerate(zip(words, freqs)):
        for pair in zip(ids, ids[1:]):
            counts[pair] += f
            where[pair].add(idx)
    heap = [(-c, _Desc((vocab[a], vocab[b])), (a, b)) for (a, b), c in counts.items()]
    heapq.heapify(heap)

    merges: list[Pair] = []
    while len(merges) < n_merges and heap:
        neg, _, pair = heapq.heappop(heap)
        if counts.get(pair, 0) != -neg or neg == 0:
            continue  # stale entry: the count changed after it was pushed
        new_id = 256 + len(merges)
        merges.append(pair)
        vocab[new_id] = vocab[pair[0]] + vocab[pair[1]]
        changed: set[Pair] = set()
        for idx in where.pop(pair):
            old = words[idx]
            new = merge(old, pair, new_id)
            if len(new) == len(old):
                continue  # the index is lazy: this word no longer contains the pair
            f = freqs[idx]
            for p in zip(old, old[1:]):
                counts[p] -= f
                changed.add(p)
            for p in zip(new, new[1:]):
                counts[p] += f
                changed.add(p)
                where[p].add(idx)
            words[idx] = new
        for p in changed:
            c = counts[p]
            if c > 0:
                heapq.heappush(heap, (-c, _Desc((vocab[p[0]], vocab[p[1]])), p))
            else:
                del counts[p]
    return build_vocab(merges, special_tokens), merges


# ----------------------------------------------------------------------------- encoding


def _encode_chunk(ids: list[int], ranks: dict[Pair, int]) -> list[int]:
    while len(ids) >= 2:
        # The earliest-learned merge among the adjacent pairs is applied first, as in training.
        pair = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, float("inf")))
        if pair not in ranks:
            break
        ids = merge(ids, pair, 256 + ranks[pair])
    return ids


_RANKS_CACHE: dict[int, tuple[Sequence[Pair], int, dict[Pair, int]]] = {}


def _ranks(merges: Sequence[Pair]) -> dict[Pair, int]:
    """pair -> rank, memoized per merges object (GPT-2 has 50,000 merges; rebuilding per call dominates)."""
    cached = _RANKS_CACHE.get(id(merges))
    if cached is not None and cached[0] is merges and cached[1] == len(merges):
        return cached[2]
    ranks = {pair: i for i, pair in enumerate(merges)}
    if len(merges) > 1000:  # only big, long-lived merge lists are worth keeping
        _RANKS_CACHE[id(merges)] = (merges, len(merges), ranks)
    return ranks


def encode(text: str, merges: Sequence[Pair], special_tokens: Sequence[str] = ()) -> list[int]:
    """Token ids of ``text``: split out special tokens, pre-tokenize, apply merges in learned order.

    Any Unicode string round-trips through :func:`decode`. A lone surrogate (e.g.
    ``"\\ud800"``) is not Unicode and has no UTF-8 bytes: it raises ValueError.
    """
    ranks = _ranks(merges)
    return _encode_pieces(text, merges, special_tokens, lambda ids: _encode_chunk(ids, ranks))


def _encode_pieces(text: str, merges: Sequence[Pair], special_tokens: Sequence[str],
                   encode_chunk: Callable[[list[int]], list[int]]) -> list[int]:
    """Split out special tokens, pre-tokenize, and encode each pre-token's bytes with ``encode_chunk``."""
    _check_text(text)
    special_ids = {s: 256 + len(merges) + j for j, s in enumerate(dict.fromkeys(special_tokens))}
    out: list[int] = []
    for piece, is_special in split_special(text, special_tokens):
        if is_special:
            out.append(special_ids[piece])
            continue
        for chunk in _GPT2_SPLIT.findall(piece):
            out.extend(encode_chunk(list(chunk.encode("utf-8"))))
    return out


def _encode_chunk_dropout(ids: list[int], ranks: dict[Pair, int], p: float, rng: random.Random) -> list[int]:
    while len(ids) >= 2:
        # Every candidate merge at every position survives this step with probability 1 - p;
        # the earliest-learned surviving one is applied (at that position only).
        candidates = [(ranks[pair], i) for i, pair in enumerate(zip(ids, ids[1:]))
                      if pair in ranks and rng.random() >= p]
        if not candidates:
            break
        rank, i = min(candidates)
        ids = ids[:i] + [256 + rank] + ids[i + 2:]
    return ids


def encode_dropout(text: str, merges: Sequence[Pair], p: float, rng: random.Random,
                   special_tokens: Sequence[str] = ()) -> list[int]:
    """BPE-dropout (Provilkov et al. 2020): :func:`encode` with merges randomly dropped.

    At every merge step of every pre-token, each applicable merge is dropped with
    probability ``p`` for that step; the earliest-learned merge that survives is applied,
    and the word stops merging when none survives. ``p = 0`` is ordinary BPE (the same ids
    as :func:`encode`), ``p = 1`` leaves every pre-token as single bytes, and anything in
    between samples one of the segmentations the merge table allows. Every result decodes
    back to ``text``. ``rng`` (a ``random.Random``) makes the sampling reproducible.

    Raises:
        ValueError: for ``p`` outside [0, 1], or a lone surrogate in ``text``.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p is a probability: expected 0 <= p <= 1, got {p}")
    ranks = _ranks(merges)
    return _encode_pieces(text, merges, special_tokens, lambda ids: _encode_chunk_dropout(ids, ranks, p, rng))


def decode(ids: Iterable[int], vocab: dict[int, bytes]) -> str:
    """Text of ``ids``: concatenate the tokens' bytes, then decode UTF-8 once.

    Decoding token by token would break characters whose UTF-8 bytes are split across
    tokens (common for Chinese and emoji). Byte sequences that are not valid UTF-8 (a
    model can emit any ids) become U+FFFD, as in GPT-2. Raises ValueError for an unknown id.
    """
    parts = []
    for i in ids:
        if i not in vocab:
            raise ValueError(f"unknown token id {i} (the vocabulary has ids 0..{max(vocab)})")
        parts.append(vocab[i])
    return b"".join(parts).decode("utf-8", errors="replace")


def token_strings(ids: Sequence[int], vocab: dict[int, bytes]) -> list[str]:
    """Readable form of each token: its bytes decoded on their own (broken UTF-8 shown as \\xNN)."""
    return [vocab[i].decode("utf-8", errors="backslashreplace") for i in ids]


# ----------------------------------------------------------------------------- Gage's compressor, for contrast


def gage_compress(data: bytes) -> tuple[bytes, dict[int, bytes]]:
    """Byte pair encoding as *compression* (Gage 1994), for contrast with NLP BPE.

    Repeatedly replaces the most frequent adjacent pair of codes in ``data`` by a byte value
    that does not occur in it, until no pair occurs twice or no unused byte is left. Returns
    the compressed bytes and the table code -> the original bytes it stands for. Pairs are
    counted over the whole string (across spaces and words), there are at most 256 codes,
    and the table is specific to this one string: nothing is learned for new text.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise ValueError(f"expected bytes, got {type(data).__name__}")
    free = [b for b in range(256) if b not in set(data)]
    expand = {b: bytes([b]) for b in set(data)}
    seq = list(data)
    table: dict[int, bytes] = {}
    for code in free:
        counts = get_pair_counts(seq)
        if not counts:
            break
        pair = max(counts, key=lambda p: (counts[p], p))
        if counts[pair] < 2:
            break
        seq = merge(seq, pair, code)
        expand[code] = table[code] = expand[pair[0]] + expand[pair[1]]
    return bytes(seq), table
