"""qkv.multihead (the book's demo code) against torch built-ins, and qkv.checks.multihead's diagnoses."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from qkv import multihead as M
from qkv.checks import CheckFailed, NotAttempted
from qkv.checks import multihead as C
from qkv.widgets import multihead as W


def _torch_mha(d_model, n_heads, seed=0, bias=True):
    torch.manual_seed(seed)
    layer = torch.nn.MultiheadAttention(d_model, n_heads, bias=bias, batch_first=True).eval()
    with torch.no_grad():  # nonzero biases, so that a forgotten bias is caught
        if bias:
            layer.in_proj_bias.normal_()
            layer.out_proj.bias.normal_()
    return layer


# ---------------------------------------------------------------- the demo implementation


def test_split_heads_gives_each_head_a_contiguous_block_of_features():
    x = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(0))
    heads = M.split_heads(x, 3)
    assert heads.shape == (2, 3, 5, 4)
    for h in range(3):
        assert torch.equal(heads[:, h], x[..., 4 * h:4 * (h + 1)])


@pytest.mark.parametrize("n_heads", [1, 2, 4, 8])
def test_merge_heads_inverts_split_heads(n_heads):
    x = torch.randn(3, 7, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(M.merge_heads(M.split_heads(x, n_heads)), x)


def test_split_and_merge_reject_bad_shapes_with_a_message():
    with pytest.raises(ValueError, match="not divisible"):
        M.split_heads(torch.randn(2, 3, 10), 4)
    with pytest.raises(ValueError, match=r"expected x of shape \(B, T, d_model\), got \(3, 10\)"):
        M.split_heads(torch.randn(3, 10), 2)
    with pytest.raises(ValueError, match=r"expected x of shape \(B, H, T, d_head\)"):
        M.merge_heads(torch.randn(3, 10, 2))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("t_q, t_k, n_heads", [(5, 5, 4), (3, 7, 2), (1, 4, 1), (6, 6, 16)])
def test_multi_head_attention_matches_torch(t_q, t_k, n_heads, bias):
    layer = _torch_mha(16, n_heads, seed=t_q + t_k, bias=bias)
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, t_q, 16, generator=gen), torch.randn(2, t_k, 16, generator=gen),
               torch.randn(2, t_k, 16, generator=gen))
    in_b = layer.in_proj_bias if bias else None
    out_b = layer.out_proj.bias if bias else None
    out, w = M.multi_head_attention(q, k, v, layer.in_proj_weight, in_b, layer.out_proj.weight, out_b, n_heads)
    ref, ref_w = layer(q, k, v, need_weights=True, average_attn_weights=True)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(w, ref_w)
    _, per_head = M.multi_head_attention(q, k, v, layer.in_proj_weight, in_b, layer.out_proj.weight, out_b, n_heads,
                                         average_weights=False)
    torch.testing.assert_close(per_head, layer(q, k, v, average_attn_weights=False)[1])


def test_multi_head_attention_masks_match_torch_with_opposite_polarity():
    layer = _torch_mha(16, 4, seed=3)
    x = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(3))
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    out, w = M.multi_head_attention(x, x, x, layer.in_proj_weight, layer.in_proj_bias, layer.out_proj.weight,
                                    layer.out_proj.bias, 4, causal)
    ref, ref_w = layer(x, x, x, attn_mask=~causal)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(w, ref_w)
    assert torch.equal(w.triu(1), torch.zeros_like(w))


def test_head_mask_zero_removes_a_head_and_ones_change_nothing():
    layer = _torch_mha(8, 2, seed=4)
    x = torch.randn(1, 3, 8, generator=torch.Generator().manual_seed(4))
    w_in, b_in, w_out = layer.in_proj_weight, layer.in_proj_bias, layer.out_proj.weight
    full, _ = M.multi_head_attention(x, x, x, w_in, b_in, w_out, None, 2)
    same, _ = M.multi_head_attention(x, x, x, w_in, b_in, w_out, None, 2, head_mask=torch.ones(2))
    only_0, _ = M.multi_head_attention(x, x, x, w_in, b_in, w_out, None, 2, head_mask=torch.tensor([1.0, 0.0]))
    only_1, _ = M.multi_head_attention(x, x, x, w_in, b_in, w_out, None, 2, head_mask=torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(same, full)
    torch.testing.assert_close(only_0 + only_1, full)  # without the output bias, heads add up linearly


def test_multi_head_attention_rejects_bad_weights():
    x = torch.randn(1, 3, 8)
    with pytest.raises(ValueError, match="in_proj_weight of shape"):
        M.multi_head_attention(x, x, x, torch.randn(8, 8), None, torch.randn(8, 8), None, 2)


@pytest.mark.parametrize("T, d_model, n_heads, d_head", [(4, 8, 2, None), (128, 512, 8, None), (7, 12, 3, 5),
                                                        (9, 16, 4, 16)])
def test_attention_flops_matches_flop_counter_on_torch_mha(T, d_model, n_heads, d_head):
    if d_head is None:  # the real nn.MultiheadAttention: an oracle independent of our explicit computation
        layer = torch.nn.MultiheadAttention(d_model, n_heads, batch_first=True).eval()
        counter = FlopCounterMode(display=False)
        with counter:  # not under no_grad: the fused fast path is not counted by FlopCounterMode
            layer(*(torch.randn(1, T, d_model),) * 3, need_weights=True)
        expected = counter.get_total_flops()
    else:
        expected = C.oracle_flops(T, d_model, n_heads, d_head)
    assert M.attention_flops(T, d_model, n_heads, d_head) == expected


@pytest.mark.parametrize("T, d_model, n_heads, d_head", [(4, 8, 2, None), (512, 512, 8, None), (10, 64, 4, 32),
                                                     (2048, 1024, 16, None), (33, 64, 64, None)])
def test_the_checks_flop_oracle_counts_what_flop_counter_mode_counts(T, d_model, n_heads, d_head):
    """The checks count with torch's formulas in a mode of their own (FlopCounterMode would import
    torch._dynamo); on the same explicit computation, FlopCounterMode itself gives the same number,
    on both of the oracle's paths (real tensors for small sizes, the meta device for large ones)."""
    d_head_ = d_model // n_heads if d_head is None else d_head
    inner = n_heads * d_head_
    with torch.device("meta"):
        x, w_o = torch.empty(1, T, d_model), torch.empty(inner, d_model)
        w = [torch.empty(d_model, inner) for _ in range(3)]
    counter = FlopCounterMode(display=False)
    with counter:
        q, k, v = ((x @ m).view(1, T, n_heads, d_head_).transpose(1, 2) for m in w)
        ((q @ k.transpose(-2, -1)).softmax(-1) @ v).transpose(1, 2).reshape(1, T, inner) @ w_o
    assert C.oracle_flops(T, d_model, n_heads, d_head) == counter.get_total_flops()


