"""qkv.gqa and qkv.kv_cache (the book's demo code) against torch built-ins, and qkv.checks.mqa_gqa's diagnoses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from qkv import gqa as G
from qkv import kv_cache as KV
from qkv.checks import CheckFailed, NotAttempted
from qkv.checks import mqa_gqa as C


def _inputs(b=2, h=8, h_kv=2, t=5, s=7, d=16, seed=0, dtype=torch.float32):
    return C.random_gqa_inputs(b, h, h_kv, t, s, d, seed=seed, dtype=dtype)


# ----------------------------------------------------------------------------- qkv.gqa


@pytest.mark.parametrize("n_rep", [1, 2, 5])
def test_repeat_kv_matches_repeat_interleave(n_rep):
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(G.repeat_kv(x, n_rep), torch.repeat_interleave(x, n_rep, dim=1))


def test_repeat_kv_rejects_bad_input():
    with pytest.raises(ValueError, match=r"expected x of shape \(B, H_kv, S, d\), got \(2, 5, 8\)"):
        G.repeat_kv(torch.randn(2, 5, 8), 2)
    with pytest.raises(ValueError, match="n_rep must be a positive int"):
        G.repeat_kv(torch.randn(1, 2, 3, 4), 0)


@pytest.mark.parametrize("h_kv", [8, 4, 2, 1])
@pytest.mark.parametrize("with_mask", [False, True])
def test_gqa_matches_torch_enable_gqa(h_kv, with_mask):
    q, k, v = _inputs(h_kv=h_kv, seed=h_kv)
    mask = None
    if with_mask:
        mask = torch.rand(2, 1, 5, 7, generator=torch.Generator().manual_seed(1)) > 0.4
        mask[..., 0] = True
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    torch.testing.assert_close(G.grouped_query_attention(q, k, v, mask), want)
    torch.testing.assert_close(G.grouped_query_attention_repeat(q, k, v, mask), want)


def test_gqa_with_group_size_one_is_exactly_mha():
    q, k, v = _inputs(h_kv=8, dtype=torch.float64)
    torch.testing.assert_close(G.grouped_query_attention(q, k, v), F.scaled_dot_product_attention(q, k, v),
                               rtol=0, atol=1e-12)


def test_gqa_with_one_group_is_mqa_every_head_sees_the_same_kv():
    q, k, v = _inputs(h_kv=1, dtype=torch.float64)
    out = G.grouped_query_attention(q, k, v)
    for h in range(q.shape[1]):
        torch.testing.assert_close(out[:, h:h + 1], F.scaled_dot_product_attention(q[:, h:h + 1], k, v))


def test_gqa_rejects_head_counts_that_do_not_divide():
    q, k, v = _inputs(h=6, h_kv=4)
    with pytest.raises(ValueError, match=r"query heads \(6\) must be a multiple of the number of KV heads \(4\)"):
        G.grouped_query_attention(q, k, v)
    with pytest.raises(ValueError, match=r"expected q of shape \(B, H, T, d\), got \(2, 5, 8\)"):
        G.grouped_query_attention(torch.randn(2, 5, 8), k, v)


def test_mean_pool_matches_explicit_loop_for_weight_and_bias():
    gen = torch.Generator().manual_seed(2)
    w, bias = torch.randn(12 * 3, 20, generator=gen), torch.randn(12 * 3, generator=gen)
    for n_groups in (1, 2, 3, 4, 6, 12):
        per = 12 // n_groups
        want = torch.cat([torch.stack([w[h * 3:(h + 1) * 3] for h in range(g * per, (g + 1) * per)]).mean(0)
                          for g in range(n_groups)])
        torch.testing.assert_close(G.mean_pool_kv_heads(w, 12, n_groups), want)
        want_b = torch.cat([bias.view(12, 3)[g * per:(g + 1) * per].mean(0) for g in range(n_groups)])
        torch.testing.assert_close(G.mean_pool_kv_heads(bias, 12, n_groups), want_b)


def test_mean_pool_with_as_many_groups_as_heads_is_identity():
    w = torch.randn(8 * 4, 32)
    assert torch.equal(G.mean_pool_kv_heads(w, 8, 8), w)


def test_mean_pool_rejects_bad_sizes():
    with pytest.raises(ValueError, match="positive divisor"):
        G.mean_pool_kv_heads(torch.randn(32, 8), 8, 3)
    with pytest.raises(ValueError, match=r"n_heads·d_head"):
        G.mean_pool_kv_heads(torch.randn(30, 8), 8, 2)


# ----------------------------------------------------------------------------- qkv.kv_cache


@pytest.mark.parametrize("name, geometry, bpe, want", C.KNOWN_BYTES_PER_TOKEN)
def test_kv_cache_bytes_known_values(name, geometry, bpe, want):
    assert KV.kv_cache_bytes(*geometry, 1, 1, bpe) == want


def test_kv_cache_bytes_70b_at_4k_tokens():
    assert KV.kv_cache_bytes(80, 8, 128, 4096) == 1_342_177_280 == 1.25 * 2**30
    assert KV.kv_cache_bytes(80, 64, 128, 4096) == 8 * KV.kv_cache_bytes(80, 8, 128, 4096)
    assert KV.kv_cache_bytes(80, 1, 128, 4096, batch=3, bytes_per_element=0.5) == 2 * 80 * 128 * 4096 * 3 // 2


def test_kv_cache_bytes_rejects_bad_sizes():
    with pytest.raises(ValueError, match="n_kv_heads must be a positive integer"):
        KV.kv_cache_bytes(2, 0, 64, 10)
    with pytest.raises(ValueError, match="bytes_per_element must be positive"):
        KV.kv_cache_bytes(2, 1, 64, 10, bytes_per_element=0)


def test_decode_step_matches_full_causal_attention():
    q, k, v = _inputs(t=6, s=6, h=6, h_kv=3, dtype=torch.float64)
    cache_k, cache_v = KV.empty_cache(2, 3, 16, torch.float64)
    outs = []
    for t in range(6):
        out, cache_k, cache_v = KV.decode_step(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], cache_k, cache_v)
        outs.append(out)
    assert torch.equal(cache_k, k) and torch.equal(cache_v, v)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(torch.cat(outs, dim=2), want)


def test_decode_step_rejects_more_than_one_new_token():
    q, k, v = _inputs(t=2, s=2)
    with pytest.raises(ValueError, match=r"expected q_t of shape \(B, H, 1, d\)"):
        KV.decode_step(q, k, v, *KV.empty_cache(2, 2, 16))


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_cached_decoding_gives_the_same_logits_as_recomputation(n_kv_heads):
    model = KV.TinyDecoder(KV.DecoderConfig(n_kv_heads=n_kv_heads), seed=n_kv_heads)
    tokens = torch.randint(0, model.config.vocab, (2, 14), generator=torch.Generator().manual_seed(3))
    full = model(tokens)  # (B, T, vocab), every position recomputed
    logits, cache = model.step(tokens[:, :5])  # prefill 5 tokens, then one token per step
    pieces = [logits]
    for t in range(5, 14):
        logits, cache = model.step(tokens[:, t:t + 1], cache)
        pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache[0][0].shape == (2, n_kv_heads, 14, model.config.d_head)


def test_cached_decoding_with_positions_off_by_one_differs():
    model = KV.TinyDecoder(seed=0)
    tokens = torch.randint(0, model.config.vocab, (1, 6), generator=torch.Generator().manual_seed(4))
    full = model(tokens)
    _, cache = model.step(tokens[:, :5])
    wrong, _ = model.step(tokens[:, 5:], cache, position=6)
    assert (wrong[:, 0] - full[:, 5]).abs().max() > 1e-2


def test_time_decode_attention_is_positive_and_restores_threads():
    before = torch.get_num_threads()
    seconds = KV.time_decode_attention(4, 2, 8, 64, repeats=2)
    assert 0 < seconds < 1 and torch.get_num_threads() == before
    assert "torch" in KV.machine_description()


# ----------------------------------------------------------------------------- diagnoses name the misconception


def _tiled_repeat(x, n_rep):
    return x.repeat(1, n_rep, 1, 1)


def _gqa_with(q, k, v, mask=None, *, repeat=_tiled_repeat, scale=True):
    g = q.shape[1] // k.shape[1]
    k, v = repeat(k, g), repeat(v, g)
    logits = q @ k.transpose(-2, -1) / (math.sqrt(q.shape[-1]) if scale else 1.0)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return torch.softmax(logits, -1) @ v


def _good_repeat(x, n):
    return torch.repeat_interleave(x, n, dim=1)


def test_repeat_kv_tiled_order_is_diagnosed():
    with pytest.raises(CheckFailed, match="repeated in the wrong order"):
        C.check_repeat_kv(_tiled_repeat, torch.randn(2, 3, 4, 5), 2)


def test_repeat_kv_along_sequence_axis_is_diagnosed():
    with pytest.raises(CheckFailed, match="sequence axis"):
        C.check_repeat_kv(lambda x, n: torch.repeat_interleave(x, n, dim=2), torch.randn(2, 3, 4, 5), 2)


def test_gqa_tiled_heads_is_diagnosed():
    with pytest.raises(CheckFailed, match="repeated in the wrong order"):
        C.check_gqa(_gqa_with, *_inputs())


def test_gqa_missing_scale_is_diagnosed():
    with pytest.raises(CheckFailed, match="without the 1/√d scale"):
        C.check_gqa(lambda q, k, v: _gqa_with(q, k, v, repeat=_good_repeat, scale=False), *_inputs())


def test_gqa_ignored_mask_is_diagnosed():
    mask = torch.ones(5, 7, dtype=torch.bool).tril()
    with pytest.raises(CheckFailed, match="mask was ignored"):
        C.check_gqa(lambda q, k, v, m: _gqa_with(q, k, v, None, repeat=_good_repeat), *_inputs(), mask)


def test_gqa_reference_passes_in_low_precision():
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        q, k, v = _inputs(dtype=dtype, seed=7)
        C.check_gqa(G.grouped_query_attention, q, k, v)
        C.check_gqa(G.grouped_query_attention, q, k, v, torch.ones(5, 7, dtype=torch.bool).tril())


def _bytes(factor):
    return lambda layers, h, d, s, b=1, e=2: 2 * layers * h * d * s * b * e * factor


@pytest.mark.parametrize("factor, message", [
    (0.5, "forgot the factor 2"),
    (8, "bits, not bytes"),
    (4, r"bits instead of bytes \(×8\) and the factor 2"),
])
def test_kv_cache_bytes_diagnoses(factor, message):
    with pytest.raises(CheckFailed, match=message):
        C.check_kv_cache_bytes(_bytes(factor), 80, 8, 128, 1, expected=327_680)


def test_kv_cache_bytes_ignoring_batch_is_diagnosed():
    with pytest.raises(CheckFailed, match="ignores the batch"):
        C.check_kv_cache_bytes(lambda layers, h, d, s, b=1, e=2: 2 * layers * h * d * s * e, 4, 2, 8, 10, 3, 2)


def test_kv_cache_bytes_correct_formula_passes():
    C.check_kv_cache_bytes(KV.kv_cache_bytes, 80, 8, 128, 1, expected=327_680)


def _pool(order):
    def pool(w, n_heads, n_groups):
        d = w.shape[0] // n_heads
        per = n_heads // n_groups
        rest = w.shape[1:]
        if order == "strided":
            return w.reshape(per, n_groups, d, *rest).mean(0).reshape(n_groups * d, *rest)
        if order == "within_head":
            return w.reshape(n_groups, d, per, *rest).mean(2).reshape(n_groups * d, *rest)
        if order == "sum":
            return w.reshape(n_groups, per, d, *rest).sum(1).reshape(n_groups * d, *rest)
        if order == "first":
            return w.reshape(n_groups, per, d, *rest)[:, 0].reshape(n_groups * d, *rest)
        if order == "columns":
            return w.T.reshape(n_groups, per, -1, w.shape[0]).mean(1).reshape(-1, w.shape[0]).T
        raise AssertionError(order)
    return pool


@pytest.mark.parametrize("order, message", [
    ("strided", "pooled heads with a stride"),
    ("within_head", "averaged neighbouring rows \\*inside\\* a head"),
    ("sum", "summed the heads"),
    ("first", "kept the first head"),
    ("columns", "pooled over the wrong axis: the columns"),
])
def test_mean_pool_diagnoses(order, message):
    w = torch.randn(8 * 4, 32, generator=torch.Generator().manual_seed(6))
    with pytest.raises(CheckFailed, match=message):
        C.check_mean_pool(_pool(order), w, 8, 2)


def test_mean_pool_reference_passes():
    C.check_mean_pool(G.mean_pool_kv_heads, torch.randn(8 * 4, 32), 8, 2)


def _decode_before_append(q_t, k_t, v_t, ck, cv):
    out = _gqa_with(q_t, ck, cv, repeat=_good_repeat)
    return out, torch.cat([ck, k_t], 2), torch.cat([cv, v_t], 2)


def _decode_only_new(q_t, k_t, v_t, ck, cv):
    return _gqa_with(q_t, k_t, v_t, repeat=_good_repeat), torch.cat([ck, k_t], 2), torch.cat([cv, v_t], 2)


def _decode_not_appended(q_t, k_t, v_t, ck, cv):
    return _gqa_with(q_t, torch.cat([ck, k_t], 2), torch.cat([cv, v_t], 2), repeat=_good_repeat), ck, cv


def _decode_prepended(q_t, k_t, v_t, ck, cv):
    ck, cv = torch.cat([k_t, ck], 2), torch.cat([v_t, cv], 2)
    return _gqa_with(q_t, ck, cv, repeat=_good_repeat), ck, cv


def _step_inputs():
    q, k, v = _inputs(t=1, s=1, h=4, h_kv=2, seed=3)
    _, ck, cv = _inputs(t=1, s=5, h=4, h_kv=2, seed=4)
    return q, k, v, ck, cv


@pytest.mark.parametrize("wrong, message", [
    (_decode_before_append, "off by one"),
    (_decode_only_new, "the cache was ignored"),
    (_decode_not_appended, "was not appended"),
    (_decode_prepended, "was prepended"),
])
def test_decode_step_diagnoses(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        C.check_decode_step(wrong, *_step_inputs())


def test_decode_sequence_off_by_one_is_diagnosed():
    with pytest.raises(CheckFailed, match="off by one"):
        C.check_decode_matches_full(_decode_before_append, *_inputs(t=6, s=6, h=4, h_kv=2))


def test_decode_reference_passes_both_checks():
    C.check_decode_step(KV.decode_step, *_step_inputs())
    C.check_decode_matches_full(KV.decode_step, *_inputs(t=6, s=6, h=4, h_kv=2))


def test_unfinished_function_reports_not_attempted():
    def stub(*args):
        raise NotImplementedError()
    with pytest.raises(NotAttempted, match="not attempted"):
        C.check_gqa(stub, *_inputs())
    with pytest.raises(NotAttempted, match="not attempted"):
        C.check_kv_cache_bytes(stub, 1, 1, 1, 1)


def test_reread_and_hints_cover_every_graded_function():
    graded = {"repeat_kv", "grouped_query_attention", "kv_cache_bytes", "mean_pool_kv_heads", "decode_step"}
    assert set(C.REREAD) == graded and set(C.HINTS) == graded
    assert all(2 <= len(h) <= 3 for h in C.HINTS.values())


def test_reread_headings_exist_on_the_page():
    from pathlib import Path
    page = (Path(__file__).resolve().parent.parent / "book" / "chapters" / "mqa_gqa.md").read_text()
    headings = {line[3:].strip() for line in page.splitlines() if line.startswith("## ")}
    assert set(C.REREAD.values()) <= headings


def test_decode_time_table_rejects_kv_heads_that_do_not_divide():
    with pytest.raises(ValueError, match="must divide n_heads = 16"):
        KV.decode_time_table(16, [16, 3], 8, [8])


def test_benchmark_script_prints_ratios(capsys):
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "decode_kv_heads.py"
    spec = importlib.util.spec_from_file_location("decode_kv_heads", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--heads", "8", "--d-head", "8", "--contexts", "16", "32", "--repeats", "2", "--layers", "2"])
    out = capsys.readouterr().out
    assert "machine:" in out and "GQA-2/MHA" in out and "MQA/MHA" in out
    assert "0.250" in out and "0.125" in out  # cache-byte ratios 2/8 and 1/8
