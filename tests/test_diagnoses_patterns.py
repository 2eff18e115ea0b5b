"""Generic diagnoses (qkv.checks.patterns and call_learner): shapes of mistakes that apply to any
function, named without any function-specific list — an argument left out, a constant or per-row
factor, a transpose, a shift by one, the right values in the wrong places, a wrong dtype or
shape, results returned in the wrong order, an argument modified in place, mojibake.

Each case is a realistic slip in some chapter that no wrong-variant list holds.
"""

from __future__ import annotations

import math

import pytest
import torch

from diagnosis_tools import assert_named, failure_of
from qkv import norms as RN
from qkv.checks import attention as A
from qkv.checks import bert as BE
from qkv.checks import masking as MK
from qkv.checks import mqa_gqa as G
from qkv.checks import multihead as MH
from qkv.checks import norms as N
from qkv.checks import patterns
from qkv.checks import scaling as SC
from qkv.checks import tokenization as TK
from qkv.checks import transformer as TR

XN = N.random_input((2, 5, 8), seed=0, scale=2.0, shift=1.0)
W, B = torch.linspace(0.5, 2.0, 8), torch.linspace(-1.0, 1.0, 8)


def _ln(x, ns, w=None, b=None, eps=1e-5):
    return RN.layer_norm(x, ns, w, b, eps)


def test_a_left_out_bias_is_named():
    failure = failure_of(N.check_layer_norm, lambda x, ns, w=None, b=None, eps=1e-5: _ln(x, ns, w, None, eps),
                         XN, 8, W, B)
    assert_named(failure, "minus `bias`", "not added")


def test_a_left_out_output_bias_in_multi_head_attention_is_named():
    from qkv import multihead as RMH

    def no_out_bias(query, key, value, in_w, in_b, out_w, out_b, n_heads, mask=None):
        return RMH.multi_head_attention(query, key, value, in_w, in_b, out_w, None, n_heads, mask)

    assert_named(failure_of(MH.check_mha, no_out_bias, *MH.random_mha_inputs(2, 5, 5, 16, seed=0), 4),
                 "minus `out_proj_bias`")


def test_a_factor_is_named_with_the_size_it_equals():
    q, k = SC.random_qk((2, 3), 4, 6, 16, seed=0, dtype=torch.float64)
    failure = failure_of(SC.check_attention_logits,
                         lambda q, k, scale=None: q @ k.transpose(-2, -1) * math.sqrt(q.shape[-1]), q, k)
    assert_named(failure, "× 16", "q.shape[-1]")


def test_a_per_row_factor_is_named():
    hidden, mask = BE.padded_hidden([5, 2, 7], d=6, seed=0)
    failure = failure_of(BE.check_mean_pool, lambda h, m: (h * m[..., None]).sum(1) / m.sum(), hidden, mask)
    assert_named(failure, "its own factor", "divisor")


def test_the_transpose_of_the_answer_is_named():
    chunks = [(0, 4), (4, 8)]
    preds = [torch.randn(4, 8, generator=torch.Generator().manual_seed(s)) for s in range(2)]
    failure = failure_of(BE.check_merge_chunk_predictions, lambda cp, ch, n: torch.cat(cp).T.contiguous(),
                         preds, chunks, 8)
    assert_named(failure, "transpose of the answer")


def test_a_result_shifted_by_one_position_is_named():
    from qkv import positional as RP

    def repeats_the_first_row(n_positions, d_model):   # row i holds position i - 1
        pe = RP.sinusoidal_positional_encoding(n_positions, d_model)
        return torch.cat([pe[:1], pe[:-1]])

    assert_named(failure_of(TR.check_pe, repeats_the_first_row, 50, 16), "shifted by one position")


def test_right_values_in_the_wrong_places_are_named():
    def shuffled_heads(x, n_rep):   # every KV head repeated, but the heads come out in a scrambled order
        b, h, s, d = x.shape
        order = torch.randperm(h * n_rep, generator=torch.Generator().manual_seed(1))
        return x[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)[:, order]

    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    assert_named(failure_of(G.check_repeat_kv, shuffled_heads, x, 2), "right values", "wrong order")


def test_a_wrong_result_dtype_is_explained():
    failure = failure_of(A.check_softmax, lambda x, dim=-1: torch.softmax(x.double(), dim), torch.randn(3, 4), -1)
    assert_named(failure, "expected float32, got float64", "upcast", ".to(x.dtype)")


