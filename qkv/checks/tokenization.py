"""Checks for the tokenization exercise: BPE helpers, BPE training, encode/decode, WordPiece.

Oracles are independent of learner code and of qkv's demo trainers/encoders:

* known values computed by hand on toy inputs;
* ``bytes.replace`` (left-to-right, non-overlapping) for ``merge``;
* an explicit naive BPE trainer written here (:func:`oracle_train_bpe`: recount every
  pair after every merge), also the time baseline for ``train_bpe_fast``;
* ``tiktoken.Encoding`` built from the merges for ``encode``/``decode``;
* the ``tokenizers`` library's ``WordPiece`` model for ``wordpiece_tokenize``.

Diagnoses recompute a known wrong variant and name the misconception when the
learner's answer matches it.
"""

from __future__ import annotations

import functools
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import regex

from qkv.checks import sections
from qkv.checks.core import BARE, PATTERN, CheckFailed, call_learner, expect_equal, fail
from qkv.checks.core import short as _short
from qkv.checks.graded import check_of
from qkv.checks.patterns import text_mismatch
from qkv.checks.registry import Diag, Property, declare

GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_SPLIT = regex.compile(GPT2_SPLIT_PATTERN)

# ----------------------------------------------------------------------------- oracles


def _pieces(text: str, special_tokens: Sequence[str]) -> list[tuple[str, bool]]:
    """(piece, is_special) with special tokens kept whole (longest first)."""
    if not special_tokens:
        return [(text, False)] if text else []
    alternation = "|".join(regex.escape(s) for s in sorted(set(special_tokens), key=len, reverse=True))
    return [(p, p in special_tokens) for p in regex.split(f"({alternation})", text) if p]


def _pair_counts_explicit(words: list[list[int]], freqs: list[int], overlapping: bool = True) -> dict:
    counts: dict = {}
    for ids, f in zip(words, freqs):
        i = 0
        while i < len(ids) - 1:
            pair = (ids[i], ids[i + 1])
            counts[pair] = counts.get(pair, 0) + f
            # The wrong variant skips the second half of a repeated pair: "aaa" then has (a, a) once.
            i += 2 if (not overlapping and ids[i] == ids[i + 1]) else 1
    return counts


def _merge_explicit(ids: list[int], pair: tuple[int, int], new_id: int, mode: str = "left") -> list[int]:
    if mode == "right":  # wrong: scan from the right, so "aaa" -> [a, aa]
        return _merge_explicit(ids[::-1], (pair[1], pair[0]), new_id)[::-1]
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 1 if mode == "noskip" else 2  # wrong "noskip": the second half starts another match
        else:
            out.append(ids[i])
            i += 1
    return out


def oracle_train_bpe(text: str, vocab_size: int, special_tokens: Sequence[str] = (), *,
                     tie: str = "greatest_bytes", pretokenize: bool = True, specials: str = "split",
                     overlapping: bool = True) -> list[tuple[bytes, bytes]]:
    """Naive BPE training, explicit loops; returns the merges as (bytes, bytes) pairs.

    Keyword flags select a deliberately wrong variant for diagnosis:
    ``tie`` in {"greatest_bytes" (correct), "smallest_bytes", "greatest_ids", "first_seen"};
    ``pretokenize=False`` merges across word boundaries; ``specials`` in {"split" (correct),
    "as_text" (special tokens trained on as ordinary text), "deleted" (removed, text joined)};
    ``overlapping=False`` counts ``aaa`` as one ``(a, a)``.
    """
    specials_used = list(special_tokens)
    if specials == "as_text":
        specials_used = []
    elif specials == "deleted":
        for s in special_tokens:
            text = text.replace(s, "")
        specials_used = []
    chunks: list[str] = []
    for piece, is_special in _pieces(text, specials_used):
        if not is_special:
            chunks.extend(_SPLIT.findall(piece) if pretokenize else [piece])
    word_freq = Counter(c.encode("utf-8") for c in chunks)  # insertion order = first appearance
    words = [list(w) for w in word_freq]
    freqs = list(word_freq.values())
    vocab = {i: bytes([i]) for i in range(256)}
    merges: list[tuple[bytes, bytes]] = []
    n_merges = vocab_size - 256 - len(set(special_tokens))
    for step in range(n_merges):
        counts = _pair_counts_explicit(words, freqs, overlapping)
        if not counts:
            break
        if tie == "greatest_bytes":
            best = max(counts, key=lambda p: (counts[p], vocab[p[0]], vocab[p[1]]))
        elif tie == "smallest_bytes":
            best = min(counts, key=lambda p: (-counts[p], vocab[p[0]], vocab[p[1]]))
        elif tie == "greatest_ids":
            best = max(counts, key=lambda p: (counts[p], p))
        else:  # "first_seen": max() keeps the first maximal key in insertion order
            best = max(counts, key=counts.get)
        new_id = 256 + step
        vocab[new_id] = vocab[best[0]] + vocab[best[1]]
        merges.append((vocab[best[0]], vocab[best[1]]))
        words = [_merge_explicit(w, best, new_id) for w in words]
    return merges


