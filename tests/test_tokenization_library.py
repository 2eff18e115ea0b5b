"""qkv.bpe / qkv.wordpiece / qkv.gpt2_files (the book's demo code) against tiktoken, HF tokenizers and
hand-computed values, and qkv.checks.tokenization's diagnoses against deliberately wrong learners."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from qkv import bpe
from qkv import gpt2_files as G
from qkv import wordpiece as W
from qkv.checks import CheckFailed, NotAttempted
from qkv.checks import tokenization as C
from qkv.corpora import CHINESE_SAMPLE, ENGLISH_SAMPLE, english_corpus

VARIED = [
    "Hello world! It's 2026; we've   got spaces\n\n\tand tabs.",
    CHINESE_SAMPLE,
    "emoji 🙂👍🏽 family 👨‍👩‍👧 flags 🏳️‍🌈",
    "naïve café résumé — ẞ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "numbers 1234567 3.14159 0xFF",
    "",
]
# `make test` fetches GPT-2's files first (data/fetch_gpt2.sh); without them these tests fail, never skip.


# ---------------------------------------------------------------- helpers and training


def test_get_pair_counts_counts_overlapping_pairs():
    assert bpe.get_pair_counts([1, 1, 1, 2]) == {(1, 1): 2, (1, 2): 1}


@pytest.mark.parametrize("ids, pair, want", [
    ([1, 1, 1], (1, 1), [9, 1]),
    ([1, 1, 1, 1], (1, 1), [9, 9]),
    ([1, 2, 3, 1, 2], (1, 2), [9, 3, 9]),
    ([], (1, 2), []),
])
def test_merge_is_left_to_right_and_non_overlapping(ids, pair, want):
    assert bpe.merge(ids, pair, 9) == want
    assert bpe.merge(ids, pair, 9) == list(bytes(ids).replace(bytes(pair), bytes([9])))  # independent oracle


def test_train_bpe_worked_example_by_hand():
    vocab, merges = bpe.train_bpe("low low lower newest newest widest", 256 + 3)
    assert [(vocab[a], vocab[b]) for a, b in merges] == [(b"w", b"e"), (b"s", b"t"), (b"l", b"o")]
    assert vocab[256] == b"we" and len(vocab) == 259


@pytest.mark.parametrize("trainer", [bpe.train_bpe_naive, bpe.train_bpe])
def test_special_tokens_are_kept_whole_and_never_merged_across(trainer):
    vocab, merges = trainer("ab<|eot|>cd ab<|eot|>cd", 256 + 4 + 1, ["<|eot|>"])
    assert [(vocab[a], vocab[b]) for a, b in merges] == [(b"c", b"d"), (b"a", b"b"), (b" ", b"ab")]  # then no pair left
    assert vocab[256 + len(merges)] == b"<|eot|>" and len(vocab) == 260


@pytest.mark.parametrize("text, vocab_size, specials", [
    (english_corpus(30_000), 256 + 200, ()),
    ("<|endoftext|>".join(english_corpus(8000).split("\n\n")), 256 + 80, ("<|endoftext|>",)),
    (" ".join("abcab"[i % 5: i % 5 + 1 + i % 3] for i in range(200)), 256 + 30, ()),
    (CHINESE_SAMPLE + " 🙂🙂 aaaa aaa", 256 + 40, ()),
])
def test_fast_trainer_gives_exactly_the_naive_merges(text, vocab_size, specials):
    naive = bpe.train_bpe_naive(text, vocab_size, specials)
    assert bpe.train_bpe(text, vocab_size, specials) == naive
    assert [(naive[0][a], naive[0][b]) for a, b in naive[1]] == C.oracle_train_bpe(text, vocab_size, specials)


def test_fast_trainer_is_much_faster_than_naive():
    import time
    text = english_corpus(130_000)
    start = time.perf_counter()
    bpe.train_bpe_naive(text, 500)
    t_naive = time.perf_counter() - start
    start = time.perf_counter()
    bpe.train_bpe(text, 500)
    t_fast = time.perf_counter() - start
    assert t_naive / t_fast > 5, f"speed-up only {t_naive / t_fast:.1f}x"


def test_train_rejects_too_small_vocab_with_a_message():
    with pytest.raises(ValueError, match="smaller than the 256 bytes"):
        bpe.train_bpe("abc", 256, ["<|eot|>"])


# ---------------------------------------------------------------- encode / decode


@pytest.fixture(scope="module")
def toy():
    vocab, merges = bpe.train_bpe(english_corpus(40_000), 256 + 300, ["<|endoftext|>"])
    return vocab, merges


@pytest.mark.parametrize("text", VARIED)
def test_encode_matches_tiktoken_built_from_the_same_merges_and_round_trips(toy, text):
    vocab, merges = toy
    enc = C.tiktoken_from_merges(merges, ["<|endoftext|>"])
    text = text + "<|endoftext|>" + text
    ids = bpe.encode(text, merges, ["<|endoftext|>"])
    assert ids == enc.encode(text, allowed_special="all")
    assert bpe.decode(ids, vocab) == text


def test_lone_surrogate_is_rejected_with_a_clear_message(toy):
    with pytest.raises(ValueError, match="lone surrogate U\\+D800 at index 3"):
        bpe.encode("ok \ud800", toy[1])


def test_decode_replaces_invalid_utf8_and_rejects_unknown_ids(toy):
    vocab = toy[0]
    assert bpe.decode([104, 0xE4, 0xBD], vocab) == "h\ufffd"
    with pytest.raises(ValueError, match="unknown token id"):
        bpe.decode([10**6], vocab)


@pytest.mark.parametrize("text", VARIED + [english_corpus(20_000), "<|endoftext|>Hi<|endoftext|>"])
def test_encode_with_gpt2_merges_agrees_with_tiktoken_gpt2(text):
    merges, vocab, enc = G.gpt2_merges(), G.gpt2_vocab(), G.gpt2_tiktoken()
    ids = bpe.encode(text, merges, [G.ENDOFTEXT])
    assert G.to_gpt2_ids(ids, vocab) == enc.encode(text, allowed_special="all")
    assert bpe.decode(ids, vocab) == text


# ---------------------------------------------------------------- BPE-dropout


@pytest.mark.parametrize("text", VARIED + [english_corpus(5_000)])
def test_bpe_dropout_with_p_zero_is_plain_bpe_as_tiktoken_encodes_it(text):
    merges, vocab, enc = G.gpt2_merges(), G.gpt2_vocab(), G.gpt2_tiktoken()
    ids = bpe.encode_dropout(text, merges, 0.0, random.Random(0))
    assert G.to_gpt2_ids(ids, vocab) == enc.encode(text)


@pytest.mark.parametrize("p", [0.1, 0.5, 1.0])
def test_bpe_dropout_samples_round_trip_and_p_one_leaves_bytes(p):
    merges, vocab = G.gpt2_merges(), G.gpt2_vocab()
    rng = random.Random(1)
    for text in VARIED:
        ids = bpe.encode_dropout(text, merges, p, rng)
        assert bpe.decode(ids, vocab) == text
        if p == 1.0:
            assert ids == list(text.encode("utf-8"))


def test_bpe_dropout_frequencies_match_the_hand_computed_distribution():
    # Merges: a+b -> ab (rank 0), ab+c -> abc (rank 1). For "abc" each merge step keeps its one
    # candidate with probability 1 - p, and a word stops merging at the first dropped step, so
    # P(abc) = (1-p)^2, P(ab, c) = (1-p) p, P(a, b, c) = p.
    a, b, c = ord("a"), ord("b"), ord("c")
    merges = [(a, b), (256, c)]
    p, n = 0.3, 20_000
    rng = random.Random(2)
    counts = Counter(tuple(bpe.encode_dropout("abc", merges, p, rng)) for _ in range(n))
    expected = {(257,): (1 - p) ** 2, (256, c): (1 - p) * p, (a, b, c): p}
    assert set(counts) == set(expected)
    for ids, prob in expected.items():
        assert counts[ids] / n == pytest.approx(prob, abs=4 * (prob * (1 - prob) / n) ** 0.5)


def test_bpe_dropout_rejects_a_probability_outside_zero_one():
    with pytest.raises(ValueError, match="0 <= p <= 1"):
        bpe.encode_dropout("abc", [], 1.5, random.Random(0))


def test_gpt2_bytes_to_unicode_is_a_printable_bijection():
    table = G.bytes_to_unicode()
    assert len(set(table.values())) == 256 and table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"
    assert all(table[b] == chr(b) for b in range(ord("!"), ord("~") + 1))


def test_gpt2_files_missing_names_the_fetch_script(tmp_path):
    with pytest.raises(FileNotFoundError, match="fetch_gpt2.sh"):
        G.gpt2_merges(tmp_path)


# ---------------------------------------------------------------- WordPiece


@pytest.mark.parametrize("word", ["unaffable", "playing", "plays", "xyz", "p", "a" * 101, "aaaa", "ab"])
def test_wordpiece_matches_hf_tokenizers(word):
    vocab = ["[UNK]", "un", "##aff", "##able", "p", "play", "##ing", "##in", "##g", "##s", "a", "##a", "##aa", "##b"]
    assert W.wordpiece_tokenize(word, vocab) == C.oracle_wordpiece(word, vocab)


def test_wordpiece_bert_docstring_example():
    assert W.wordpiece_tokenize("unaffable", ["un", "##aff", "##able"]) == ["un", "##aff", "##able"]


def test_first_bpe_and_wordpiece_merges_differ_on_sennrich_toy_corpus():
    toy_corpus = {"low": 5, "lower": 2, "newest": 6, "widest": 3}
    assert W.learn_merges(toy_corpus, 1, "bpe")[0] == (("s", "t"), 9.0)           # e-s and s-t: 9 each, tie -> greatest
    assert W.learn_merges(toy_corpus, 1, "wordpiece")[0] == (("i", "d"), 3 / 9)    # i and d occur only in "widest"


def test_likelihood_gain_equals_the_hand_computed_change_of_unigram_log_likelihood():
    words = {("a", "b"): 3, ("a",): 2, ("b",): 1, ("c", "d"): 4}
    def log_lik(counts):  # sum_u c(u) log(c(u) / N), from hand-written unit counts
        total = sum(counts.values())
        return sum(n * math.log(n / total) for n in counts.values())
    before = log_lik({"a": 5, "b": 4, "c": 4, "d": 4})
    after_ab = log_lik({"a": 2, "b": 1, "ab": 3, "c": 4, "d": 4})
    after_cd = log_lik({"a": 5, "b": 4, "cd": 4})
    scores = W.merge_scores(words, "likelihood")
    assert W.unigram_log_likelihood(words) == pytest.approx(before)
    assert scores[("a", "b")] == pytest.approx(after_ab - before)
    assert scores[("c", "d")] == pytest.approx(after_cd - before)


def test_likelihood_gain_and_the_ratio_score_pick_different_first_merges():
    toy_corpus = {"low": 5, "lower": 2, "newest": 6, "widest": 3}
    gain = W.merge_scores({tuple(w): c for w, c in toy_corpus.items()}, "likelihood")
    assert max(gain, key=gain.get) == ("s", "t")
    assert W.learn_merges(toy_corpus, 1, "likelihood")[0][0] == ("s", "t")
    assert W.learn_merges(toy_corpus, 1, "wordpiece")[0][0] == ("i", "d")


def test_merge_scores_rejects_unknown_rule():
    with pytest.raises(ValueError, match="rule must be"):
        W.merge_scores({("a", "b"): 1}, "unigram")


# ---------------------------------------------------------------- the checks: diagnoses name the misconception


def _wrong_trainer(**flags):
    """A learner whose trainer has one mistake: reuse the oracle's wrong variants, rebuilt into ids."""
    def train(text, vocab_size, special_tokens=()):
        byte_merges = C.oracle_train_bpe(text, vocab_size, special_tokens, **flags)
        ids = {bytes([i]): i for i in range(256)}
        merges = []
        for a, b in byte_merges:
            merges.append((ids[a], ids[b]))
            ids.setdefault(a + b, 255 + len(merges))
        return C.vocab_from_merges(merges, special_tokens), merges
    return train


