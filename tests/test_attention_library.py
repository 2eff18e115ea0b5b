"""qkv.attention (the book's demo code) against torch built-ins, and qkv.checks' diagnoses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from qkv import attention as A
from qkv.checks import CheckFailed, NotAttempted
from qkv.checks import attention as C


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_softmax_matches_torch(dtype, dim):
    x = torch.randn(3, 4, 5, dtype=dtype, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(A.softmax(x, dim), torch.softmax(x, dim))


def test_softmax_large_logits_do_not_overflow():
    x = torch.tensor([1000.0, 999.0, 998.0])
    torch.testing.assert_close(A.softmax(x), torch.softmax(x, -1))
    assert torch.isnan(x.exp() / x.exp().sum()).all()  # the naive formula really does overflow


def test_softmax_fully_masked_row_is_zero_not_nan():
    x = torch.tensor([[float("-inf")] * 3, [0.0, float("-inf"), 0.0]])
    assert torch.equal(A.softmax(x), torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.5]]))


@pytest.mark.parametrize("with_mask", [False, True])
def test_sdpa_matches_torch(with_mask):
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 3, 4, 8, generator=gen), torch.randn(2, 3, 6, 8, generator=gen),
               torch.randn(2, 3, 6, 5, generator=gen))
    mask = torch.rand(4, 6, generator=gen) > 0.3 if with_mask else None
    out, weights = A.scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 4))


def test_sdpa_fully_masked_query_gets_zero_output():
    q, k, v = torch.randn(1, 2, 4), torch.randn(1, 3, 4), torch.randn(1, 3, 4)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    out, weights = A.scaled_dot_product_attention(q, k, v, mask)
    assert torch.equal(out[0, 1], torch.zeros(4)) and torch.equal(weights[0, 1], torch.zeros(3))


def test_sdpa_rejects_mismatched_shapes_with_a_message():
    with pytest.raises(ValueError, match="share d_k"):
        A.scaled_dot_product_attention(torch.randn(2, 4), torch.randn(3, 5), torch.randn(3, 5))
    with pytest.raises(ValueError, match="same length T_k"):
        A.scaled_dot_product_attention(torch.randn(2, 4), torch.randn(3, 4), torch.randn(2, 4))


def test_additive_attention_matches_explicit_loop():
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, 4, generator=gen), torch.randn(2, 5, 6, generator=gen),
               torch.randn(2, 5, 2, generator=gen))
    w_q, w_k, w_v = torch.randn(4, 7, generator=gen), torch.randn(6, 7, generator=gen), torch.randn(7, generator=gen)
    out, weights = A.additive_attention(q, k, v, w_q, w_k, w_v)
    for b in range(2):
        for i in range(3):
            scores = torch.stack([w_v @ torch.tanh(q[b, i] @ w_q + k[b, j] @ w_k) for j in range(5)])
            torch.testing.assert_close(weights[b, i], torch.softmax(scores, 0))
            torch.testing.assert_close(out[b, i], torch.softmax(scores, 0) @ v[b])


def test_self_attention_is_permutation_equivariant():
    sa = A.SelfAttention(16, 8, seed=0)
    x = torch.randn(1, 6, 16)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sa(x[:, perm])[0], sa(x)[0][:, perm])


# ---------------------------------------------------------------- diagnoses name the misconception

def _attn(q, k, v, mask=None, *, scale=True, axis=-1, transpose=True, mask_mode="before"):
    logits = q @ (k.transpose(-2, -1) if transpose else k)
    if scale:
        logits = logits / math.sqrt(q.shape[-1])
    if mask is not None and mask_mode == "before":
        logits = logits.masked_fill(~mask, float("-inf"))
    if mask is not None and mask_mode == "inverted":
        logits = logits.masked_fill(mask, float("-inf"))
    w = torch.softmax(logits, axis)
    if mask is not None and mask_mode == "after":
        w = w * mask
    return w @ v, w


QKV = C.random_attention_inputs((2,), 4, 6, 8, 5, seed=0)
MASK = torch.rand(4, 6, generator=torch.Generator().manual_seed(5)) > 0.4


@pytest.mark.parametrize("wrong, mask, message", [
    (lambda q, k, v, m=None: _attn(q, k, v, m, scale=False), None, "without the 1/√d_k scale"),
    (lambda q, k, v, m=None: _attn(q, k, v, m, axis=-2), None, "over the query axis"),
    (lambda q, k, v, m=None: _attn(q, k, v, m, mask_mode="inverted"), MASK, "polarity is inverted"),
    (lambda q, k, v, m=None: _attn(q, k, v, m, mask_mode="after"), MASK, "applied after the softmax"),
    (lambda q, k, v, m=None: _attn(q, k, v, None), MASK, "mask was ignored"),
])
def test_sdpa_diagnosis_names_the_misconception(wrong, mask, message):
    with pytest.raises(CheckFailed, match=message):
        C.check_sdpa(wrong, *QKV, mask)


def test_sdpa_diagnosis_k_not_transposed_square_case():
    q, k, v = C.random_attention_inputs((), 8, 8, 8, 3, seed=1)
    with pytest.raises(CheckFailed, match="k was not transposed"):
        C.check_sdpa(lambda q, k, v: _attn(q, k, v, transpose=False), q, k, v)


def test_sdpa_diagnosis_k_not_transposed_shape_error():
    with pytest.raises(CheckFailed, match="transpose the last two dims of k"):
        C.check_sdpa(lambda q, k, v: _attn(q, k, v, transpose=False), *QKV)


def test_sdpa_fully_masked_nan_is_diagnosed():
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[0] = False
    with pytest.raises(CheckFailed, match="fully masked row gave NaN"):
        C.check_sdpa(lambda q, k, v, m: _attn(q, k, v, m), *QKV, mask)


def test_softmax_overflow_is_diagnosed():
    def naive(x, dim=-1):
        e = x.exp()
        return e / e.sum(dim, keepdim=True)
    with pytest.raises(CheckFailed, match="exp overflowed"):
        C.check_softmax(naive, torch.randn(3, 4) + 1000)


def test_softmax_wrong_axis_is_diagnosed():
    with pytest.raises(CheckFailed, match="taken over dim=0"):
        C.check_softmax(lambda x, dim=-1: torch.softmax(x, 0), torch.randn(3, 4))


def test_unfinished_function_reports_not_attempted():
    def stub(*args):
        raise NotImplementedError()
    with pytest.raises(NotAttempted, match="not attempted"):
        C.check_sdpa(stub, *QKV)


def test_wrong_dtype_and_shape_are_reported():
    with pytest.raises(CheckFailed, match="dtype"):
        C.check_softmax(lambda x, dim=-1: torch.softmax(x.double(), dim), torch.randn(3, 4))
    with pytest.raises(CheckFailed, match="shape"):
        C.check_softmax(lambda x, dim=-1: torch.softmax(x, dim).sum(dim), torch.randn(3, 4))


def test_correct_reference_passes_every_check_in_low_precision():
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        q, k, v = C.random_attention_inputs((3,), 5, 7, 16, 4, dtype=dtype, seed=9, scale=1.5)
        mask = torch.rand(5, 7, generator=torch.Generator().manual_seed(4)) > 0.3
        C.check_sdpa(A.scaled_dot_product_attention, q, k, v)
        C.check_sdpa(A.scaled_dot_product_attention, q, k, v, mask)
        C.check_softmax(A.softmax, q, dim=-1)


# ---- relative positions (Shaw et al. 2018; T5's scalar bias) and the capacity read-out ----

def test_relative_position_ids_clip_the_offset():
    ids = A.relative_position_ids(3, 5, max_distance=2)
    expected = torch.tensor([[min(max(j - i, -2), 2) + 2 for j in range(5)] for i in range(3)])
    assert torch.equal(ids, expected)
    with pytest.raises(ValueError, match="max_distance"):
        A.relative_position_ids(3, 3, -1)


def test_relation_aware_attention_matches_the_papers_equations_written_as_loops():
    gen = torch.Generator().manual_seed(3)
    t, d, dv = 4, 5, 3
    q, k, v = torch.randn(t, d, generator=gen), torch.randn(t, d, generator=gen), torch.randn(t, dv, generator=gen)
    a_k, a_v = torch.randn(t, t, d, generator=gen), torch.randn(t, t, dv, generator=gen)
    out, w = A.relation_aware_attention(q, k, v, a_k, a_v)
    for i in range(t):  # Shaw et al. 2018, eq. 3 and 4, one query at a time
        e = torch.stack([q[i] @ (k[j] + a_k[i, j]) / math.sqrt(d) for j in range(t)])
        alpha = torch.exp(e) / torch.exp(e).sum()
        z = sum(alpha[j] * (v[j] + a_v[i, j]) for j in range(t))
        torch.testing.assert_close(w[i], alpha)
        torch.testing.assert_close(out[i], z)


def test_relation_aware_attention_with_zero_relations_is_torch_attention_and_checks_shapes():
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 6, 8, generator=gen), torch.randn(2, 6, 8, generator=gen),
               torch.randn(2, 6, 8, generator=gen))
    out, _ = A.relation_aware_attention(q, k, v, torch.zeros(6, 6, 8), torch.zeros(6, 6, 8))
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    with pytest.raises(ValueError, match=r"expected a_k of shape \(6, 6, 8\)"):
        A.relation_aware_attention(q, k, v, torch.zeros(6, 8), torch.zeros(6, 6, 8))


def test_relative_bias_attention_equals_torch_with_a_float_mask():
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(3, 5, 8, generator=gen), torch.randn(3, 7, 8, generator=gen),
               torch.randn(3, 7, 4, generator=gen))
    table = torch.randn(7, generator=gen)
    bias = table[A.relative_position_ids(5, 7, 3)]
    out, _ = A.relative_bias_attention(q, k, v, bias)
    # torch adds a float attn_mask to the scaled logits: the same operation, computed independently.
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=bias))
    with pytest.raises(ValueError, match="expected bias of shape"):
        A.relative_bias_attention(q, k, v, bias.T)


def test_linear_readout_r2_known_values():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(4000, 3, generator=gen)
    exact = x @ torch.tensor([[1.0, -2.0], [0.5, 0.0], [0.0, 3.0]]) + 1.0
    assert A.linear_readout_r2(x, exact, 3000) == pytest.approx(1.0, abs=1e-9)
    noise = torch.randn(4000, 1, generator=gen)
    half = x[:, :1] + noise                     # half of the variance is independent noise
    assert A.linear_readout_r2(x, half, 3000) == pytest.approx(0.5, abs=0.05)
    unrelated = torch.randn(4000, 2, generator=gen)
    assert abs(A.linear_readout_r2(x, unrelated, 3000)) < 0.02
    with pytest.raises(ValueError, match="n_train"):
        A.linear_readout_r2(x, exact, 4000)
    with pytest.raises(ValueError, match="same N"):
        A.linear_readout_r2(x, exact[:10], 5)