def vocab_from_merges(merges: Sequence[tuple[int, int]], special_tokens: Sequence[str] = ()) -> dict[int, bytes]:
    """id -> bytes in the exercise's convention: bytes, then one token per merge, then special tokens."""
    vocab = {i: bytes([i]) for i in range(256)}
    for k, (a, b) in enumerate(merges):
        vocab[256 + k] = vocab[a] + vocab[b]
    for j, s in enumerate(dict.fromkeys(special_tokens)):
        vocab[256 + len(merges) + j] = s.encode("utf-8")
    return vocab


def merges_as_bytes(vocab: dict[int, bytes], merges) -> list[tuple[bytes, bytes]]:
    return [(vocab[a], vocab[b]) for a, b in merges]


def tiktoken_from_merges(merges: Sequence[tuple[int, int]], special_tokens: Sequence[str] = ()):
    """A tiktoken.Encoding whose ranks are the course's ids (bytes 0-255, merge i -> 256 + i)."""
    import tiktoken

    token_bytes = [bytes([i]) for i in range(256)]
    for a, b in merges:
        token_bytes.append(token_bytes[a] + token_bytes[b])
    ranks = {t: i for i, t in enumerate(token_bytes)}
    if len(ranks) != len(token_bytes):
        raise ValueError("these merges create the same bytes twice; tiktoken needs unique tokens")
    specials = {s: len(token_bytes) + j for j, s in enumerate(dict.fromkeys(special_tokens))}
    return tiktoken.Encoding(name="qkv-check", pat_str=GPT2_SPLIT_PATTERN, mergeable_ranks=ranks,
                             special_tokens=specials)


def oracle_wordpiece(word: str, vocab: Sequence[str], unk: str = "[UNK]") -> list[str]:
    """HF ``tokenizers``' WordPiece model with the same vocabulary (greedy longest-match-first)."""
    from tokenizers.models import WordPiece

    if not word:
        return []
    model = WordPiece({t: i for i, t in enumerate(dict.fromkeys(vocab))}, unk_token=unk, max_input_chars_per_word=100)
    return [t.value for t in model.tokenize(word)]


# ----------------------------------------------------------------------------- wrong variants


def _wordpiece_variant(word: str, vocab: Sequence[str], mode: str, unk: str = "[UNK]") -> list[str]:
    vocab = set(vocab)
    out, start = [], 0
    while start < len(word):
        ends = range(start + 1, len(word) + 1) if mode == "shortest" else range(len(word), start, -1)
        piece = None
        for end in ends:
            cand = word[start:end]
            if start > 0 and mode != "no_hashes":
                cand = "##" + cand
            if cand in vocab:
                piece, stop = cand, end
                break
        if piece is None:
            if mode != "partial_unk":
                return [unk]
            out.append(unk)
            start += 1
            continue
        out.append(piece)
        start = stop
    return out


def _encode_variant(text: str, merges, special_tokens, *, pretokenize=True, specials=True, longest=False):
    vocab = {i: bytes([i]) for i in range(256)}
    for i, (a, b) in enumerate(merges):
        vocab[256 + i] = vocab[a] + vocab[b]
    by_bytes = {v: k for k, v in vocab.items()}
    ranks = {p: i for i, p in enumerate(merges)}
    special_ids = {s: 256 + len(merges) + j for j, s in enumerate(dict.fromkeys(special_tokens))}
    out = []
    for piece, is_special in _pieces(text, list(special_tokens) if specials else []):
        if is_special:
            out.append(special_ids[piece])
            continue
        for chunk in (_SPLIT.findall(piece) if pretokenize else [piece]):
            data = chunk.encode("utf-8")
            if longest:  # greedy longest match over the vocabulary: WordPiece-style, not BPE
                i = 0
                while i < len(data):
                    j = len(data)
                    while data[i:j] not in by_bytes:
                        j -= 1
                    out.append(by_bytes[data[i:j]])
                    i = j
                continue
            ids = list(data)
            while len(ids) > 1:
                pair = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, 1 << 60))
                if pair not in ranks:
                    break
                ids = _merge_explicit(ids, pair, 256 + ranks[pair])
            out.extend(ids)
    return out


# ----------------------------------------------------------------------------- checks


def _expect_equal(got, want, what: str, diagnoses: Callable[[], list[tuple[object, str]]] = lambda: []) -> None:
    expect_equal(got, want, what, diagnoses)


@check_of("get_pair_counts")
def check_get_pair_counts(get_pair_counts, ids: list[int]) -> None:
    """Compare with an explicit loop; diagnose counting overlapping pairs once."""
    got = call_learner(get_pair_counts, list(ids), name="get_pair_counts")
    if not isinstance(got, dict):
        raise CheckFailed(f"get_pair_counts: expected a dict {{(a, b): count}}, got {type(got).__name__}.")
    want = _pair_counts_explicit([list(ids)], [1])
    _expect_equal(dict(got), want, f"get_pair_counts({_short(list(ids), 80)})", lambda: [
        (_pair_counts_explicit([list(ids)], [1], overlapping=False),
         Diag("a run like [a, a, a] contains the pair (a, a) twice (positions 0-1 and 1-2): count every adjacent "
              "position, overlapping ones included.", sections.BPE)),
    ])


