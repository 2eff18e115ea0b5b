"""Checks for the MQA/GQA exercise: repeat_kv, grouped-query attention, KV-cache size,
MHA→GQA mean-pooling and one cached decoding step.

Oracles are independent of learner code and of qkv's demo code:
``torch.repeat_interleave``, ``F.scaled_dot_product_attention(..., enable_gqa=True)``
(and plain MHA on explicitly interleaved heads), known KV-cache sizes of published
configurations, an explicit loop over head groups, and full causal attention over
the whole sequence for the cache. Oracles run in float64 and are cast to the input dtype.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from qkv.checks import sections
from qkv.checks.core import PATTERN, CheckFailed, Diagnosis, call_learner, expect_close, expect_pair, fail
from qkv.checks.graded import check_of
from qkv.checks.patterns import number_mismatch
from qkv.checks.properties import logit_scale, masked_keys_get_zero, recover_weights, rows_sum_to_one, scale_diagnosis
from qkv.checks.registry import Diag, Property, declare

# ----------------------------------------------------------------------------- oracles


def oracle_repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    return torch.repeat_interleave(x, n_rep, dim=1)


def oracle_gqa(q, k, v, mask=None) -> torch.Tensor:
    """torch's fused attention with grouped KV heads, in float64."""
    attn_mask = None if mask is None else mask.bool()
    out = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=attn_mask, enable_gqa=True)
    return out.to(q.dtype)


def oracle_mean_pool(w_kv: torch.Tensor, n_heads: int, n_groups: int) -> torch.Tensor:
    """Group g = mean of the row blocks of heads g·G … g·G + G − 1, by an explicit loop."""
    d_head = w_kv.shape[0] // n_heads
    per_group = n_heads // n_groups
    w64 = w_kv.double()
    blocks = []
    for g in range(n_groups):
        heads = [w64[h * d_head:(h + 1) * d_head] for h in range(g * per_group, (g + 1) * per_group)]
        blocks.append(torch.stack(heads).mean(dim=0))
    return torch.cat(blocks).to(w_kv.dtype)


def known_kv_cache_bytes(n_layers, n_kv_heads, d_head, seq_len, batch=1, bytes_per_element=2):
    """2 (K and V) · layers · KV heads · d_head · tokens · batch · bytes per element."""
    return 2 * n_layers * n_kv_heads * d_head * seq_len * batch * bytes_per_element


# Published configurations (layers, KV heads, d_head) and their float16 KV-cache bytes per token,
# written out by hand: 2 · 80 · 8 · 128 · 2 = 327,680 for the 70B-class GQA-8 model.
KNOWN_BYTES_PER_TOKEN = [
    ("Llama-2-70B-like, GQA-8, float16", (80, 8, 128), 2, 327_680),
    ("Llama-2-7B-like, MHA-32, float16", (32, 32, 128), 2, 524_288),
    ("70B-class as MHA (64 KV heads), float16", (80, 64, 128), 2, 2_621_440),
    ("70B-class as MQA (1 KV head), float16", (80, 1, 128), 2, 40_960),
    ("GPT-2 small (12 layers, 12 heads of 64), float32", (12, 12, 64), 4, 73_728),
]


def _masked_attention64(q, k, v, allowed):
    """Plain attention in float64 on equal head counts; rows with no allowed key give zeros."""
    logits = q.double() @ k.double().transpose(-2, -1) / math.sqrt(q.shape[-1])
    logits = logits.masked_fill(~allowed, float("-inf"))
    return torch.nan_to_num(torch.softmax(logits, dim=-1), nan=0.0) @ v.double()


# ----------------------------------------------------------------------------- misconceptions

TILE_MESSAGE = Diag("KV heads are repeated in the wrong order: you tiled them (x.repeat / torch.cat of copies gives "
                    "heads 0,1,…,0,1,…). Each KV head must serve a block of consecutive query heads: "
                    "0,0,…,1,1,… like torch.repeat_interleave along dim=1.", sections.GQA)