def test_an_extra_axis_is_named():
    hidden, _ = BE.padded_hidden([5, 2, 7], d=6, seed=0)
    assert_named(failure_of(BE.check_cls_pool, lambda h: h[:, :1], hidden), "extra axis of size 1 at dim 1")


def test_a_size_taken_from_the_wrong_place_is_named():
    failure = failure_of(MK.check_padding_mask,
                         lambda lengths, n: torch.arange(int(lengths.max()))[None] < lengths[:, None],
                         torch.tensor([3, 1]), 4)
    assert_named(failure, "dim 1 has size 3", "(= max_len)")


def test_results_returned_in_the_wrong_order_are_named():
    def swapped(q, k, v, mask=None):
        w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), -1)
        return w, w @ v

    assert_named(failure_of(A.check_sdpa, swapped, *A.random_attention_inputs((2,), 4, 6, 8, 5, seed=0)),
                 "wrong order", "(weights, output)")


@pytest.mark.parametrize("check, wrong, args, arg", [
    pytest.param(A.check_softmax, "softmax", (torch.randn(3, 4), -1), "x", id="softmax-subtracts-in-place"),
    pytest.param(TK.check_merge, "merge", ([1, 2, 3, 1, 2], (1, 2), 99), "ids", id="merge-edits-the-list"),
    pytest.param(TR.check_dropout_eval, "dropout", (torch.randn(4, 6), 0.5), "x", id="dropout-zeroes-in-place"),
])
def test_an_argument_modified_in_place_is_named(check, wrong, args, arg):
    def softmax(x, dim=-1):
        x -= x.amax(dim, keepdim=True)
        e = x.exp()
        return e / e.sum(dim, keepdim=True)

    def merge(ids, pair, new_id):
        i = 0
        while i < len(ids) - 1:
            if (ids[i], ids[i + 1]) == tuple(pair):
                ids[i:i + 2] = [new_id]
            i += 1
        return ids

    def dropout(x, p, training, generator=None):
        x.mul_(1.0)  # a no-op on the values, but …
        x[0, 0] = x[0, 0] + 1  # … an in-place write all the same
        return x if not training else x

    fn = {"softmax": softmax, "merge": merge, "dropout": dropout}[wrong]
    failure = failure_of(check, fn, *args)
    assert_named(failure, "modified an argument in place", f"`{arg}` changed")


def test_mojibake_is_named():
    merges = TK.toy_merges(300)
    vocab, enc = TK.vocab_from_merges(merges), TK.tiktoken_from_merges(merges)
    failure = failure_of(TK.check_decode, lambda ids, v: b"".join(v[i] for i in ids).decode("latin-1"),
                         enc.encode("机器 café"), vocab)
    assert_named(failure, "read as latin-1", "UTF-8")


def test_a_list_missing_its_last_element_is_named():
    assert patterns.sequence_mismatch([1, 2], [1, 2, 3]) == (
        "your list is missing the last element (a loop bound stops one step early).")
    assert "element 1 is wrong" in patterns.sequence_mismatch([1, 5, 3], [1, 2, 3])
    assert "reversed" in patterns.sequence_mismatch([3, 2, 1], [1, 2, 3])


def test_a_mask_that_allows_too_much_is_named():
    def combined_with_or(q_len, k_len, t_q, t_k, causal=False):
        keys = (torch.arange(t_k)[None] < k_len[:, None])[:, None, None, :].expand(len(k_len), 1, t_q, t_k)
        rows = (torch.arange(t_q)[None] < q_len[:, None])[:, None, :, None]
        return keys | rows

    failure = failure_of(MK.check_attention_mask, combined_with_or, torch.tensor([3, 1]), torch.tensor([5, 2]), 3, 5)
    assert_named(failure, "allows too much", "| instead of &")


def test_describe_factor_names_sizes_and_ratios():
    q = torch.zeros(2, 4, 16)
    assert patterns.describe_factor(0.25, {"q": q}) == "1/√16 (16 = q.shape[-1])"
    assert patterns.describe_factor(2.0, {"q": q}) == "2"
    assert patterns.describe_factor(0.25, {"n_groups": 2, "n_heads": 8}) == "n_groups / n_heads"
    assert patterns.describe_factor(1.2345, {"q": q}) == ""


def test_a_correct_answer_gets_no_pattern():
    x = torch.randn(3, 4, dtype=torch.float64)
    assert patterns.tensor_mismatch(x, x.clone(), atol=1e-10, rtol=1e-8, inputs={"x": x}) is None