@check_of("merge")
def check_merge(merge, ids: list[int], pair: tuple[int, int], new_id: int) -> None:
    """Compare with ``bytes.replace`` (ids < 256) or an explicit scan; diagnose overlap mistakes."""
    got = call_learner(merge, list(ids), pair, new_id, name="merge")
    if all(0 <= i < 256 for i in [*ids, *pair, new_id]) and new_id not in ids:
        want = list(bytes(ids).replace(bytes(pair), bytes([new_id])))
    else:
        want = _merge_explicit(list(ids), pair, new_id)
    if isinstance(got, tuple):
        got = list(got)
    _expect_equal(got, want, f"merge({_short(list(ids), 80)}, {pair}, {new_id})", lambda: [
        (_merge_explicit(list(ids), pair, new_id, "noskip"),
         "after replacing a pair, skip both of its elements: in [a, a, a] merging (a, a) gives [aa, a]; the middle "
         "a cannot belong to two tokens."),
        (_merge_explicit(list(ids), pair, new_id, "right"),
         "occurrences must be taken from the left: merging (a, a) in [a, a, a] gives [aa, a], not [a, aa]."),
    ])


def _check_vocab_and_merges(result, vocab_size: int, special_tokens: Sequence[str], what: str):
    if not isinstance(result, tuple) or len(result) != 2:
        raise CheckFailed(f"{what}: expected a tuple (vocab, merges), got {type(result).__name__}.")
    vocab, merges = result
    if not isinstance(vocab, dict) or not isinstance(merges, list):
        raise CheckFailed(f"{what}: expected (dict id -> bytes, list of (id, id)), got "
                          f"({type(vocab).__name__}, {type(merges).__name__}).")
    for i in range(256):
        if vocab.get(i) != bytes([i]):
            raise CheckFailed(f"{what}: vocab[{i}] should be the single byte {bytes([i])!r}, got {vocab.get(i)!r}.")
    for k, m in enumerate(merges):
        if not (isinstance(m, tuple) and len(m) == 2 and all(x in vocab for x in m)):
            raise CheckFailed(f"{what}: merges[{k}] should be a pair of token ids (a, b), got {m!r}.")
        if vocab.get(256 + k) != vocab[m[0]] + vocab[m[1]]:
            raise CheckFailed(f"{what}: merge {k} {m} must create id {256 + k} with bytes vocab[a] + vocab[b] = "
                              f"{vocab[m[0]] + vocab[m[1]]!r}; vocab[{256 + k}] is {vocab.get(256 + k)!r}.")
    for j, s in enumerate(dict.fromkeys(special_tokens)):
        sid = 256 + len(merges) + j
        if vocab.get(sid) != s.encode("utf-8"):
            raise CheckFailed(f"{what}: special token {s!r} should have id {sid} (after the merges), "
                              f"vocab[{sid}] is {vocab.get(sid)!r}.")
    expected_len = 256 + len(merges) + len(set(special_tokens))
    if len(vocab) != expected_len or len(vocab) > vocab_size:
        raise CheckFailed(f"{what}: vocab has {len(vocab)} entries; expected 256 bytes + {len(merges)} merges + "
                          f"{len(set(special_tokens))} special tokens = {expected_len} "
                          f"(at most vocab_size={vocab_size}).")
    return vocab, merges


def _train_diagnoses(text, vocab_size, special_tokens):
    cases = [
        (dict(tie="smallest_bytes"), "ties between equally frequent pairs went to the lexicographically *smallest* "
                                     "pair; break them toward the greatest (vocab[a], vocab[b])."),
        (dict(tie="greatest_ids"), "ties were broken by comparing token ids; compare the pairs' byte strings "
                                   "(vocab[a], vocab[b]) instead (id order is not byte order for merged tokens)."),
        (dict(tie="first_seen"), "ties went to the pair seen first (max() over counts alone); break them toward the "
                                 "lexicographically greatest (vocab[a], vocab[b])."),
        (dict(pretokenize=False), "merges crossed pre-token boundaries: split the text with GPT2_SPLIT_PATTERN first "
                                  "and count pairs only inside each pre-token."),
        (dict(overlapping=False), "pairs inside runs were undercounted: [a, a, a] contains (a, a) twice."),
    ]
    if special_tokens:
        cases += [
            (dict(specials="as_text"), "special tokens were trained on as ordinary text; split them out of the text "
                                       "first and keep them out of the pair counts."),
            (dict(specials="deleted"), "the text on both sides of a special token was joined, so merges crossed the "
                                       "special token; split the text at special tokens instead of deleting them."),
        ]
    return [(oracle_train_bpe(text, vocab_size, special_tokens, **kw), Diag(msg, sections.BPE)) for kw, msg in cases]


