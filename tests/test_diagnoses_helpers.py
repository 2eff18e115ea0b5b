"""Helpers first (issue 16, weak spot 3): when a function that calls another graded function (its
helper) fails, the helper is put through its own quick check first, and a broken helper is named
as the cause: "your `merge` fails its own check (...); train_bpe uses it, so fix merge first".

Each test runs the check from a test cell's namespace (the learner's notebook in a self-check,
grader proxies in grading): that is where the helper is looked up.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import regex
import torch
import torch.nn.functional as F

from diagnosis_tools import as_grader_proxy, assert_named, failure_of
from notebook_tools import reference_namespace
from qkv import masks as RM
from qkv import norms as RN
from qkv.checks import attention as A
from qkv.checks import masking as MK
from qkv.checks import mqa_gqa as G
from qkv.checks import multihead as MH
from qkv.checks import norms as N
from qkv.checks import tokenization as TK


def naive_softmax(x, dim=-1):
    e = x.exp()
    return e / e.sum(dim, keepdim=True)


def softmax_ignoring_dim(x, dim=-1):
    e = (x - x.amax(0, keepdim=True)).exp()
    return e / e.sum(0, keepdim=True)


def sdpa(q, k, v, mask=None):
    logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    w = softmax(logits, -1)  # noqa: F821 - the learner's softmax, from the namespace the test gives
    return w @ v, w


def additive(q, k, v, w_q, w_k, w_v, mask=None):
    w = softmax(torch.tanh((q @ w_q).unsqueeze(-2) + (k @ w_k).unsqueeze(-3)) @ w_v, -1)  # noqa: F821
    return w @ v, w


def _with(fn, **helpers):
    """``fn`` bound to the given helpers (as if defined in a notebook where they live)."""
    import types

    return types.FunctionType(fn.__code__, {**globals(), **helpers}, fn.__name__, fn.__defaults__)


QKV = A.random_attention_inputs((2,), 4, 6, 8, 5, seed=0, scale=20.0)


@pytest.mark.parametrize("route", ["self-check", "grader"])
def test_a_softmax_without_max_subtraction_is_blamed_not_attention(route):
    """The issue's example: this showed up as "NaN where the answer is finite" in the attention tests."""
    soft, attn = naive_softmax, _with(sdpa, softmax=naive_softmax)
    if route == "grader":
        soft, attn = as_grader_proxy(soft, "softmax"), as_grader_proxy(attn, "scaled_dot_product_attention")
    failure = failure_of(A.check_sdpa, attn, *QKV, namespace={"softmax": soft})
    text = assert_named(failure, "your `softmax` fails its own check", "exp overflowed", "fix softmax first")
    assert "NaN at" not in text  # the consequence is not repeated
    assert "fix softmax first" in failure.reason


def test_a_softmax_that_ignores_dim_is_blamed_in_additive_attention():
    g = torch.Generator().manual_seed(3)
    ws = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g), torch.randn(6, generator=g)
    q, k, v = A.random_attention_inputs((2,), 4, 6, 8, 5, seed=0)
    failure = failure_of(A.check_additive_attention, _with(additive, softmax=softmax_ignoring_dim), q, k, v, *ws,
                         namespace={"softmax": softmax_ignoring_dim})
    assert_named(failure, "your `softmax` fails its own check", "dim")


def test_a_split_heads_without_transpose_is_blamed_in_multi_head_attention():
    def split_heads(x, n_heads):
        B, T, d = x.shape
        return x.reshape(B, n_heads, T, d // n_heads)

    def merge_heads(x):
        B, H, T, dh = x.shape
        return x.transpose(1, 2).reshape(B, T, H * dh)

    def mha(query, key, value, in_w, in_b, out_w, out_b, n_heads, mask=None):
        (wq, wk, wv), (bq, bk, bv) = in_w.chunk(3), in_b.chunk(3)
        q, k, v = (split_heads(F.linear(x, w, b), n_heads)
                   for x, w, b in ((query, wq, bq), (key, wk, bk), (value, wv, bv)))
        w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), -1)
        return F.linear(merge_heads(w @ v), out_w, out_b), w.mean(1)

    failure = failure_of(MH.check_mha, mha, *MH.random_mha_inputs(2, 5, 5, 16, seed=0), 4,
                         namespace={"split_heads": split_heads, "merge_heads": merge_heads})
    text = assert_named(failure, "your `split_heads` fails its own check", "fix split_heads first")
    assert "merge_heads" not in text.split("Also")[0]  # the correct helper is not blamed


