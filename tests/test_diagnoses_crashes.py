"""Crash diagnosis (issue 16, weak spot 1): when a learner's function raises, the message names the
arguments (with their shapes) and the likely mistake behind the exception.

Every mistake here is in no chapter's wrong-variant list: the explanation comes from the
exception's text and the call's arguments (qkv.checks.crashes), or from a crash hint declared
with the function. Each also runs through a grader-like proxy (no signature, no traceback, the
exception re-raised as the nearest built-in type with only its message), as in grading.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from diagnosis_tools import as_grader_proxy, assert_named, failure_of
from qkv.checks import attention as A
from qkv.checks import bert as BE
from qkv.checks import masking as MK
from qkv.checks import mqa_gqa as G
from qkv.checks import multihead as MH
from qkv.checks import norms as N
from qkv.checks import scaling as SC
from qkv.checks import tokenization as TK
from qkv.checks import transformer as TR


def _mha_without_head_axis(query, key, value, in_w, in_b, out_w, out_b, n_heads, mask=None):
    """Correct multi-head attention, except that a (B, T_q, T_k) mask is used without a head axis."""
    B, T, d = query.shape
    S, h = key.shape[1], d // n_heads
    (wq, wk, wv), (bq, bk, bv) = in_w.chunk(3), in_b.chunk(3)
    q = F.linear(query, wq, bq).reshape(B, T, n_heads, h).transpose(1, 2)
    k = F.linear(key, wk, bk).reshape(B, S, n_heads, h).transpose(1, 2)
    v = F.linear(value, wv, bv).reshape(B, S, n_heads, h).transpose(1, 2)
    logits = q @ k.transpose(-2, -1) / math.sqrt(h)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    w = torch.softmax(logits, -1)
    return F.linear((w @ v).transpose(1, 2).reshape(B, T, d), out_w, out_b), w.mean(1)


def _decode_on_head_axis(q_t, k_t, v_t, cache_k, cache_v):
    cache_k, cache_v = torch.cat([cache_k, k_t], dim=1), torch.cat([cache_v, v_t], dim=1)
    return F.scaled_dot_product_attention(q_t, cache_k, cache_v, enable_gqa=True), cache_k, cache_v


def _softmax_without_keepdim(x, dim=-1):
    e = (x - x.amax(dim)).exp()
    return e / e.sum(dim)


def _softmax_with_torch_max(x, dim=-1):
    e = (x - torch.max(x, dim)).exp()
    return e / e.sum(dim, keepdim=True)


def _sdpa_with_bmm(q, k, v, mask=None):
    w = torch.softmax(torch.bmm(q, k.transpose(-2, -1)) / math.sqrt(q.shape[-1]), -1)
    return torch.bmm(w, v), w


def _layer_norm_using_none(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def _pair_counts_past_the_end(ids):
    counts = {}
    for i in range(len(ids)):
        counts[(ids[i], ids[i + 1])] = counts.get((ids[i], ids[i + 1]), 0) + 1
    return counts


def _jacobian_with_diag(p):
    return torch.diag(p) - p.unsqueeze(-1) * p.unsqueeze(-2)


def _split_with_true_division(x, n_heads):
    B, T, d = x.shape
    return x.reshape(B, T, n_heads, d / n_heads).transpose(1, 2)


def _pre_ln_with_wrong_key(x, params, n_heads):
    d = x.shape[-1]
    h = F.layer_norm(x, (d,), params["ln_1_weight"], params["ln_1_bias"], eps=1e-5)
    return x + h


def _padding_mask_without_a_batch_axis(lengths, max_len):
    return torch.arange(max_len) < lengths     # (max_len,) against (B,): no [:, None]


MHA_ARGS = MH.random_mha_inputs(2, 5, 5, 16, seed=0)
MHA_MASK = torch.rand(2, 5, 5, generator=torch.Generator().manual_seed(1)) > 0.5
MHA_MASK[..., 0] = True
GQA_STEP = (*G.random_gqa_inputs(2, 4, 2, 1, 1, 8, seed=3), *G.random_gqa_inputs(2, 4, 2, 1, 5, 8, seed=4)[1:])
X45 = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))

CASES = [
    # (check, learner function, graded name, arguments, words the message must contain)
    pytest.param(MH.check_mha, _mha_without_head_axis, "multi_head_attention", (*MHA_ARGS, 4, MHA_MASK),
                 ["mask=(2, 5, 5) bool", "head axis", "mask[:, None]"], id="mha-mask-without-head-axis"),
    pytest.param(G.check_decode_step, _decode_on_head_axis, "decode_step", GQA_STEP,
                 ["cache_k=(2, 2, 5, 8)", "differ only in dim 2", "dim=2, not dim=1"], id="decode-cat-on-head-axis"),
    pytest.param(A.check_softmax, _softmax_without_keepdim, "softmax", (X45, -1),
                 ["x=(4, 5) float32", "keepdim=True"], id="softmax-reduction-without-keepdim"),
    pytest.param(A.check_softmax, _softmax_with_torch_max, "softmax", (X45, -1),
                 ["(values, indices)", "amax"], id="softmax-torch-max-namedtuple"),
    pytest.param(A.check_sdpa, _sdpa_with_bmm, "scaled_dot_product_attention",
                 A.random_attention_inputs((2, 3), 4, 6, 8, 5, seed=0), ["bmm", "3-D", "@"], id="sdpa-bmm-on-4d"),
    pytest.param(N.check_layer_norm, _layer_norm_using_none, "layer_norm",
                 (N.random_input((2, 5, 8), seed=0), 8, None, None, 1e-5),
                 ["`weight`", "None", "only when it is given"],
                 id="layer-norm-uses-none-weight"),
    pytest.param(TK.check_get_pair_counts, _pair_counts_past_the_end, "get_pair_counts", ([1, 2, 3, 1, 2],),
                 ["ids=[1, 2, 3, 1, 2]", "off-by-one", "loop bound"], id="pair-counts-index-past-the-end"),
    pytest.param(SC.check_softmax_jacobian, _jacobian_with_diag, "softmax_jacobian",
                 (SC.random_probs((2, 3, 4), seed=1),),
                 ["p=(2, 3, 4)", "diag_embed"], id="jacobian-torch-diag-on-a-batch"),
    pytest.param(MH.check_split_heads, _split_with_true_division, "split_heads",
                 (torch.arange(48, dtype=torch.float32).reshape(2, 3, 8), 2), ["integer division", "//"],
                 id="split-heads-true-division"),
    pytest.param(MK.check_padding_mask, _padding_mask_without_a_batch_axis, "padding_mask", (torch.tensor([3, 1]), 4),
                 ["lengths=(2,) int64", "broadcast", "None/unsqueeze"], id="padding-mask-without-batch-axis"),
    pytest.param(TR.check_block, _pre_ln_with_wrong_key, "pre_ln_block",
                 (torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(5)),
                  TR.random_block_params(d_model=16, d_ff=32, seed=0), 4),
                 ["`params` has no key", "ln1_weight"], id="block-wrong-parameter-name"),
]


@pytest.mark.parametrize("check, wrong, name, args, words", CASES)
@pytest.mark.parametrize("route", ["self-check", "grader"])
def test_a_crash_names_the_arguments_and_the_likely_mistake(check, wrong, name, args, words, route):
    fn = wrong if route == "self-check" else as_grader_proxy(wrong, name)
    failure = failure_of(check, fn, *args, **({"pre_ln": True} if check is TR.check_block else {}))
    text = assert_named(failure, "raised", "likely cause", *words)
    # Hidden tests show only the reason: it keeps the likely cause and hides the shapes.
    assert "likely cause" in failure.reason and "(2, 5, 5)" not in failure.reason, failure.reason
    assert text.startswith(name) or name in text


def test_schedule_with_zero_warmup_names_the_argument():
    def divides(step, peak_lr, warmup_steps, total_steps):
        if step >= total_steps:
            return 0.0
        return peak_lr * min(step / warmup_steps, (total_steps - step) / (total_steps - warmup_steps))

    failure = failure_of(BE.check_linear_warmup_decay, divides, 5e-5, 0, 30)
    assert_named(failure, "ZeroDivisionError", "`step`, `warmup_steps` are 0", "divides by one of them")


def test_a_graded_helper_left_unfinished_is_named_not_the_caller():
    def softmax(x, dim=-1):
        raise NotImplementedError()

    def sdpa(q, k, v, mask=None):
        w = softmax(q @ k.transpose(-2, -1), -1)
        return w @ v, w

    from qkv.checks import NotAttempted

    with pytest.raises(NotAttempted, match=r"^softmax: not attempted yet \(scaled_dot_product_attention calls it\)"):
        A.check_sdpa(sdpa, *A.random_attention_inputs((2,), 4, 6, 8, 5, seed=0))


def test_the_unfinished_function_itself_is_still_not_attempted():
    from qkv.checks import NotAttempted

    def sdpa(q, k, v, mask=None):
        raise NotImplementedError()

    with pytest.raises(NotAttempted, match=r"^scaled_dot_product_attention: not attempted yet"):
        A.check_sdpa(sdpa, *A.random_attention_inputs((2,), 4, 6, 8, 5, seed=0))


def test_a_hang_is_not_probed_again():
    """A function that did not return (the grader's timeout) is reported as such; diagnosing calls
    neither it nor its helpers again (each extra call would hang again and cost a restart)."""
    calls = []

    def hangs(q, k, v, mask=None):
        calls.append(1)
        raise TimeoutError("scaled_dot_product_attention did not return within 4 s (an infinite loop?)")

    def softmax(x, dim=-1):
        calls.append("softmax")
        return torch.softmax(x, dim)

    failure = failure_of(A.check_sdpa, hangs, *A.random_attention_inputs((2,), 4, 6, 8, 5, seed=0),
                         namespace={"softmax": softmax})
    assert "did not return within 4 s" in str(failure)
    assert calls == [1]


def test_a_crash_is_not_probed_by_properties_but_its_helpers_are_checked():
    calls = []

    def crashes(q, k, v, mask=None):
        calls.append("sdpa")
        raise RuntimeError("something odd")

    def softmax(x, dim=-1):
        calls.append("softmax")
        return torch.softmax(x, dim)

    failure_of(A.check_sdpa, crashes, *A.random_attention_inputs((2,), 4, 6, 8, 5, seed=0),
               namespace={"softmax": softmax})
    assert calls.count("sdpa") == 1 and "softmax" in calls