def check_train_bpe(train_bpe, text: str, vocab_size: int, special_tokens: Sequence[str] = (), *,
                    expected: list[tuple[bytes, bytes]] | None = None, name: str = "train_bpe") -> None:
    """Compare the merges (as byte pairs) with hand-computed ``expected`` or the naive oracle."""
    checker = _check_train_bpe_fast if name == "train_bpe_fast" else _check_train_bpe
    checker(train_bpe, text, vocab_size, special_tokens, expected=expected, name=name)


@check_of("train_bpe")
def _check_train_bpe(train_bpe, text, vocab_size, special_tokens=(), *, expected=None, name="train_bpe") -> None:
    _compare_training(train_bpe, text, vocab_size, special_tokens, expected=expected, name=name)


@check_of("train_bpe_fast")
def _check_train_bpe_fast(train_bpe, text, vocab_size, special_tokens=(), *, expected=None,
                          name="train_bpe_fast") -> None:
    _compare_training(train_bpe, text, vocab_size, special_tokens, expected=expected, name=name)


def _compare_training(train_bpe, text, vocab_size, special_tokens, *, expected, name) -> None:
    args = (text, vocab_size) if not special_tokens else (text, vocab_size, list(special_tokens))
    what = f"{name}(text of {len(text)} chars, vocab_size={vocab_size}" + (
        f", special_tokens={list(special_tokens)})" if special_tokens else ")")
    vocab, merges = _check_vocab_and_merges(call_learner(train_bpe, *args, name=name), vocab_size, special_tokens, what)
    want = expected if expected is not None else oracle_train_bpe(text, vocab_size, special_tokens)
    got = merges_as_bytes(vocab, merges)
    if got == want:
        return
    for wrong, message in _train_diagnoses(text, vocab_size, special_tokens):
        if got == wrong:
            raise fail(what, message)
    first = next((k for k, (g, w) in enumerate(zip(got, want)) if g != w), min(len(got), len(want)))
    detail = (f"merge {first} should be {want[first] if first < len(want) else 'absent'}, got "
              f"{got[first] if first < len(got) else 'nothing'} ({len(want)} merges expected, {len(got)} returned).")
    raise CheckFailed(f"{what}: {detail}", reason="the merges differ from the expected ones.", level=BARE, what=what,
                      detail=detail)


@check_of("train_bpe_fast")
def check_train_bpe_speed(train_bpe_fast, text: str, vocab_size: int, special_tokens: Sequence[str] = (), *,
                          min_speedup: float = 5.0) -> None:
    """Same merges as the naive oracle, and at least ``min_speedup`` x faster than it, timed here and now.

    A ratio measured in the same process is robust on a busy machine; the reference
    incremental trainer is about 13x faster than the naive one on 130 KB.
    """
    start = time.perf_counter()
    want = oracle_train_bpe(text, vocab_size, special_tokens)
    t_naive = time.perf_counter() - start
    t_fast = float("inf")
    for _ in range(2):  # best of two: one slow run on a busy machine should not fail a correct answer
        start = time.perf_counter()
        result = call_learner(train_bpe_fast, text, vocab_size, list(special_tokens), name="train_bpe_fast")
        t_fast = min(t_fast, time.perf_counter() - start)
    what = f"train_bpe_fast(text of {len(text.encode()):,} bytes, vocab_size={vocab_size})"
    vocab, merges = _check_vocab_and_merges(result, vocab_size, special_tokens, what)
    if merges_as_bytes(vocab, merges) != want:
        raise CheckFailed(f"{what}: the merges differ from the naive trainer's; an efficient trainer must give "
                          "exactly the same merges (same counts, same tie-breaking).", level=BARE)
    speedup = t_naive / t_fast
    if speedup < min_speedup:
        raise CheckFailed(f"{what}: correct but slow: {t_fast:.2f} s, only {speedup:.1f}x faster than a naive trainer "
                          f"({t_naive:.2f} s) timed just now; {min_speedup:.0f}x is required. Update only the words "
                          "that contain the merged pair, and avoid scanning every pair to find the best one.")


@check_of("encode")
def check_encode(encode, text: str, merges, special_tokens: Sequence[str] = ()) -> None:
    """Compare with tiktoken built from the same merges; diagnose the usual mistakes."""
    args = (text, merges, list(special_tokens))
    got = call_learner(encode, *args, name="encode")
    if isinstance(got, tuple):
        got = list(got)
    enc = tiktoken_from_merges(merges, special_tokens)
    want = enc.encode(text, allowed_special="all")
    _expect_equal(got, want, f"encode({_short(text, 60)}, {len(merges)} merges, special_tokens={list(special_tokens)})",
                  lambda: [
        (_encode_variant(text, merges, special_tokens, pretokenize=False),
         Diag("merges crossed pre-token boundaries: split each piece with GPT2_SPLIT_PATTERN and encode the "
              "pre-tokens one by one.", sections.BPE)),
        (_encode_variant(text, merges, special_tokens, specials=False),
         "special tokens were encoded as ordinary text; split them out first and emit their id "
         "(256 + len(merges) + index)."),
        (_encode_variant(text, merges, special_tokens, longest=True),
         Diag("this is greedy longest-match over the vocabulary (WordPiece's rule); BPE applies the learned merges, "
              "earliest-learned (lowest rank) pair first.", sections.BPE)),
    ])


