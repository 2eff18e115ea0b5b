"""qkv.masks (the book's demo code) against torch built-ins and explicit loops, and
qkv.checks.masking's diagnoses against deliberately wrong implementations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qkv import masks as M
from qkv.checks import CheckFailed, NotAttempted
from qkv.checks import masking as C
from qkv.widgets import masking as W

# ---------------------------------------------------------------- the demo implementations


def test_padding_mask_known_values():
    expected = torch.tensor([[True, True, True, False], [True, False, False, False], [False] * 4])
    assert torch.equal(M.padding_mask(torch.tensor([3, 1, 0]), 4), expected)


def test_causal_mask_matches_tril_and_sdpa_is_causal():
    for n in (0, 1, 5):
        assert torch.equal(M.causal_mask(n), torch.tril(torch.ones(n, n, dtype=torch.bool)))
    q, k, v = torch.randn(3, 2, 6, 4).unbind(0)
    torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v, attn_mask=M.causal_mask(6)),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_masked_softmax_matches_softmax_with_minus_inf(dtype):
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 4, 6, generator=gen, dtype=torch.float64) * 3).to(dtype)
    mask = torch.rand(3, 4, 6, generator=gen) > 0.4
    mask[:, 0] = True
    expected = torch.softmax(logits.double().masked_fill(~mask, float("-inf")), -1).to(dtype)
    got = M.masked_softmax(logits, mask)
    assert got.dtype == dtype
    tol = {torch.float16: 1e-3, torch.bfloat16: 1e-2}.get(dtype, 1e-6)
    torch.testing.assert_close(got, expected, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_fully_masked_row_is_zero_not_nan(dtype):
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]], dtype=dtype)
    mask = torch.tensor([[False, False, False], [True, False, True]])
    got = M.masked_softmax(logits, mask)
    assert torch.equal(got[0], torch.zeros(3, dtype=dtype))
    assert torch.isnan(torch.softmax(logits.masked_fill(~mask, float("-inf")), -1)[0]).all()  # what -inf alone gives


def test_minus_1e9_overflows_in_float16():
    assert torch.tensor(-1e9, dtype=torch.float16).item() == float("-inf")
    with pytest.raises(RuntimeError, match="overflow"):
        torch.zeros(2, dtype=torch.float16).masked_fill(torch.tensor([True, False]), -1e9)


def test_masked_softmax_rejects_non_bool_mask():
    with pytest.raises(ValueError, match="bool mask"):
        M.masked_softmax(torch.randn(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="does not broadcast"):
        M.masked_softmax(torch.randn(2, 3), torch.ones(4, dtype=torch.bool))


def test_padding_mask_rejects_bad_lengths():
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        M.padding_mask(torch.tensor([[1, 2]]), 3)
    with pytest.raises(ValueError, match=r"in \[0, 3\]"):
        M.padding_mask(torch.tensor([4]), 3)
    with pytest.raises(ValueError, match="integer"):
        M.padding_mask(torch.tensor([1.0]), 3)


@pytest.mark.parametrize("with_q, causal, t_q, t_k", [(True, False, 4, 4), (True, True, 4, 4), (False, True, 5, 5),
                                                      (True, False, 3, 6), (False, False, 3, 6)])
def test_attention_mask_matches_explicit_loop(with_q, causal, t_q, t_k):
    gen = torch.Generator().manual_seed(1)
    k_len = torch.randint(0, t_k + 1, (3,), generator=gen)
    q_len = torch.randint(0, t_q + 1, (3,), generator=gen) if with_q else None
    got = M.attention_mask(q_len, k_len, t_q, t_k, causal)
    assert got.shape == (3, 1, t_q, t_k) and got.dtype == torch.bool
    for b in range(3):
        for i in range(t_q):
            for j in range(t_k):
                want = j < k_len[b] and (q_len is None or i < q_len[b]) and (not causal or j <= i)
                assert bool(got[b, 0, i, j]) == bool(want)


def test_attention_mask_refuses_causal_cross_attention():
    with pytest.raises(ValueError, match="T_q == T_k"):
        M.attention_mask(None, torch.tensor([5]), 3, 5, causal=True)


def test_masked_attention_matches_sdpa_with_padding_mask():
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 5, 8, generator=gen) for _ in range(3))
    mask = M.attention_mask(None, torch.tensor([5, 3]), 5, 5)[:, 0]  # (B, T_q, T_k)
    out, w = M.masked_attention(q, k, v, mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert torch.equal(w[1, :, 3:], torch.zeros(5, 2))


def test_padding_does_not_leak_into_real_outputs_with_a_key_mask():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 8, generator=gen)
    padded = torch.cat([x, 5 * torch.randn(2, 8, generator=gen)])
    key_mask = M.padding_mask(torch.tensor([3]), 5)
    masked, _ = M.masked_attention(padded, padded, padded, key_mask)
    torch.testing.assert_close(masked[:3], M.masked_attention(x, x, x)[0])


def test_causal_decoder_one_pass_equals_step_by_step():
    layer = M.TinyDecoderLayer(d=8, seed=0)
    gen = torch.Generator().manual_seed(4)
    tgt, src = torch.randn(1, 6, 8, generator=gen), torch.randn(1, 4, 8, generator=gen)
    with torch.no_grad():
        full = layer(tgt, src, M.causal_mask(6))
        steps = torch.cat([layer(tgt[:, :t], src, M.causal_mask(t))[:, -1:] for t in range(1, 7)], dim=1)
        no_mask = layer(tgt, src)
    torch.testing.assert_close(full, steps)
    assert not torch.allclose(no_mask[:, :-1], full[:, :-1])  # without the mask, earlier positions see later ones


def test_widget_reasons_colour_padding_and_future():
    reasons = W.mask_reasons(torch.tensor([3]), 4, causal=True)[0]
    assert reasons[0, 1] == 3 and reasons[1, 3] == 1 and reasons[3, 0] == 2 and reasons[2, 2] == 0
    widget = W.padded_batch_masks()
    assert len(widget.children) == 3


# ---------------------------------------------------------------- the checks accept the reference


def test_correct_implementations_pass_every_check():
    for n in (0, 1, 4):
        C.check_causal_mask(M.causal_mask, n)
    C.check_padding_mask(M.padding_mask, torch.tensor([3, 0, 5]), 5)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        logits = (torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 4).to(dtype)
        mask = torch.rand(2, 3, 5, generator=torch.Generator().manual_seed(6)) > 0.5
        mask[0, 0] = False
        C.check_masked_softmax(M.masked_softmax, logits, mask)
    C.check_attention_mask(M.attention_mask, torch.tensor([3, 1]), torch.tensor([3, 2]), 3, 3, True)
    C.check_attention_mask(M.attention_mask, None, torch.tensor([4, 2]), 2, 4)
    C.check_attention_mask_drives_sdpa(M.attention_mask)


# ---------------------------------------------------------------- diagnoses name the misconception

LENGTHS = torch.tensor([3, 1, 4])


@pytest.mark.parametrize("wrong, message", [
    (lambda lengths, t: torch.arange(t)[None, :] >= lengths[:, None], "polarity is inverted"),
    (lambda lengths, t: torch.arange(t)[None, :] <= lengths[:, None], "positions start at 0"),
    (lambda lengths, t: (torch.arange(t)[None, :] < lengths[:, None]).T, "transpose"),
    (lambda lengths, t: (torch.arange(t)[None, :] < lengths[:, None]).long(), "bool mask"),
])
def test_padding_mask_diagnosis_names_the_misconception(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        C.check_padding_mask(wrong, LENGTHS, 5)


@pytest.mark.parametrize("wrong, message", [
    (lambda n: torch.tril(torch.ones(n, n, dtype=torch.bool), diagonal=-1), "off by one: the diagonal"),
    (lambda n: torch.triu(torch.ones(n, n, dtype=torch.bool)), "this is the transpose"),
    (lambda n: ~torch.tril(torch.ones(n, n, dtype=torch.bool)), "polarity is inverted"),
    (lambda n: torch.ones(n, n, dtype=torch.bool), "nothing is masked"),
])
def test_causal_mask_diagnosis_names_the_misconception(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        C.check_causal_mask(wrong, 5)


LOGITS = torch.tensor([[2.0, 1.0, 0.0, 0.0], [0.5, -1.0, 3.0, 2.0], [1.0, 2.0, 3.0, 4.0]])
MASK = torch.tensor([[True, True, False, False], [True, False, True, True], [False, False, False, False]])


def _minus_inf(x, m):
    return torch.softmax(x.masked_fill(~m, float("-inf")), -1)


def _finite_fill(value):
    def fn(x, m):
        return torch.softmax(x.masked_fill(~m, value), -1)
    return fn


def _zero_dead_rows(fn):
    def wrapped(x, m):
        w = fn(x, m)
        return w.masked_fill(~m.expand(x.shape).any(-1, keepdim=True), 0.0)
    return wrapped


@pytest.mark.parametrize("wrong, logits, message", [
    (lambda x, m: torch.nan_to_num(_minus_inf(x, ~m)), LOGITS, "polarity is inverted"),
    (lambda x, m: torch.softmax(x, -1) * m, LOGITS, "applied after the softmax"),
    (lambda x, m: torch.softmax(x, -1), LOGITS, "mask was ignored"),
    (_minus_inf, LOGITS, "fully masked row gave NaN"),
    (_finite_fill(-1e9), LOGITS, "came out uniform"),
    (_zero_dead_rows(_finite_fill(-1e9)), LOGITS.half(), "-1e9 does not fit in float16"),
    (lambda x, m: _minus_inf(x, m), LOGITS.half(), "in float16 it becomes -inf too"),
    (_zero_dead_rows(_finite_fill(-1000.0)), LOGITS * 1000 - 5000, "not 'small enough'"),
    (_zero_dead_rows(lambda x, m: torch.softmax(x + (~m) * -1000.0, -1)), LOGITS.flip(-1) * 1000, "not 'small enough'"),
])
def test_masked_softmax_diagnosis_names_the_misconception(wrong, logits, message):
    with pytest.raises(CheckFailed, match=message):
        C.check_masked_softmax(wrong, logits, MASK)


def test_additive_minus_1e9_in_float16_is_diagnosed():
    def additive(x, m):  # (1 - mask) * -1e9 in the logits' dtype: -inf in float16
        return torch.softmax(x + (~m).to(x.dtype) * -1e9, -1)
    with pytest.raises(CheckFailed, match="fully masked row gave NaN"):
        C.check_masked_softmax(additive, LOGITS.half(), MASK)


def _mask(q_len, k_len, t_q, t_k, causal, *, keys=True, queries=True, rows_from_keys=False, strict=False,
          invert=False, causal_override=None, drop_head_dim=False):
    i, j = torch.arange(t_q)[:, None], torch.arange(t_k)[None, :]
    out = []
    for b in range(len(k_len)):
        m = torch.ones(t_q, t_k, dtype=torch.bool)
        if keys:
            m &= j < k_len[b]
        if queries and q_len is not None:
            m &= i < q_len[b]
        if rows_from_keys:
            m &= i < k_len[b]
        if causal if causal_override is None else causal_override:
            m &= (j < i) if strict else (j <= i)
        out.append(~m if invert else m)
    stacked = torch.stack(out)
    return stacked if drop_head_dim else stacked[:, None]


SELF = (torch.tensor([4, 2]), torch.tensor([4, 2]), 4, 4)
CROSS = (None, torch.tensor([5, 2]), 3, 5)


@pytest.mark.parametrize("args, causal, kwargs, message", [
    (SELF, True, dict(invert=True), "polarity is inverted"),
    (SELF, False, dict(keys=False), "masked queries"),
    (CROSS, False, dict(keys=False, rows_from_keys=True), "masked queries"),
    (CROSS, False, dict(keys=False), "padding keys were not masked"),
    (SELF, False, dict(queries=False), "padded queries"),
    (SELF, True, dict(strict=True), "off by one: the diagonal"),
    (SELF, True, dict(causal_override=False), "no causal mask was applied"),
    (SELF, False, dict(causal_override=True), "although causal=False"),
    (SELF, True, dict(drop_head_dim=True), "broadcasts over the heads"),
])
def test_attention_mask_diagnosis_names_the_misconception(args, causal, kwargs, message):
    def wrong(q_len, k_len, t_q, t_k, causal):
        return _mask(q_len, k_len, t_q, t_k, causal, **kwargs)
    with pytest.raises(CheckFailed, match=message):
        C.check_attention_mask(wrong, *args, causal)


def test_leaky_decoder_mask_fails_the_sdpa_property():
    def no_causal(q_len, k_len, t_q, t_k, causal):
        return _mask(q_len, k_len, t_q, t_k, False)
    with pytest.raises(CheckFailed, match="editing token 3 changed"):
        C.check_attention_mask_drives_sdpa(no_causal)


def test_unfinished_function_reports_not_attempted():
    def stub(*args):
        raise NotImplementedError()
    for check, args in [(C.check_padding_mask, (LENGTHS, 5)), (C.check_causal_mask, (3,)),
                        (C.check_masked_softmax, (LOGITS, MASK)), (C.check_attention_mask, SELF)]:
        with pytest.raises(NotAttempted, match="not attempted"):
            check(stub, *args)


def test_reread_headings_exist_on_the_page_and_hints_are_complete():
    from pathlib import Path
    page = (Path(__file__).resolve().parent.parent / "book" / "chapters" / "masking.md").read_text()
    headings = {line[3:].strip() for line in page.splitlines() if line.startswith("## ")}
    graded = {"padding_mask", "causal_mask", "masked_softmax", "attention_mask"}
    assert set(C.REREAD) == graded and set(C.HINTS) == graded
    assert set(C.REREAD.values()) <= headings
    assert all(len(h) >= 2 for h in C.HINTS.values())


# ---- the textbook -inf fill, used by the chapter to show how NaN travels ----

def test_plain_masked_attention_matches_torch_where_a_key_is_allowed_and_is_nan_where_none_is():
    from qkv.masks import plain_masked_attention
    gen = torch.Generator().manual_seed(7)
    q, k, v = torch.randn(5, 8, generator=gen), torch.randn(5, 8, generator=gen), torch.randn(5, 4, generator=gen)
    mask = torch.ones(5, 5, dtype=torch.bool).tril()
    mask[4] = False                                    # query 4 may attend to nothing
    out, w = plain_masked_attention(q, k, v, mask)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out[:4], ref[:4])
    assert torch.isnan(w[4]).all() and torch.isnan(out[4]).all()
    # One more layer: the NaN output is a value; even the queries that mask it out give it
    # weight exactly 0, and 0 × NaN = NaN, so every query is poisoned.
    keys_0_to_3 = torch.zeros(5, 5, dtype=torch.bool)
    keys_0_to_3[:, :4] = True
    out2, w2 = plain_masked_attention(out, out, out, keys_0_to_3)
    assert (w2[:4, 4] == 0).all()
    assert torch.isnan(out2).all()
    with pytest.raises(ValueError, match="expected q"):
        plain_masked_attention(q, k[:, :3], v)