def test_the_flop_oracle_imports_neither_dynamo_nor_sympy_for_the_visible_sizes():
    """What made the multihead self-check take seconds: the FLOP oracle imported torch._dynamo (and
    meta tensors import sympy). A fresh process counting the visible tests' sizes imports neither."""
    import subprocess
    import sys

    code = ("import sys; from qkv.checks import multihead as C; "
            "assert C.oracle_flops(512, 512, 8) == 1610612736; C.oracle_flops(10, 64, 4, 32); "
            "print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_attention_cost_split_heads_cost_like_one_head_and_wide_heads_h_times_more():
    one, split, wide = (c for _, c in W.cost_rows(512, 512, 8))
    assert split["flops"] == one["flops"] and split["params"] == one["params"]
    assert wide["flops"] == 8 * one["flops"]
    assert split["attn_entries"] == 8 * one["attn_entries"]
    torch.manual_seed(0)
    assert one["params"] == sum(p.numel() for p in torch.nn.MultiheadAttention(512, 1).parameters())


def test_one_big_projection_equals_per_head_projections():
    x = torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(5))
    w = torch.randn(16, 16, generator=torch.Generator().manual_seed(6))
    per_head = torch.stack([x @ w[:, 4 * i:4 * (i + 1)] for i in range(4)], dim=1)
    torch.testing.assert_close(M.split_heads(x @ w, 4), per_head)