def _tile(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    return x.repeat(1, n_rep, 1, 1)


def gqa_diagnoses(q, k, v, mask=None) -> list[Diagnosis]:
    """Wrong variants of grouped-query attention and what each one means."""
    group = q.shape[1] // k.shape[1]
    allowed = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool) if mask is None else mask.bool()
    allowed = allowed.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    kt, vt = _tile(k, group), _tile(v, group)
    ki, vi = oracle_repeat_kv(k, group), oracle_repeat_kv(v, group)
    out = [(_masked_attention64(q, kt, vt, allowed), TILE_MESSAGE)]
    unscaled = _masked_attention64(q * math.sqrt(q.shape[-1]), ki, vi, allowed)
    out.append((unscaled, Diag("your result equals grouped attention without the 1/√d scale on the logits.",
                               sections.WHY_SQRT_DK)))
    if mask is not None:
        free = torch.ones_like(allowed)
        out.append((_masked_attention64(q, ki, vi, free),
                    Diag("the mask was ignored: masked keys still receive weight.", sections.MASK_KEYS)))
        out.append((_masked_attention64(q, ki, vi, ~allowed),
                    Diag("the mask polarity is inverted: True means 'may attend', so fill the positions where mask "
                         "is False.", sections.MASK_POLARITY)))
    return out


def mean_pool_diagnoses(w_kv: torch.Tensor, n_heads: int, n_groups: int) -> list[Diagnosis]:
    d_head = w_kv.shape[0] // n_heads
    per_group = n_heads // n_groups
    rest = w_kv.shape[1:]
    w64 = w_kv.double()
    strided = w64.reshape(per_group, n_groups, d_head, *rest).mean(0).reshape(n_groups * d_head, *rest)
    within_head = w64.reshape(n_groups, d_head, per_group, *rest).mean(2).reshape(n_groups * d_head, *rest)
    summed = w64.reshape(n_groups, per_group, d_head, *rest).sum(1).reshape(n_groups * d_head, *rest)
    first = w64.reshape(n_groups, per_group, d_head, *rest)[:, 0].reshape(n_groups * d_head, *rest)
    return [
        (strided, "you pooled heads with a stride (heads g, g + n_groups, …). A group is a block of "
                  "consecutive heads: group g holds heads g·G … g·G + G − 1 with G = n_heads // n_groups."),
        (within_head, "you pooled over the wrong axis: you averaged neighbouring rows *inside* a head "
                      "(reshape order (groups, d_head, heads)). Average the same row across the heads of a "
                      "group: reshape to (n_groups, G, d_head, …) and take the mean over the G axis."),
        (summed, "you summed the heads of each group; Ainslie et al. mean-pool them (divide by the group size)."),
        (first, "you kept the first head of each group. Ainslie et al. (2023, §2.1) found that *mean-pooling* "
                "all heads of the group works better; the exercise asks for the mean."),
    ]


# ----------------------------------------------------------------------------- checks


@check_of("repeat_kv")
def check_repeat_kv(repeat_kv, x: torch.Tensor, n_rep: int) -> None:
    """Compare ``repeat_kv(x, n_rep)`` with ``torch.repeat_interleave(x, n_rep, dim=1)``."""
    got = call_learner(repeat_kv, x, n_rep, name="repeat_kv")
    want = oracle_repeat_kv(x, n_rep)
    what = f"repeat_kv(x of shape {tuple(x.shape)}, n_rep={n_rep})"
    if isinstance(got, torch.Tensor) and got.shape != want.shape:
        b, h, s, d = x.shape
        if tuple(got.shape) == (b, h, s * n_rep, d):
            raise CheckFailed(f"{what}: you repeated along the sequence axis (dim=2); repeat the heads (dim=1).")
        if tuple(got.shape) == (b, h, n_rep, s, d):
            raise CheckFailed(f"{what}: expected shape {tuple(want.shape)}, got {tuple(got.shape)}: "
                              "merge the head and repeat axes with reshape.")
    expect_close(got, want, what=what, atol=0, rtol=0,
                 diagnoses=lambda: [(_tile(x, n_rep).double(), TILE_MESSAGE)])


@check_of("grouped_query_attention")
def check_gqa(gqa, q, k, v, mask=None) -> None:
    """Compare ``grouped_query_attention(q, k, v[, mask])`` with torch's fused attention (enable_gqa=True)."""
    args = (q, k, v) if mask is None else (q, k, v, mask)
    got = call_learner(gqa, *args, name="grouped_query_attention")
    what = f"grouped_query_attention(q{tuple(q.shape)}, k{tuple(k.shape)}, v{tuple(v.shape)}" + (
        f", mask{tuple(mask.shape)})" if mask is not None else ")")
    if isinstance(got, tuple):
        raise fail(what, "return only the output tensor (B, H, T, d), not a tuple.")
    expect_close(got, oracle_gqa(q, k, v, mask), what=what, diagnoses=lambda: gqa_diagnoses(q, k, v, mask))