@check_of("encode")
def check_encode_rejects_lone_surrogate(encode, merges) -> None:
    """A lone surrogate (e.g. '\\ud800') has no UTF-8 bytes: encode must raise ValueError."""
    text = "ok \ud800 no"
    try:
        got = encode(text, merges, [])
    except NotImplementedError:
        call_learner(encode, text, merges, [], name="encode")  # reports "not attempted"
    except ValueError:
        return
    except Exception as exc:
        raise CheckFailed(f"encode('ok \\ud800 no'): raised {type(exc).__name__}; expected ValueError "
                          "(str.encode('utf-8') raises UnicodeEncodeError, a ValueError: let it propagate).") from exc
    else:
        raise CheckFailed(f"encode('ok \\ud800 no'): returned {_short(got, 80)}; a lone surrogate is not Unicode and "
                          "has no UTF-8 bytes: raise ValueError (do not use errors='ignore' or 'surrogatepass').")


@check_of("decode")
def check_decode(decode, ids: list[int], vocab: dict[int, bytes]) -> None:
    """Compare with concatenating the bytes and decoding once (invalid UTF-8 -> U+FFFD)."""
    got = call_learner(decode, list(ids), vocab, name="decode")
    want = b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")
    _expect_equal(got, want, f"decode({_short(list(ids), 60)})", lambda: [
        ("".join(vocab[i].decode("utf-8", errors="replace") for i in ids),
         Diag("you decoded each token on its own; a character's UTF-8 bytes can be split across tokens (Chinese, "
              "emoji). Join all the bytes first, then decode once.", sections.BYTE_LEVEL)),
        (b"".join(vocab[i] for i in ids).decode("utf-8", errors="ignore"),
         "invalid UTF-8 was dropped; replace it with U+FFFD (errors='replace') so that nothing disappears silently."),
    ])


@check_of("encode")
def check_roundtrip(encode, decode, text: str, merges, special_tokens: Sequence[str] = ()) -> None:
    """decode(encode(text)) == text with the learner's own functions."""
    ids = call_learner(encode, text, merges, list(special_tokens), name="encode")
    vocab = vocab_from_merges(merges, special_tokens)
    back = call_learner(decode, list(ids), vocab, name="decode")
    if back != text:
        where = text_mismatch(back, text) if isinstance(back, str) else None
        raise CheckFailed(f"decode(encode({_short(text, 60)})) gave {_short(back, 60)}: the round trip must be exact"
                          + (f"; {where}" if where else "."), level=PATTERN)


@check_of("wordpiece_tokenize")
def check_wordpiece(wordpiece_tokenize, word: str, vocab: Sequence[str]) -> None:
    """Compare with HF tokenizers' WordPiece model; diagnose shortest match, missing ##, partial [UNK]."""
    got = call_learner(wordpiece_tokenize, word, list(vocab), name="wordpiece_tokenize")
    if isinstance(got, tuple):
        got = list(got)
    want = oracle_wordpiece(word, vocab)
    _expect_equal(got, want, f"wordpiece_tokenize({word!r})", lambda: [
        (_wordpiece_variant(word, vocab, "shortest"),
         Diag("you took the *shortest* matching piece; WordPiece is greedy longest-match-first: try the longest "
              "candidate first and shrink it.", sections.WORDPIECE)),
        (_wordpiece_variant(word, vocab, "no_hashes"),
         Diag("pieces after the first must be looked up (and returned) with the '##' prefix, e.g. 'play', '##ing'.",
              sections.WORDPIECE)),
        (_wordpiece_variant(word, vocab, "partial_unk"),
         Diag("when some position matches nothing, the *whole word* becomes ['[UNK]'] (BERT's rule), not just one "
              "piece.", sections.WORDPIECE)),
    ])


# ----------------------------------------------------------------------------- properties


def _pair_count_properties(p) -> str | None:
    """The counts add up to len(ids) − 1: every adjacent position is one pair."""
    ids = p.get("ids")
    got = p.call(list(ids))
    if not isinstance(got, dict) or not all(isinstance(v, int) for v in got.values()):
        return None
    total = sum(got.values())
    if len(ids) >= 2 and total != len(ids) - 1:
        return Diag(f"the counts add up to {total}, but a list of {len(ids)} ids has {len(ids) - 1} adjacent pairs "
                    "(positions 0-1, 1-2, …): every position i < len(ids) − 1 starts exactly one pair.", sections.BPE)
    if any(not (isinstance(k, tuple) and len(k) == 2) for k in got):
        return "the keys must be pairs (a, b) of adjacent ids (tuples, so that they can be dict keys)."
    return None


def _unmerge(ids: list, pair, new_id) -> list:
    out = []
    for i in ids:
        out.extend(pair if i == new_id else [i])
    return out