def test_toy_model_trains_and_ablating_all_heads_breaks_it():
    model = M.train_previous_token_model(n_heads=2, d_model=16, T=6, steps=120, seed=0)
    assert M.accuracy(model, n=128) > 0.95
    assert M.accuracy(model, torch.zeros(2), n=128) < 0.3  # without attention, the previous token is unknown


def test_widgets_draw_a_default_view():
    assert W.per_head_weights(4).shape == (4, 10, 10)
    assert "1,050,624" in W.cost_table_html(512, 512, 8)
    assert len(W.head_maps().children) == 2 and len(W.cost_table().children) == 2


# ---------------------------------------------------------------- checks: the reference passes, mistakes are named


def test_reference_passes_every_check():
    for dtype in (torch.float32, torch.float64):
        args = C.random_mha_inputs(2, 4, 6, 12, dtype=dtype, seed=7)
        mask = torch.rand(4, 6, generator=torch.Generator().manual_seed(7)) > 0.5
        mask[:, 0] = True
        C.check_mha(M.multi_head_attention, *args, 3)
        C.check_mha(M.multi_head_attention, *args, 3, mask)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        C.check_split_heads(M.split_heads, torch.randn(2, 3, 8).to(dtype), 4)
        C.check_merge_heads(M.merge_heads, torch.randn(2, 4, 3, 2).to(dtype))
    C.check_attention_flops_known_values(M.attention_flops)
    C.check_attention_flops(M.attention_flops, 33, 64, 4, 7)


X = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(8))


