"""WordPiece (Schuster & Nakajima 2012; Wu et al. 2016, §4.1; BERT, Devlin et al. 2019).

Two parts, as in BERT:

* **training** grows the vocabulary by adding the unit that most increases the
  likelihood of the training data under a language model (Schuster & Nakajima 2012;
  Wu et al. 2016, §4.1). Google never published its trainer. Hugging Face's
  reconstruction scores a pair by ``freq(ab) / (freq(a) * freq(b))`` (rule
  ``"wordpiece"``): frequent *together* relative to how frequent the parts are
  *alone*. The actual gain in a unigram model's log-likelihood (rule ``"likelihood"``)
  is about ``freq(ab) * log(p(ab) / (p(a) p(b)))``: it is weighted by ``freq(ab)``,
  which the ratio score is not. BPE takes the most frequent pair, ``freq(ab)``.
* **tokenizing** a word is greedy longest-match-first: take the longest vocabulary
  entry that starts the word, then the longest ``##``-prefixed entry that continues it,
  and so on; if some position matches nothing, the whole word becomes ``[UNK]``.
  Only the learned vocabulary is used: no merge list, no probabilities.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Literal

Symbols = tuple[str, ...]


def wordpiece_tokenize(word: str, vocab: Iterable[str], unk_token: str = "[UNK]",
                       max_input_chars_per_word: int = 100) -> list[str]:
    """Split one whitespace-free ``word`` into WordPiece tokens, greedy longest-match-first.

    Continuation pieces (not at the start of the word) are looked up with a ``"##"``
    prefix. If any position cannot be matched, or the word is longer than
    ``max_input_chars_per_word`` characters, returns ``[unk_token]`` for the whole word
    (BERT's rule, google-research/bert ``tokenization.py``). An empty word gives ``[]``.
    Raises ValueError if ``word`` contains whitespace (split text into words first).
    """
    if any(ch.isspace() for ch in word):
        raise ValueError(f"expected a single word without whitespace, got {word!r}; split the text first")
    vocab = vocab if isinstance(vocab, (set, frozenset, dict)) else set(vocab)
    if len(word) > max_input_chars_per_word:
        return [unk_token]
    tokens: list[str] = []
    start = 0
    while start < len(word):
        end = len(word)
        piece = None
        while end > start:  # longest first: shrink from the right until the piece is known
            candidate = word[start:end] if start == 0 else "##" + word[start:end]
            if candidate in vocab:
                piece = candidate
                break
            end -= 1
        if piece is None:
            return [unk_token]
        tokens.append(piece)
        start = end
    return tokens


def _pair_and_unit_counts(words: Mapping[Symbols, int]) -> tuple[Counter, Counter]:
    pairs, units = Counter(), Counter()
    for symbols, freq in words.items():
        for s in symbols:
            units[s] += freq
        for pair in zip(symbols, symbols[1:]):
            pairs[pair] += freq
    return pairs, units


Rule = Literal["bpe", "wordpiece", "likelihood"]
RULES = ("bpe", "wordpiece", "likelihood")


def unigram_log_likelihood(words: Mapping[Symbols, int]) -> float:
    """Log-likelihood (nats) of a segmented corpus under its own maximum-likelihood unigram model.

    With ``c(u)`` the number of occurrences of unit ``u`` and ``N`` the total number of
    units, it is ``sum_u c(u) * log(c(u) / N)``.
    """
    _, units = _pair_and_unit_counts(words)
    total = sum(units.values())
    return sum(c * math.log(c / total) for c in units.values())


def merge_scores(words: Mapping[Symbols, int], rule: Rule) -> dict[tuple[str, str], float]:
    """Score of every adjacent symbol pair under ``rule``.

    * ``"bpe"``: ``freq(ab)``, the number of adjacent occurrences;
    * ``"wordpiece"``: ``freq(ab) / (freq(a) freq(b))``, Hugging Face's reconstruction of
      WordPiece's criterion;
    * ``"likelihood"``: the exact change of :func:`unigram_log_likelihood` when every
      occurrence of the pair is merged into one new unit.

    ``words`` maps a word, as a tuple of symbols, to its corpus frequency.
    Raises ValueError for an unknown rule.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(map(repr, RULES))}, got {rule!r}")
    pairs, units = _pair_and_unit_counts(words)
    if rule == "bpe":
        return {p: float(c) for p, c in pairs.items()}
    if rule == "wordpiece":
        return {(a, b): c / (units[a] * units[b]) for (a, b), c in pairs.items()}
    before = unigram_log_likelihood(words)
    return {pair: unigram_log_likelihood(_merge_words(words, pair)) - before for pair in pairs}


def _merge_words(words: Mapping[Symbols, int], pair: tuple[str, str]) -> dict[Symbols, int]:
    merged: dict[Symbols, int] = Counter()
    for symbols, c in words.items():
        merged[_merge_symbols(symbols, pair, pair[0] + pair[1])] += c
    return merged


def _merge_symbols(symbols: Symbols, pair: tuple[str, str], new: str) -> Symbols:
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(new)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def learn_merges(word_counts: Mapping[str, int], n_merges: int,
                 rule: Rule) -> list[tuple[tuple[str, str], float]]:
    """The first ``n_merges`` merges, as ``((a, b), score)``, learned from character-split words.

    Symbols are plain strings (no ``##`` marks, so the two rules are compared on equal
    terms); ties go to the lexicographically greatest pair. Stops early when no pair is left.
    """
    words: dict[Symbols, int] = Counter()
    for w, c in word_counts.items():
        words[tuple(w)] += c
    merges = []
    for _ in range(n_merges):
        scores = merge_scores(words, rule)
        if not scores:
            break
        best = max(scores, key=lambda p: (scores[p], p))
        merges.append((best, scores[best]))
        words = _merge_words(words, best)
    return merges