def _merge_properties(p) -> str | None:
    """Expanding new_id back into the pair gives the input; no occurrence of the pair is left."""
    ids, pair, new_id = p.get("ids"), p.get("pair"), p.get("new_id")
    if ids is None or new_id in ids:
        return None
    got = p.call(list(ids), pair, new_id)
    if not isinstance(got, list):
        return None
    back = _unmerge(got, list(pair), new_id)
    if back != list(ids):
        if len(back) < len(ids):
            return Diag(f"expanding {new_id} back into {pair} gives a shorter list than the input: ids were lost "
                        "(the last element after a match, or at the end of the loop?).", sections.BPE)
        return Diag(f"expanding {new_id} back into {pair} does not give the input back: merge may only replace "
                    "occurrences of the pair, and must keep every other id in order.", sections.BPE)
    left = [i for i in range(len(got) - 1) if (got[i], got[i + 1]) == tuple(pair)]
    if left:
        return Diag(f"the pair {pair} still occurs in your result (at position {left[0]}): every occurrence, "
                    "scanned from the left, must be replaced.", sections.BPE)
    return None


def _train_replay(p) -> str | None:
    """Replay the learner's merges on the pre-tokenized words: each one must be a most frequent pair
    at its step, ties broken toward the greatest (bytes, bytes)."""
    text, vocab_size, specials = p.get("text"), p.get("vocab_size"), list(p.get("special_tokens") or ())
    if text is None:
        return None
    args = (text, vocab_size) if not specials else (text, vocab_size, specials)
    result = p.call(*args)
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], dict)
            and isinstance(result[1], list)):
        return None
    vocab, merges = result
    chunks = []
    for piece, is_special in _pieces(text, specials):
        if not is_special:
            chunks.extend(_SPLIT.findall(piece))
    counts_by_word = Counter(c.encode("utf-8") for c in chunks)
    words = [list(w) for w in counts_by_word]
    freqs = list(counts_by_word.values())
    names = {i: bytes([i]) for i in range(256)}
    shown = lambda q: f"({names[q[0]]!r}, {names[q[1]]!r})"  # noqa: E731
    tie = None
    for step, m in enumerate(merges):
        if not (isinstance(m, tuple) and len(m) == 2 and all(x in names for x in m)):
            return None
        counts = _pair_counts_explicit(words, freqs)
        if not counts:
            return Diag(f"merge {step} was made although no pair was left: stop when the counts are empty.",
                        sections.BPE)
        c = counts.get(m, 0)
        top = max(counts.values())
        best = max(counts, key=lambda q: (counts[q], names[q[0]], names[q[1]]))
        if c == 0:
            return Diag(f"merge {step} {shown(m)} joins two tokens that are never adjacent at that point: merges must "
                        "come from the pair counts of the pre-tokenized words.", sections.BPE)
        if c < top:
            once = _pair_counts_explicit(words, [1] * len(words))
            why = (" Your choice is the most frequent pair if every distinct pre-token counts once: weight each "
                   "pre-token's pairs by how often it occurs in the text." if once.get(m, 0) == max(once.values())
                   and once.get(best, 0) < once.get(m, 0) else
                   " Count every adjacent pair of every pre-token, weighted by how often the pre-token occurs.")
            return Diag(f"merge {step} is {shown(m)}, which occurs {c} times at that point, but {shown(best)} occurs "
                        f"{top} times.{why}", sections.BPE)
        if m != best and tie is None:
            tie = Diag(f"merge {step} is {shown(m)}; it ties with {shown(best)} ({c} occurrences each), and ties go to "
                       "the greatest (vocab[a], vocab[b]) compared as byte strings.", sections.BPE)
        new_id = 256 + step
        names[new_id] = names[m[0]] + names[m[1]]
        words = [_merge_explicit(w, m, new_id) for w in words]
    return tie


def _encode_properties(p) -> str | None:
    """The ids decode back to the text; where they first differ from the answer, say which text that is."""
    text, merges, specials = p.get("text"), p.get("merges"), list(p.get("special_tokens") or ())
    if text is None or merges is None:
        return None
    got = p.call(text, merges, specials)
    if isinstance(got, tuple):
        got = list(got)
    if not isinstance(got, list) or not all(isinstance(i, int) for i in got):
        return None
    vocab = vocab_from_merges(merges, specials)
    if any(i not in vocab for i in got):
        bad = next(i for i in got if i not in vocab)
        return Diag(f"id {bad} is not in the vocabulary (ids are 0 … {len(vocab) - 1}: bytes, merges, then special "
                    "tokens).", sections.BPE)
    back = b"".join(vocab[i] for i in got).decode("utf-8", errors="replace")
    if back != text:
        where = text_mismatch(back, text)
        return Diag(f"your ids do not decode back to the text: {where} Encoding must keep every byte (and every "
                    "special token) exactly once.", sections.BYTE_LEVEL)
    want = tiktoken_from_merges(merges, specials).encode(text, allowed_special="all")
    k = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    if k < max(len(got), len(want)):
        start = len(b"".join(vocab[i] for i in want[:k]).decode("utf-8", errors="replace"))
        return Diag(f"your ids decode to the right text but split it differently, first at character {start} "
                    f"({text[start:start + 12]!r}): got {got[k:k + 3]}, expected {want[k:k + 3]}. BPE merges the "
                    "adjacent pair with the lowest merge index first, within each pre-token.", sections.BPE)
    return None