def test_a_tiled_repeat_kv_is_blamed_in_decode_step_through_grouped_query_attention():
    def repeat_kv(x, n_rep):
        return torch.cat([x] * n_rep, dim=1)

    def gqa(q, k, v, mask=None):
        g = q.shape[1] // k.shape[1]
        return F.scaled_dot_product_attention(q, repeat_kv(k, g), repeat_kv(v, g), attn_mask=mask)

    def decode(q_t, k_t, v_t, cache_k, cache_v):
        ck, cv = torch.cat([cache_k, k_t], 2), torch.cat([cache_v, v_t], 2)
        return gqa(q_t, ck, cv), ck, cv

    q, k, v = G.random_gqa_inputs(2, 4, 2, 1, 1, 8, seed=3)
    _, ck, cv = G.random_gqa_inputs(2, 4, 2, 1, 5, 8, seed=4)
    failure = failure_of(G.check_decode_step, decode, q, k, v, ck, cv,
                         namespace={"repeat_kv": repeat_kv, "grouped_query_attention": gqa})
    assert_named(failure, "your `grouped_query_attention` fails its own check", "your `repeat_kv` fails its own check",
                 "fix grouped_query_attention first")


def test_a_batch_norm_with_the_unbiased_variance_is_blamed_in_masked_batch_norm():
    def batch_norm(x, rm, rv, w=None, b=None, training=True, momentum=0.1, eps=1e-5):
        if not training:
            return RN.batch_norm(x, rm, rv, w, b, training, momentum, eps)
        mean, var = x.mean(0), x.var(0)
        n = x.shape[0]
        return ((x - mean) / (var + eps).sqrt(), (1 - momentum) * rm + momentum * mean,
                (1 - momentum) * rv + momentum * var * n / (n - 1))

    def masked(x, mask, rm, rv, w=None, b=None, training=True, momentum=0.1, eps=1e-5):
        y, nm, nv = batch_norm(x[mask], rm, rv, w, b, training, momentum, eps)
        out = torch.zeros_like(x)
        out[mask] = y
        return out, nm, nv

    x, mask = N.padded_batch([5, 2, 3], 4, seed=0)
    rm, rv = N.random_running_stats(4, seed=1)
    failure = failure_of(N.check_masked_batch_norm, masked, x, mask, rm, rv, namespace={"batch_norm": batch_norm})
    assert_named(failure, "your `batch_norm` fails its own check", "unbiased")


def test_a_strict_causal_mask_is_blamed_in_attention_mask():
    def causal_mask(n):
        i = torch.arange(n)
        return i[None, :] < i[:, None]

    def attention_mask(q_lengths, k_lengths, t_q, t_k, causal=False):
        m = RM.padding_mask(k_lengths, t_k)[:, None, None, :].expand(len(k_lengths), 1, t_q, t_k)
        return m & causal_mask(t_q) if causal else m

    lengths = torch.tensor([4, 2])
    failure = failure_of(MK.check_attention_mask, attention_mask, None, lengths, 4, 4, True,
                         namespace={"causal_mask": causal_mask, "padding_mask": RM.padding_mask})
    assert_named(failure, "your `causal_mask` fails its own check", "diagonal must be True")


def _merge_from_the_right(ids, pair, new_id):
    return TK._merge_explicit(list(ids), tuple(pair), new_id, "right")


def _train_bpe(text, vocab_size, special_tokens=()):
    words = Counter(w.encode() for w in regex.findall(TK.GPT2_SPLIT_PATTERN, text))
    seqs, freqs = [list(w) for w in words], list(words.values())
    vocab, merges = {i: bytes([i]) for i in range(256)}, []
    for _ in range(vocab_size - 256 - len(special_tokens)):
        counts = Counter()
        for s, f in zip(seqs, freqs):
            for p in zip(s, s[1:]):
                counts[p] += f
        if not counts:
            break
        best = max(counts, key=lambda p: (counts[p], vocab[p[0]], vocab[p[1]]))
        vocab[256 + len(merges)] = vocab[best[0]] + vocab[best[1]]
        merges.append(best)
        seqs = [merge(s, best, 255 + len(merges)) for s in seqs]  # noqa: F821 - the learner's merge
    return vocab, merges