@pytest.mark.parametrize("wrong, message", [
    (lambda x, h: x.reshape(x.shape[0], h, x.shape[1], -1), "reshaped straight to"),
    (lambda x, h: x.reshape(*x.shape[:2], h, -1), "transpose is missing"),
    (lambda x, h: x.reshape(*x.shape[:2], -1, h).permute(0, 3, 1, 2), "interleaved"),
])
def test_split_heads_diagnosis_names_the_misconception(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        C.check_split_heads(wrong, X, 3)


def test_split_heads_missing_transpose_diagnosed_when_t_equals_h():
    # With T == H the two mistakes give the very same tensor; the message names both.
    with pytest.raises(CheckFailed, match="without the transpose"):
        C.check_split_heads(lambda x, h: x.reshape(*x.shape[:2], h, -1), torch.randn(2, 4, 8), 4)


@pytest.mark.parametrize("wrong, message", [
    (lambda x: x.reshape(x.shape[0], x.shape[2], -1), "heads merged in the wrong order"),
    (lambda x: x.permute(0, 2, 3, 1).reshape(x.shape[0], x.shape[2], -1), "interleaved"),
    (lambda x: x.transpose(1, 2).view(x.shape[0], x.shape[2], -1), "use .reshape"),
])
def test_merge_heads_diagnosis_names_the_misconception(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        C.check_merge_heads(wrong, torch.randn(2, 3, 5, 4))


ARGS = C.random_mha_inputs(2, 5, 7, 16, seed=9)
MASK = torch.rand(5, 7, generator=torch.Generator().manual_seed(9)) > 0.4
MASK[:, 0] = True


def _wrong_mha(**mistake):
    """An implementation with one deliberate mistake, written independently of the checks' variants."""
    def mha(query, key, value, in_w, in_b, out_w, out_b, n_heads, mask=None):
        B, T_q, d = query.shape
        d_head = d // n_heads

        def split(x):
            if mistake.get("split") == "no_transpose":
                return x.reshape(x.shape[0], n_heads, x.shape[1], d_head)
            return x.reshape(x.shape[0], x.shape[1], n_heads, d_head).transpose(1, 2)

        w_q, w_k, w_v = in_w.chunk(3)
        b_q, b_k, b_v = in_b.chunk(3)
        q, k, v = split(query @ w_q.T + b_q), split(key @ w_k.T + b_k), split(value @ w_v.T + b_v)
        logits = q @ k.transpose(-2, -1) / math.sqrt(d if mistake.get("scale") == "d_model" else d_head)
        if mask is not None:
            logits = logits.masked_fill(~mask if not mistake.get("inverted") else mask, float("-inf"))
        w = torch.softmax(logits, -1)
        heads = w @ v
        merged = (heads.reshape(B, T_q, d) if mistake.get("merge") == "no_transpose"
                  else heads.transpose(1, 2).reshape(B, T_q, d))
        out = merged if mistake.get("no_out_proj") else merged @ out_w.T + out_b
        return out, (w.sum(1) if mistake.get("sum") else w.mean(1))
    return mha


@pytest.mark.parametrize("mistake, mask, message", [
    (dict(no_out_proj=True), None, "forgot the output projection"),
    (dict(scale="d_model"), None, "divided by √d_model"),
    (dict(split="no_transpose", merge="no_transpose"), None, "split without transpose"),
    (dict(split="no_transpose"), None, "split without transpose"),
    (dict(merge="no_transpose"), None, "heads merged in the wrong order"),
    (dict(sum=True), None, "summed over heads"),
    (dict(inverted=True), MASK, "polarity is inverted"),
])
def test_mha_diagnosis_names_the_misconception(mistake, mask, message):
    with pytest.raises(CheckFailed, match=message):
        C.check_mha(_wrong_mha(**mistake), *ARGS, 4, mask)


def test_mha_diagnosis_weights_not_transposed_and_bias_ignored():
    def no_transpose(query, key, value, in_w, in_b, out_w, out_b, n_heads, mask=None):
        return M.multi_head_attention(query, key, value, in_w.reshape(3, 16, 16).transpose(1, 2).reshape(48, 16),
                                      in_b, out_w.T, out_b, n_heads)

    def no_bias(query, key, value, in_w, in_b, out_w, out_b, n_heads, mask=None):
        return M.multi_head_attention(query, key, value, in_w, None, out_w, None, n_heads)

    with pytest.raises(CheckFailed, match=r"x @ W\.T \+ b"):
        C.check_mha(no_transpose, *ARGS, 4)
    with pytest.raises(CheckFailed, match="biases were ignored"):
        C.check_mha(no_bias, *ARGS, 4)


def test_mha_per_head_weights_are_diagnosed():
    def per_head(*args):
        return M.multi_head_attention(*args, average_weights=False)
    with pytest.raises(CheckFailed, match="one map per head"):
        C.check_mha(per_head, *ARGS, 4)


def _flops(T, d_model, n_heads, d_head=None, *, macs=False, no_out=False, one_attn=False, d_model_heads=False):
    d_head = d_model // n_heads if d_head is None else d_head
    inner = n_heads * d_head
    proj = 3 * 2 * T * d_model * inner + (0 if no_out else 2 * T * inner * d_model)
    attn = (1 if one_attn else 2) * 2 * n_heads * T * T * (d_model if d_model_heads else d_head)
    return (proj + attn) // (2 if macs else 1)


@pytest.mark.parametrize("mistake, message", [
    (dict(macs=True), "multiply-adds"),
    (dict(no_out=True), "output projection"),
    (dict(one_attn=True), "only one of the two attention products"),
    (dict(d_model_heads=True), "not d_model"),
])
def test_flops_diagnosis_names_the_misconception(mistake, message):
    with pytest.raises(CheckFailed, match=message):
        C.check_attention_flops(lambda *a: _flops(*a, **mistake), 10, 64, 4)


def test_unfinished_functions_report_not_attempted():
    def stub(*args):
        raise NotImplementedError()
    for check, args in [(C.check_split_heads, (X, 3)), (C.check_merge_heads, (torch.randn(1, 2, 3, 4),)),
                        (C.check_mha, (*ARGS, 4)), (C.check_attention_flops, (4, 8, 2))]:
        with pytest.raises(NotAttempted, match="not attempted"):
            check(stub, *args)
    with pytest.raises(NotAttempted):
        C.check_attention_flops_known_values(stub)


def test_reread_and_hints_cover_every_graded_function():
    graded = {"split_heads", "merge_heads", "multi_head_attention", "attention_flops"}
    assert set(C.REREAD) == graded and set(C.HINTS) == graded
    page = (M.__file__.rsplit("/qkv/", 1)[0] + "/book/chapters/multihead.md")
    with open(page, encoding="utf-8") as f:
        headings = {line[3:].strip() for line in f if line.startswith("## ")}
    assert set(C.REREAD.values()) <= headings
    assert all(2 <= len(h) <= 3 for h in C.HINTS.values())