def _wordpiece_properties(p) -> str | None:
    """Pieces (without ##) spell the word; every piece is in the vocabulary; each piece is the longest possible."""
    word, vocab = p.get("word"), p.get("vocab")
    got = p.call(word, list(vocab))
    if isinstance(got, tuple):
        got = list(got)
    if not isinstance(got, list) or got == ["[UNK]"] or not all(isinstance(t, str) for t in got):
        return None
    vocab_set = set(vocab)
    missing = [t for t in got if t not in vocab_set]
    if missing:
        return Diag(f"the piece {missing[0]!r} is not in the vocabulary: every piece must be looked up as it is "
                    "returned (with '##' for pieces after the first).", sections.WORDPIECE)
    spelled = "".join(t[2:] if i and t.startswith("##") else t for i, t in enumerate(got))
    if spelled != word:
        return Diag(f"your pieces spell {spelled!r}, not {word!r}: every character of the word must be covered once, "
                    "in order.", sections.WORDPIECE)
    start = 0
    for i, t in enumerate(got):
        length = len(t) - (2 if i else 0)
        for end in range(len(word), start + length, -1):
            cand = word[start:end] if i == 0 else "##" + word[start:end]
            if cand in vocab_set:
                return Diag(f"piece {i} is {t!r} but the longer {cand!r} is in the vocabulary: WordPiece takes the "
                            "longest match at each position.", sections.WORDPIECE)
        start += length
    return None


def _pair_counts_self_check(fn) -> None:
    check_get_pair_counts(fn, [1, 2, 3, 1, 2])
    check_get_pair_counts(fn, [7, 7, 7])


def _merge_self_check(fn) -> None:
    check_merge(fn, [1, 2, 3, 1, 2], (1, 2), 99)
    check_merge(fn, [7, 7, 7], (7, 7), 99)
    check_merge(fn, [7, 7, 7, 7], (7, 7), 99)


declare("get_pair_counts", chapter="tokenization", args=("ids",), self_check=_pair_counts_self_check,
        properties=(Property("the counts add up to len(ids) − 1", _pair_count_properties),))
declare("merge", chapter="tokenization", args=("ids", "pair", "new_id"), self_check=_merge_self_check,
        properties=(Property("expanding new_id gives the input back; no occurrence is left", _merge_properties),))
declare("train_bpe", chapter="tokenization", args=("text", "vocab_size", "special_tokens"),
        helpers=("merge", "get_pair_counts"),
        properties=(Property("each merge is a most frequent pair when it is made (replay)", _train_replay),))
declare("train_bpe_fast", chapter="tokenization", args=("text", "vocab_size", "special_tokens"), helpers=("merge",),
        properties=(Property("each merge is a most frequent pair when it is made (replay)", _train_replay),))
declare("encode", chapter="tokenization", args=("text", "merges", "special_tokens"), helpers=("merge",),
        properties=(Property("ids decode to the text; the first differing split is located", _encode_properties),))
declare("decode", chapter="tokenization", args=("ids", "vocab"))
declare("wordpiece_tokenize", chapter="tokenization", args=("word", "vocab"),
        properties=(Property("pieces are in the vocabulary, spell the word, and are longest matches",
                             _wordpiece_properties),))


TOY_MERGES_TEXT_BYTES = 40_000  # the toy merges are learned on english_corpus(TOY_MERGES_TEXT_BYTES)


def toy_merges(n_merges: int = 300) -> list[tuple[int, int]]:
    """Merges learned by the oracle trainer on a fixed text, as id pairs (input data for encode tests).

    Training is greedy, so the first n merges of a longer run are the merges of a run of n. The
    first 300 are stored (``qkv/checks/toy_merges.py``, written by ``python -m
    qkv.checks.tokenization --write-toy-merges``; a test checks that they are what the oracle learns): learning them
    takes 1–3 s, which every self-check of the chapter would otherwise pay (issue #10). Longer
    lists are learned here and cached. Every caller gets a fresh list.
    """
    from qkv.checks.toy_merges import TOY_MERGES

    if n_merges <= len(TOY_MERGES):
        return [tuple(pair) for pair in TOY_MERGES[:n_merges]]
    return list(learn_toy_merges(n_merges))


@functools.lru_cache(maxsize=4)
def learn_toy_merges(n_merges: int) -> tuple[tuple[int, int], ...]:
    """The first ``n_merges`` merges :func:`oracle_train_bpe` learns on ``english_corpus(40_000)``, as id pairs."""
    from qkv.corpora import english_corpus

    text = english_corpus(TOY_MERGES_TEXT_BYTES)
    byte_merges = oracle_train_bpe(text, 256 + n_merges)
    ids = {bytes([i]): i for i in range(256)}
    merges = []
    for a, b in byte_merges:
        merges.append((ids[a], ids[b]))
        ids[a + b] = 255 + len(merges)
    return tuple(merges)