@pytest.mark.parametrize("flags, text, specials, message", [
    (dict(tie="smallest_bytes"), "low low lower newest newest widest", (), "lexicographically \\*smallest\\*"),
    (dict(tie="first_seen"), "low low lower newest newest widest", (), "the pair seen first"),
    (dict(pretokenize=False), "the cat sat on the mat, the end", (), "crossed pre-token boundaries"),
    (dict(specials="as_text"), "hi<|eot|>yo<|eot|>hi", ("<|eot|>",), "trained on as ordinary text"),
    (dict(specials="deleted"), "ab<|eot|>cd ab<|eot|>cd", ("<|eot|>",), "merges crossed the special token"),
])
def test_train_bpe_diagnosis_names_the_misconception(flags, text, specials, message):
    with pytest.raises(CheckFailed, match=message):
        C.check_train_bpe(_wrong_trainer(**flags), text, 256 + 12, specials)


def test_train_bpe_diagnosis_tie_broken_by_ids():
    # "ab" is merged first (id 256); later (ab, x) ties with (c, y): ids say 256 > 99, bytes say b"ab" < b"c".
    text = "ab ab ab abx abx cy cy"
    with pytest.raises(CheckFailed, match="comparing token ids"):
        C.check_train_bpe(_wrong_trainer(tie="greatest_ids"), text, 256 + 6)