@pytest.mark.parametrize("route", ["self-check", "grader"])
def test_a_right_to_left_merge_is_blamed_not_the_trainer(route):
    """The issue's example: it made train_bpe fail with messages about tie-breaking."""
    merge, train = _merge_from_the_right, _with(_train_bpe, merge=_merge_from_the_right)
    if route == "grader":
        merge, train = as_grader_proxy(merge, "merge"), as_grader_proxy(train, "train_bpe")
    failure = failure_of(TK.check_train_bpe, train, "aaaa aaa", 256 + 3,
                         expected=[(b"a", b"a"), (b"aa", b"aa"), (b"aa", b"a")],
                         namespace={"merge": merge})
    text = assert_named(failure, "your `merge` fails its own check", "taken from the left", "fix merge first")
    assert "tie" not in text


def test_a_merge_that_does_not_skip_is_blamed_in_encode():
    def merge(ids, pair, new_id):
        return TK._merge_explicit(list(ids), tuple(pair), new_id, "noskip")

    def encode(text, merges, special_tokens=()):
        ranks = {p: i for i, p in enumerate(merges)}
        out = []
        for chunk in regex.findall(TK.GPT2_SPLIT_PATTERN, text):
            ids = list(chunk.encode())
            while len(ids) > 1:
                pair = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, 1 << 30))
                if pair not in ranks:
                    break
                ids = merge(ids, pair, 256 + ranks[pair])
            out += ids
        return out

    failure = failure_of(TK.check_encode, encode, "sssss lllll      x", TK.toy_merges(300), namespace={"merge": merge})
    assert_named(failure, "your `merge` fails its own check", "skip both of its elements")


def test_a_correct_helper_is_not_blamed_for_the_function_s_own_mistake():
    def unscaled(q, k, v, mask=None):
        w = torch.softmax(q @ k.transpose(-2, -1), -1)
        return w @ v, w

    failure = failure_of(A.check_sdpa, unscaled, *A.random_attention_inputs((2,), 4, 6, 8, 5, seed=0),
                         namespace={"softmax": lambda x, dim=-1: torch.softmax(x, dim)})
    text = assert_named(failure, "without the 1/√d_k scale")
    assert "softmax` fails" not in text


def test_a_broken_helper_does_not_fail_a_correct_function():
    """Helpers are checked only when the function itself fails."""
    A.check_sdpa(lambda q, k, v, mask=None: (F.scaled_dot_product_attention(q, k, v),
                                            torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), -1)),
                 *A.random_attention_inputs((2,), 4, 6, 8, 5, seed=0))
    ns = {"softmax": naive_softmax}
    exec("A.check_sdpa(fn, *args)", {**ns, "A": A, "fn": lambda q, k, v, mask=None: (
        F.scaled_dot_product_attention(q, k, v), torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), -1)),
        "args": A.random_attention_inputs((2,), 4, 6, 8, 5, seed=0)})


def test_every_declared_helper_is_a_graded_function_with_a_self_check():
    from qkv.checks.registry import GRADED

    for name, spec in GRADED.items():
        for helper in spec.helpers:
            assert helper in GRADED and GRADED[helper].self_check is not None, (name, helper)


def test_every_self_check_passes_the_reference_solution():
    """A correct helper must never be blamed: each self-check passes on the reference answer
    (run here outside any failing check, so nothing else could hide a false blame)."""
    from qkv.checks.registry import GRADED

    checked = 0
    for name, spec in GRADED.items():
        if spec.self_check is None:
            continue
        reference = reference_namespace(spec.chapter)[name]
        spec.self_check(reference)
        checked += 1
    assert checked >= 10


def test_an_unfinished_helper_the_function_does_not_call_is_not_blamed():
    def softmax(x, dim=-1):
        raise NotImplementedError()

    def unscaled(q, k, v, mask=None):   # does not call softmax, and is wrong on its own
        w = torch.softmax(q @ k.transpose(-2, -1), -1)
        return w @ v, w

    failure = failure_of(A.check_sdpa, unscaled, *A.random_attention_inputs((2,), 4, 6, 8, 5, seed=0),
                         namespace={"softmax": softmax})
    text = assert_named(failure, "without the 1/√d_k scale")
    assert "softmax`" not in text