TOY_MERGES_FILE = Path(__file__).with_name("toy_merges.py")
TOY_MERGES_STORED = 300


def toy_merges_source(merges: Sequence[tuple[int, int]]) -> str:
    """The text of ``qkv/checks/toy_merges.py`` holding ``merges``."""
    rows = [", ".join(f"({a}, {b})" for a, b in merges[i:i + 8]) for i in range(0, len(merges), 8)]
    body = "".join(f"    {row},\n" for row in rows)
    return (f'''"""The first {len(merges)} merges ``learn_toy_merges`` (qkv/checks/tokenization.py) learns on
``english_corpus({TOY_MERGES_TEXT_BYTES})``: input data of the encode tests, stored so that no
self-check pays for learning them. Generated by ``python -m qkv.checks.tokenization
--write-toy-merges``; do not edit.
"""

TOY_MERGES: tuple[tuple[int, int], ...] = (
{body})
''')


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m qkv.checks.tokenization",
                                     description="Regenerate the stored toy merges (qkv/checks/toy_merges.py).")
    parser.add_argument("--write-toy-merges", action="store_true", required=True)
    parser.parse_args(argv)
    TOY_MERGES_FILE.write_text(toy_merges_source(learn_toy_merges(TOY_MERGES_STORED)), encoding="utf-8")
    print(f"wrote {TOY_MERGES_FILE}")
    return 0


# ----------------------------------------------------------------------------- learner guidance

REREAD = {
    "get_pair_counts": "How is BPE trained and applied?",
    "merge": "How is BPE trained and applied?",
    "train_bpe": "How is BPE trained and applied?",
    "encode": "What is byte-level BPE?",
    "decode": "What is byte-level BPE?",
    "wordpiece_tokenize": "How does WordPiece differ from BPE?",
    "train_bpe_fast": "How is BPE trained and applied?",
}

HINTS = {
    "get_pair_counts": [
        "Every position i from 0 to len(ids) - 2 starts one adjacent pair.",
        "Pairing the list with itself shifted by one gives all adjacent pairs, overlapping ones included.",
    ],
    "merge": [
        "Walk the list with an index that you advance yourself, building a new list.",
        "When the current element and the next one form the pair, emit new_id and advance by two; otherwise "
        "emit the current element and advance by one.",
        "Check that merging (a, a) in [a, a, a] gives [aa, a].",
    ],
    "train_bpe": [
        "First split out special tokens, then split each remaining piece with GPT2_SPLIT_PATTERN; count how many "
        "times each distinct pre-token (as UTF-8 bytes) occurs.",
        "Each step: count pairs over the distinct pre-tokens, weighting by their frequency; pick the best by "
        "(count, vocab[a], vocab[b]); merge it everywhere; record it and the new token's bytes.",
        "The number of merges is vocab_size - 256 - len(special_tokens); stop earlier if no pair is left. "
        "Special tokens get their ids after the last merge.",
    ],
    "encode": [
        "Split the text at special tokens (a regex alternation of the escaped tokens, longest first), then each "
        "ordinary piece with GPT2_SPLIT_PATTERN.",
        "Within a pre-token start from its UTF-8 bytes; among the adjacent pairs, merge the one learned earliest "
        "(lowest index in merges); repeat until no adjacent pair is in merges.",
        "Merge i creates id 256 + i; the j-th special token has id 256 + len(merges) + j.",
    ],
    "decode": [
        "A token's bytes need not be a whole character: one Chinese character is three UTF-8 bytes, and they "
        "may sit in different tokens.",
        "Join the bytes of all the tokens, then decode once, replacing invalid sequences.",
    ],
    "wordpiece_tokenize": [
        "Start at position 0 and look for the longest prefix of the rest of the word that is in the vocabulary.",
        "Every piece that does not start the word is looked up with '##' in front.",
        "If at some position no candidate is in the vocabulary, the answer is the single unknown token for the "
        "whole word.",
    ],
    "train_bpe_fast": [
        "Counting every pair after every merge repeats almost all the work: a merge only changes the words that "
        "contain the merged pair. Keep the counts across steps and keep, for each pair, the set of words "
        "where it occurs.",
        "For each affected word: subtract the counts of its old pairs, merge, add the counts of its new pairs.",
        "Finding the best pair by scanning all pairs each step is the other bottleneck: a heap of (count, bytes) "
        "entries, where outdated entries are skipped when popped, finds it in logarithmic time. heapq is a "
        "min-heap; a small wrapper class whose __lt__ is reversed orders byte strings from greatest to smallest.",
    ],
}


# What answers may not call (read by the grader's static check; see autograder/banned.py).
BANNED = {
    "*": ["tiktoken", "tokenizers", "sentencepiece", "transformers"],
}


if __name__ == "__main__":
    sys.exit(_main())