def test_merge_diagnoses_overlap_mistakes():
    def no_skip(ids, pair, new_id):
        return C._merge_explicit(ids, pair, new_id, "noskip")

    def from_right(ids, pair, new_id):
        return C._merge_explicit(ids, pair, new_id, "right")
    with pytest.raises(CheckFailed, match="skip both of its elements"):
        C.check_merge(no_skip, [7, 7, 7], (7, 7), 99)
    with pytest.raises(CheckFailed, match="taken from the left"):
        C.check_merge(from_right, [7, 7, 7], (7, 7), 99)


def test_get_pair_counts_diagnoses_non_overlapping_count():
    with pytest.raises(CheckFailed, match="contains the pair \\(a, a\\) twice"):
        C.check_get_pair_counts(lambda ids: C._pair_counts_explicit([ids], [1], overlapping=False), [7, 7, 7])


@pytest.fixture(scope="module")
def merges300():
    return C.toy_merges(300)


@pytest.mark.parametrize("flags, text, specials, message", [
    (dict(pretokenize=False), "if x:\n        return the  value", (), "crossed pre-token boundaries"),
    (dict(specials=False), "first doc<|endoftext|>second", ("<|endoftext|>",), "encoded as ordinary text"),
    (dict(longest=True), "The encoder is running; the decoder was written.", (), "greedy longest-match"),
])
def test_encode_diagnosis_names_the_misconception(merges300, flags, text, specials, message):
    def wrong(text, merges, special_tokens=()):
        return C._encode_variant(text, merges, special_tokens, **flags)
    with pytest.raises(CheckFailed, match=message):
        C.check_encode(wrong, text, merges300, specials)