@check_of("grouped_query_attention")
def check_gqa_equals_mha(gqa, q, k, v) -> None:
    """With as many KV heads as query heads, GQA is plain multi-head attention (no grouping at all)."""
    if k.shape[1] != q.shape[1]:
        raise ValueError("check_gqa_equals_mha needs H_kv == H")
    got = call_learner(gqa, q, k, v, name="grouped_query_attention")
    want = F.scaled_dot_product_attention(q.double(), k.double(), v.double()).to(q.dtype)
    expect_close(got, want, what=f"grouped_query_attention with H_kv = H = {q.shape[1]} (must equal MHA)")


@check_of("grouped_query_attention")
def check_gqa_equals_mqa(gqa, q, k, v) -> None:
    """With one KV head, every query head attends over the same keys and values (MQA)."""
    if k.shape[1] != 1:
        raise ValueError("check_gqa_equals_mqa needs H_kv == 1")
    got = call_learner(gqa, q, k, v, name="grouped_query_attention")
    # Oracle: each head separately against the single shared K, V (broadcast over the head axis).
    want = torch.cat([F.scaled_dot_product_attention(q[:, h:h + 1].double(), k.double(), v.double())
                      for h in range(q.shape[1])], dim=1).to(q.dtype)
    expect_close(got, want, what="grouped_query_attention with H_kv = 1 (must equal MQA)")


@check_of("kv_cache_bytes")
def check_kv_cache_bytes(kv_cache_bytes, n_layers, n_kv_heads, d_head, seq_len, batch=1, bytes_per_element=2,
                         expected=None) -> None:
    """Compare with the KV-cache formula (or a known ``expected`` value); diagnose a missing 2 and bits vs bytes."""
    got = call_learner(kv_cache_bytes, n_layers, n_kv_heads, d_head, seq_len, batch, bytes_per_element,
                       name="kv_cache_bytes")
    want = known_kv_cache_bytes(n_layers, n_kv_heads, d_head, seq_len, batch, bytes_per_element) \
        if expected is None else expected
    what = (f"kv_cache_bytes(n_layers={n_layers}, n_kv_heads={n_kv_heads}, d_head={d_head}, seq_len={seq_len}, "
            f"batch={batch}, bytes_per_element={bytes_per_element})")
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, numbers.Real):
        raise CheckFailed(f"{what}: expected a number of bytes (int), got {type(got).__name__}.")
    if math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9):
        return
    wrong = [
        (want / 2, "your result is half the answer: you forgot the factor 2. The cache stores a key AND a value "
                   "for every token, layer and KV head."),
        (want * 8, "your result is 8× the answer: that is bits, not bytes. bytes_per_element is already in "
                   "bytes (float16 = 2 bytes = 16 bits); do not multiply by 8."),
        (want * 4, "your result is 4× the answer: bits instead of bytes (×8) and the factor 2 for K and V "
                   "missing (÷2)."),
        (want / 16, "your result is 1/16 of the answer: you divided by 8 (bits → bytes) although "
                    "bytes_per_element is already in bytes, and forgot the factor 2 for K and V."),
        (want / 8, "your result is 1/8 of the answer: bytes_per_element is already in bytes; do not divide by 8."),
    ]
    if batch > 1:
        wrong.append((want / batch, f"your result ignores the batch: every one of the {batch} sequences "
                                    "has its own cache."))
    if bytes_per_element != 1:
        wrong.append((want / bytes_per_element, "your result counts elements, not bytes: "
                                                "multiply by bytes_per_element."))
    for value, message in wrong:
        if math.isclose(got, value, rel_tol=1e-9, abs_tol=1e-9):
            raise fail(what, Diag(message, sections.KV_BYTES))
    why = number_mismatch(got, want, {"n_layers": n_layers, "n_kv_heads": n_kv_heads, "d_head": d_head,
                                      "seq_len": seq_len, "batch": batch, "bytes_per_element": bytes_per_element})
    raise CheckFailed(f"{what}: expected {want:,} bytes, got {got:,}: {why}",
                      reason=f"the number of bytes is wrong: {why}",
                      what=what, detail=f"expected {want:,} bytes, got {got:,}: {why}", level=PATTERN)