def test_decode_diagnosis_token_by_token(merges300):
    vocab = C.vocab_from_merges(merges300)
    ids = C.tiktoken_from_merges(merges300).encode("机器翻译")

    def per_token(ids, vocab):
        return "".join(vocab[i].decode("utf-8", errors="replace") for i in ids)
    with pytest.raises(CheckFailed, match="decoded each token on its own"):
        C.check_decode(per_token, ids, vocab)
    with pytest.raises(CheckFailed, match="invalid UTF-8 was dropped"):
        C.check_decode(lambda ids, vocab: b"".join(vocab[i] for i in ids).decode("utf-8", "ignore"), [104, 0xE4], vocab)


def test_encode_must_reject_lone_surrogates(merges300):
    with pytest.raises(CheckFailed, match="lone surrogate is not Unicode"):
        C.check_encode_rejects_lone_surrogate(lambda t, m, s=(): list(t.encode("utf-8", "surrogatepass")), merges300)
    C.check_encode_rejects_lone_surrogate(bpe.encode, merges300)


@pytest.mark.parametrize("mode, message", [
    ("shortest", "\\*shortest\\* matching piece"),
    ("no_hashes", "'##' prefix"),
    ("partial_unk", "\\*whole word\\* becomes"),
])
def test_wordpiece_diagnosis_names_the_misconception(mode, message):
    vocab = ["[UNK]", "p", "pl", "play", "##l", "##a", "##y", "##ing", "##in", "##g", "ing", "a", "y", "l"]
    word = {"shortest": "playing", "no_hashes": "playing", "partial_unk": "playxing"}[mode]
    with pytest.raises(CheckFailed, match=message):
        C.check_wordpiece(lambda w, v: C._wordpiece_variant(w, v, mode), word, vocab)


def test_unfinished_function_reports_not_attempted():
    def stub(*args):
        raise NotImplementedError()
    with pytest.raises(NotAttempted):
        C.check_wordpiece(stub, "abc", ["a"])
    with pytest.raises(NotAttempted):
        C.check_encode_rejects_lone_surrogate(stub, [])


def test_speed_check_rejects_a_correct_but_naive_trainer():
    with pytest.raises(CheckFailed, match="correct but slow"):
        C.check_train_bpe_speed(bpe.train_bpe_naive, english_corpus(60_000), 400, min_speedup=5.0)


def test_corpus_is_deterministic_and_sized():
    a, b = english_corpus(50_000), english_corpus(50_000)
    assert a == b and len(a.encode("utf-8")) <= 50_000 and len(a.encode("utf-8")) > 49_990
    assert ENGLISH_SAMPLE and CHINESE_SAMPLE


def test_the_stored_toy_merges_are_what_the_oracle_trainer_learns():
    """The encode tests' merges are stored (learning them cost every self-check 1–3 s, issue #10):
    they must be the first 300 merges the oracle learns on the same text, longer lists extend
    them (greedy training), and the stored file is exactly what the generator writes."""
    from qkv.checks.toy_merges import TOY_MERGES

    learned = C.learn_toy_merges(C.TOY_MERGES_STORED)
    assert len(TOY_MERGES) == C.TOY_MERGES_STORED and list(TOY_MERGES) == list(learned)
    assert C.toy_merges(120) == list(learned[:120])
    assert C.TOY_MERGES_FILE.read_text(encoding="utf-8") == C.toy_merges_source(learned)