@check_of("mean_pool_kv_heads")
def check_mean_pool(mean_pool_kv_heads, w_kv: torch.Tensor, n_heads: int, n_groups: int) -> None:
    """Compare with an explicit loop that averages the row blocks of the heads of each group."""
    got = call_learner(mean_pool_kv_heads, w_kv, n_heads, n_groups, name="mean_pool_kv_heads")
    want = oracle_mean_pool(w_kv, n_heads, n_groups)
    what = f"mean_pool_kv_heads(w_kv of shape {tuple(w_kv.shape)}, n_heads={n_heads}, n_groups={n_groups})"
    if isinstance(got, torch.Tensor) and w_kv.dim() == 2 and got.shape != want.shape:
        d_in = w_kv.shape[1]
        if d_in % n_heads == 0 and tuple(got.shape) == (w_kv.shape[0], n_groups * d_in // n_heads):
            raise CheckFailed(f"{what}: you pooled over the wrong axis: the columns (in_features, d_model). "
                              "In an nn.Linear weight (out_features, in_features) the heads are blocks of *rows*.")
    expect_close(got, want, what=what, diagnoses=lambda: mean_pool_diagnoses(w_kv, n_heads, n_groups))


def _decode_oracle(q_t, k_t, v_t, cache_k, cache_v):
    k_all, v_all = torch.cat([cache_k, k_t], dim=2), torch.cat([cache_v, v_t], dim=2)
    return oracle_gqa(q_t, k_all, v_all), k_all, v_all


def decode_diagnoses(q_t, k_t, v_t, cache_k, cache_v) -> list[Diagnosis]:
    group = q_t.shape[1] // k_t.shape[1]
    rep = lambda t: oracle_repeat_kv(t, group)  # noqa: E731
    one_row = torch.ones(1, 1, dtype=torch.bool)
    before = _masked_attention64(q_t, rep(cache_k), rep(cache_v), torch.ones(1, cache_k.shape[2], dtype=torch.bool))
    only_new = _masked_attention64(q_t, rep(k_t), rep(v_t), one_row)
    tiled = _masked_attention64(q_t, _tile(torch.cat([cache_k, k_t], 2), group),
                                _tile(torch.cat([cache_v, v_t], 2), group),
                                torch.ones(1, cache_k.shape[2] + 1, dtype=torch.bool))
    return [
        (before, Diag("off by one: you attended over the cache *before* appending the new key and value, so the new "
                      "token does not see itself. Append first, then attend (the last row of a causal mask includes "
                      "the diagonal).", sections.KV_CACHE)),
        (only_new, Diag("the cache was ignored: the new query attended only to its own key and value. It must attend "
                        "over every cached token plus itself.", sections.KV_CACHE)),
        (tiled, TILE_MESSAGE),
    ]


@check_of("decode_step")
def check_decode_step(decode_step, q_t, k_t, v_t, cache_k, cache_v) -> None:
    """One step: the output equals attention over cache + new token; the caches grow by one, in order."""
    result = call_learner(decode_step, q_t, k_t, v_t, cache_k, cache_v, name="decode_step")
    out, new_k, new_v = expect_pair(result, what="decode_step", names=("output", "cache_k", "cache_v"))
    want_out, want_k, want_v = _decode_oracle(q_t, k_t, v_t, cache_k, cache_v)
    s = cache_k.shape[2]
    what = f"decode_step(q_t{tuple(q_t.shape)}, k_t{tuple(k_t.shape)}, cache of length {s})"
    for name, got, want, new in (("cache_k", new_k, want_k, k_t), ("cache_v", new_v, want_v, v_t)):
        if isinstance(got, torch.Tensor) and got.shape == (cache_k.shape if name == "cache_k" else cache_v.shape) \
                and got.shape != want.shape:
            raise CheckFailed(f"{what}: the returned {name} still has length {s}: the new token was not appended. "
                              f"Return the cache with the new key/value concatenated along the sequence axis (dim=2).")
        if isinstance(got, torch.Tensor) and got.shape == want.shape and s > 0 and torch.equal(
                got, torch.cat([new, cache_k if name == "cache_k" else cache_v], dim=2)):
            raise CheckFailed(f"{what}: the new {name[-1]} was prepended; append it at the end (position {s}), "
                              "after the cached tokens.")
        expect_close(got, want, what=f"{what}: returned {name}", atol=0, rtol=0)
    expect_close(out, want_out, what=f"{what}: output",
                 diagnoses=lambda: decode_diagnoses(q_t, k_t, v_t, cache_k, cache_v))


@check_of("decode_step")
def check_decode_matches_full(decode_step, q, k, v) -> None:
    """Decode T tokens one by one from an empty cache; outputs must equal full causal attention."""
    b, n_heads, t, d = q.shape
    cache_k = k.new_zeros(b, k.shape[1], 0, d)
    cache_v = v.new_zeros(b, v.shape[1], 0, d)
    outs = []
    for i in range(t):
        result = call_learner(decode_step, q[:, :, i:i + 1], k[:, :, i:i + 1], v[:, :, i:i + 1], cache_k, cache_v,
                              name="decode_step")
        out, cache_k, cache_v = expect_pair(result, what=f"decode_step at step {i}",
                                            names=("output", "cache_k", "cache_v"))
        if not isinstance(out, torch.Tensor) or out.shape != (b, n_heads, 1, d):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise CheckFailed(f"decode_step at step {i}: expected output of shape {(b, n_heads, 1, d)}, got {shape}.")
        if not isinstance(cache_k, torch.Tensor) or cache_k.shape[2] != i + 1:
            got = cache_k.shape[2] if isinstance(cache_k, torch.Tensor) else type(cache_k).__name__
            raise CheckFailed(f"decode_step at step {i}: the returned cache should hold {i + 1} tokens, "
                              f"it holds {got}: append the new key and value to the cache.")
        outs.append(out)
    got = torch.cat(outs, dim=2)
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    want = oracle_gqa(q, k, v, causal)
    group = n_heads // k.shape[1]

    def diagnoses():
        strict = torch.ones(t, t, dtype=torch.bool).tril(-1)
        ki, vi = oracle_repeat_kv(k, group), oracle_repeat_kv(v, group)
        return [(_masked_attention64(q, ki, vi, strict),
                 "off by one: each token attended to the earlier tokens but not to itself (you attended before "
                 "appending to the cache)."),
                (_masked_attention64(q, ki, vi, torch.eye(t, dtype=torch.bool)),
                 "the cache was ignored: each token attended only to itself.")]

    expect_close(got, want, what=f"{t} cached decoding steps vs full causal attention over the sequence",
                 diagnoses=diagnoses)


# ----------------------------------------------------------------------------- properties


def _weights_findings(weights, q, k_all, mask) -> str | None:
    """Rows sum to 1, masked keys get 0, softmax of q kᵀ/√d with each query head paired with its KV head."""
    group = q.shape[1] // k_all.shape[1]
    keep = None if mask is None else mask.bool().expand(weights.shape)
    found = rows_sum_to_one(weights, keep) or (masked_keys_get_zero(weights, keep) if keep is not None else None)
    if found:
        return found
    raw = q.double() @ oracle_repeat_kv(k_all.double(), group).transpose(-2, -1)
    s = logit_scale(weights, raw, keep)
    if s is None and group > 1 \
            and logit_scale(weights, q.double() @ _tile(k_all.double(), group).transpose(-2, -1), keep):
        return TILE_MESSAGE
    return scale_diagnosis(s, q.shape[-1], {"d": q.shape[-1], "S": k_all.shape[-2], "T": q.shape[-2],
                                            "H": q.shape[1]})


def _gqa_properties(p) -> str | None:
    """The attention weights, recovered by attending over one-hot values, are a proper softmax."""
    q, k, mask = p.get("q"), p.get("k"), p.get("mask")
    weights = recover_weights(lambda eye: p.call(q, k, eye) if mask is None else p.call(q, k, eye, mask),
                              k.shape[-2], k)
    if weights is None or tuple(weights.shape) != (*q.shape[:-1], k.shape[-2]):
        return None
    return _weights_findings(weights, q, k, mask)


def _decode_properties(p) -> str | None:
    """The new token attends over every cached token and itself, with a proper softmax."""
    q_t, k_t, cache_k, cache_v = p.get("q_t"), p.get("k_t"), p.get("cache_k"), p.get("cache_v")
    if q_t is None or cache_k is None:
        return None
    s = cache_k.shape[2]
    eye = torch.eye(s + 1, dtype=q_t.dtype).expand(*cache_v.shape[:2], s + 1, s + 1)
    result = p.call(q_t, k_t, eye[:, :, s:].contiguous(), cache_k, eye[:, :, :s].contiguous())
    if not (isinstance(result, tuple) and len(result) == 3 and isinstance(result[0], torch.Tensor)):
        return None
    weights = result[0].double()
    if tuple(weights.shape) != (*q_t.shape[:-1], s + 1):
        return None
    if s > 0 and torch.allclose(weights[..., s], torch.zeros_like(weights[..., s])):
        return Diag("the new token got no weight on itself: its key and value must be appended to the cache *before* "
                    "attending, so that it attends over the cached tokens and itself.", sections.KV_CACHE)
    if s > 0 and torch.allclose(weights[..., :s], torch.zeros_like(weights[..., :s])):
        return Diag("the cached tokens got no weight: the new query must attend over every cached token plus "
                    "itself (attend over the grown cache, without a causal mask).", sections.KV_CACHE)
    return _weights_findings(weights, q_t, torch.cat([cache_k, k_t], dim=2), None)


def _kv_bytes_properties(p) -> str | None:
    """The size is proportional to each of layers, KV heads, d_head, tokens, batch and bytes per element."""
    names = ("n_layers", "n_kv_heads", "d_head", "seq_len", "batch", "bytes_per_element")
    args = [p.get(n) for n in names]
    if any(a is None for a in args):
        return None
    args = [a if a else 1 for a in args]
    base = p.call(*args)
    if isinstance(base, torch.Tensor):
        base = base.item()
    ignored = []
    for i, n in enumerate(names):
        doubled = list(args)
        doubled[i] = args[i] * 2
        got = p.call(*doubled)
        got = got.item() if isinstance(got, torch.Tensor) else got
        if isinstance(got, (int, float)) and isinstance(base, (int, float)) and base \
                and not math.isclose(got, 2 * base):
            ignored.append(f"`{n}`" + (" is ignored" if math.isclose(got, base) else f" scales it by {got / base:.3g}"))
    if ignored:
        return Diag("the cache size is proportional to each argument (doubling any of them doubles the bytes), but "
                    f"in yours {', '.join(ignored)}.", sections.KV_BYTES)
    return None


def _mean_pool_properties(p) -> str | None:
    """With one group per head nothing changes; with one group every head is averaged."""
    w, n_heads = p.get("w_kv"), p.get("n_heads")
    if w is None or not n_heads:
        return None
    same = p.call(w, n_heads, n_heads)
    if isinstance(same, torch.Tensor) and same.shape == w.shape \
            and not torch.allclose(same.double(), w.double(), atol=1e-5):
        return Diag("with n_groups = n_heads every head is its own group, so the weight must come back unchanged; "
                    "yours changes it (rows of different heads are mixed: group g holds heads g·G … g·G + G − 1, a "
                    "block of consecutive rows).", sections.MEAN_POOL)
    return None


def _repeat_self_check(fn) -> None:
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    check_repeat_kv(fn, x, 2)
    check_repeat_kv(fn, x, 1)


def _gqa_self_check(fn) -> None:
    q, k, v = random_gqa_inputs(2, 8, 2, 5, 5, 16, seed=0)
    check_gqa(fn, q, k, v)
    check_gqa(fn, q, k, v, torch.ones(5, 5, dtype=torch.bool).tril())


declare("repeat_kv", chapter="mqa_gqa", args=("x", "n_rep"), self_check=_repeat_self_check)
declare("grouped_query_attention", chapter="mqa_gqa", args=("q", "k", "v", "mask"), helpers=("repeat_kv",),
        self_check=_gqa_self_check,
        properties=(Property("the weights (attending over one-hot values) are a masked softmax of q kᵀ/√d with the "
                             "right KV head per query head", _gqa_properties),))
declare("kv_cache_bytes", chapter="mqa_gqa",
        args=("n_layers", "n_kv_heads", "d_head", "seq_len", "batch", "bytes_per_element"),
        properties=(Property("proportional to every argument", _kv_bytes_properties),))
declare("mean_pool_kv_heads", chapter="mqa_gqa", args=("w_kv", "n_heads", "n_groups"),
        properties=(Property("n_groups = n_heads leaves the weight unchanged", _mean_pool_properties),))
declare("decode_step", chapter="mqa_gqa", args=("q_t", "k_t", "v_t", "cache_k", "cache_v"),
        helpers=("grouped_query_attention",),
        properties=(Property("the new token attends over the cache and itself with a proper softmax",
                             _decode_properties),))


def random_gqa_inputs(batch: int, n_heads: int, n_kv_heads: int, t: int, s: int, d: int, *,
                      dtype=torch.float32, seed: int = 0):
    """(q, k, v) with a fixed seed: q (batch, n_heads, t, d), k and v (batch, n_kv_heads, s, d)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, n_heads, t, d, generator=gen, dtype=torch.float64)
    k = torch.randn(batch, n_kv_heads, s, d, generator=gen, dtype=torch.float64)
    v = torch.randn(batch, n_kv_heads, s, d, generator=gen, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype)


# ----------------------------------------------------------------------------- learner guidance

# Graded function (or "*" for all) -> calls an answer must not use (autograder.banned reads this).
# torch.softmax stays allowed: the softmax was chapter 1's exercise.
BANNED = {
    "*": ["torch.repeat_interleave", "torch.Tensor.repeat_interleave",
          "torch.nn.functional.scaled_dot_product_attention", "torch.nn.MultiheadAttention",
          "torch.nn.functional.multi_head_attention_forward"],
}

REREAD = {
    "repeat_kv": "What are MQA and GQA?",
    "grouped_query_attention": "What are MQA and GQA?",
    "kv_cache_bytes": "How big is the KV cache?",
    "mean_pool_kv_heads": "How does an MHA checkpoint become GQA?",
    "decode_step": "What does the KV cache store, and does caching change the result?",
}

HINTS = {
    "repeat_kv": [
        "Query heads are numbered so that a group is a block of consecutive heads: KV head 0 serves query "
        "heads 0 … n_rep − 1, KV head 1 the next n_rep, and so on.",
        "Insert a new axis right after the head axis, expand it to n_rep (no copy yet), then merge it with "
        "the head axis by reshaping.",
        "Tiling the whole head axis n_rep times gives the order 0, 1, 2, 0, 1, 2: that pairs query heads "
        "with the wrong KV heads. The order you need is 0, 0, 1, 1, 2, 2.",
    ],
    "grouped_query_attention": [
        "The group size is the number of query heads divided by the number of KV heads. Once each KV head "
        "is repeated for its group, the rest is ordinary scaled dot-product attention per head.",
        "Reuse your repeat_kv from Part 1 on k and v, then compute scores q kᵀ / √d of shape (B, H, T, S).",
        "Fill the scores with -inf where the mask is False before the softmax over the last axis, then "
        "multiply by the values. Return only the output tensor.",
    ],
    "kv_cache_bytes": [
        "Count what the cache holds for one token in one layer: for each KV head, one key vector and one "
        "value vector of d_head numbers each.",
        "Multiply by the number of layers, tokens and sequences, then by the bytes per element.",
        "bytes_per_element is already in bytes (float16 is 2); there is no factor 8 anywhere, and the "
        "number of query heads does not matter.",
    ],
    "mean_pool_kv_heads": [
        "In an nn.Linear weight (out_features, in_features) head h owns a block of d_head consecutive rows; "
        "the columns (the model width) are untouched by the conversion.",
        "Reshape the rows to (n_groups, heads per group, d_head, …): then the heads of one group sit "
        "along one axis.",
        "Average over the heads-per-group axis (a mean, not a sum, not the first head) and reshape back "
        "to (n_groups · d_head, …).",
    ],
    "decode_step": [
        "The new token's key and value belong to the cache too: the new token must be able to attend to itself.",
        "Concatenate the new key and value after the cached ones along the sequence axis, then attend with "
        "the new query over the whole, longer cache.",
        "No mask is needed: the cache holds only earlier tokens and the new one. Return the output and both "
        "grown caches; your grouped_query_attention does the attention.",
    ],
}
