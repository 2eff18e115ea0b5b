"""Checks for the attention exercise: softmax, scaled dot-product attention, additive attention.

Oracles are independent of any learner code and of qkv's own demo code:
``torch.softmax``, ``torch.nn.functional.scaled_dot_product_attention`` (its
weights are recovered by attending over an identity matrix of values) and an
explicit double loop for additive attention. Oracles run in float64 and are cast
to the input dtype, so low-precision inputs are compared with a precise answer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from qkv.checks import sections
from qkv.checks.core import Diagnosis, call_learner, expect_close, expect_pair, fail
from qkv.checks.graded import check_of
from qkv.checks.properties import (
    logit_scale,
    masked_keys_get_zero,
    output_is_weights_times_values,
    rows_sum_to_one,
    scale_diagnosis,
    weights_depend_on_query,
)
from qkv.checks.registry import CrashHint, Diag, Property, declare

# ----------------------------------------------------------------------------- oracles


def oracle_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return torch.softmax(x.double(), dim=dim).to(x.dtype)


def oracle_sdpa(q, k, v, mask=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, weights) from torch's fused attention; fully masked rows give zeros."""
    q64, k64, v64 = q.double(), k.double(), v.double()
    bool_mask = None if mask is None else mask.bool()
    out = F.scaled_dot_product_attention(q64, k64, v64, attn_mask=bool_mask)
    eye = torch.eye(k.shape[-2], dtype=torch.float64).expand(*k.shape[:-1], k.shape[-2])
    weights = F.scaled_dot_product_attention(q64, k64, eye, attn_mask=bool_mask)
    if bool_mask is not None:  # pin the fully-masked-row contract explicitly: zeros, never NaN
        dead = ~bool_mask.expand(weights.shape).any(dim=-1, keepdim=True)
        weights = weights.masked_fill(dead, 0.0)
        out = out.masked_fill(dead, 0.0)
    return out.to(q.dtype), weights.to(q.dtype)


def oracle_additive(q, k, v, w_q, w_k, w_v, mask=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Additive attention by an explicit loop over (i, j) pairs, in float64."""
    q64, k64, v64 = q.double(), k.double(), v.double()
    wq, wk, wv = w_q.double(), w_k.double(), w_v.double()
    # Not torch.broadcast_shapes: its first call imports torch.fx and sympy (seconds).
    batch = torch.broadcast_tensors(q[..., :1, :1], k[..., :1, :1])[0].shape[:-2]
    qb = q64.expand(*batch, *q.shape[-2:]).reshape(-1, *q.shape[-2:])
    kb = k64.expand(*batch, *k.shape[-2:]).reshape(-1, *k.shape[-2:])
    logits = torch.empty(qb.shape[0], q.shape[-2], k.shape[-2], dtype=torch.float64)
    for b in range(qb.shape[0]):
        for i in range(q.shape[-2]):
            for j in range(k.shape[-2]):
                logits[b, i, j] = torch.dot(wv, torch.tanh(qb[b, i] @ wq + kb[b, j] @ wk))
    logits = logits.reshape(*batch, q.shape[-2], k.shape[-2])
    weights = _masked_softmax64(logits, mask)
    return (weights @ v64).to(q.dtype), weights.to(q.dtype)


def _masked_softmax64(logits, mask):
    if mask is None:
        return torch.softmax(logits, dim=-1)
    keep = mask.bool().expand(logits.shape)
    w = torch.softmax(logits.masked_fill(~keep, float("-inf")), dim=-1)
    return torch.nan_to_num(w, nan=0.0)


# ----------------------------------------------------------------------------- misconceptions


def _variant(q, k, v, mask=None, *, scale=True, axis=-1, transpose_k=True, mask_mode="before"):
    """Attention computed with one deliberate mistake, for diagnosis."""
    q64, k64, v64 = q.double(), k.double(), v.double()
    kt = k64.transpose(-2, -1) if transpose_k else k64
    if kt.shape[-2] != q64.shape[-1]:
        return None
    logits = q64 @ kt
    if scale is True:
        logits = logits / math.sqrt(q.shape[-1])
    elif scale == "d_k":
        logits = logits / q.shape[-1]
    if mask is not None and mask_mode == "before":
        logits = logits.masked_fill(~mask.bool(), float("-inf"))
    elif mask is not None and mask_mode == "inverted":
        logits = logits.masked_fill(mask.bool(), float("-inf"))
    weights = torch.softmax(logits, dim=axis)
    if mask is not None and mask_mode == "after":
        weights = weights * mask.bool()
    if weights.shape[-1] != v64.shape[-2]:
        return None
    return weights @ v64, weights


POLARITY = Diag("the mask polarity is inverted: True means 'may attend', so fill the positions where mask is False.",
                sections.MASK_POLARITY)
AFTER_SOFTMAX = Diag("the mask was applied after the softmax: masked weights were zeroed but the rest no longer sum "
                     "to 1. Fill masked logits with -inf before the softmax.", sections.MINUS_INF)
MASK_IGNORED = Diag("the mask was ignored: masked keys still receive weight.", sections.MASK_KEYS)
FULL_ROW_NAN = Diag("a fully masked row gave NaN (softmax of all -inf). Give such rows zero weights and a zero output.",
                    sections.MINUS_INF)
OVERFLOW = Diag("NaN for large logits: exp overflowed. Subtract the maximum along `dim` before exp "
                "(softmax(x) = softmax(x - max x)).", sections.STABLE_SOFTMAX)


def sdpa_diagnoses(q, k, v, mask=None) -> list[tuple[str, tuple | None]]:
    """Named wrong variants of attention: (message, (output, weights) or None)."""
    d = q.shape[-1]
    cases = [
        (Diag("your result equals attention without the 1/√d_k scale "
              f"(divide the logits by √d_k = {math.sqrt(d):.3g}).", sections.WHY_SQRT_DK),
         _variant(q, k, v, mask, scale=False)),
        (Diag(f"your result equals attention with the logits divided by d_k = {d}; divide by √d_k instead "
              "(√d_k is the standard deviation of q·k; dividing by d_k overshoots).", sections.DERIVE_VARIANCE),
         _variant(q, k, v, mask, scale="d_k")),
        (Diag("softmax was taken over the query axis (dim=-2); "
              "each query's weights must sum to 1 over the keys (dim=-1).", sections.ATTENTION_STEPS),
         _variant(q, k, v, mask, axis=-2)),
        (Diag("k was not transposed: the scores must be q @ kᵀ (k.transpose(-2, -1)), one score per (query, key) pair.",
              sections.ATTENTION_STEPS),
         _variant(q, k, v, mask, transpose_k=False)),
    ]
    if mask is not None:
        cases += [
            (POLARITY, _variant(q, k, v, mask, mask_mode="inverted")),
            (AFTER_SOFTMAX, _variant(q, k, v, mask, mask_mode="after")),
            (MASK_IGNORED, _variant(q, k, v, None)),
        ]
    return cases


def _pick(cases, index) -> list[Diagnosis]:
    return [(res[index].to(torch.float64), msg) for msg, res in cases if res is not None]


# ----------------------------------------------------------------------------- checks


@check_of("softmax")
def check_softmax(softmax, x: torch.Tensor, dim: int = -1) -> None:
    """Compare ``softmax(x, dim)`` with torch.softmax; diagnose overflow and wrong axis."""
    got = call_learner(softmax, x, dim, name="softmax")

    def diagnoses():
        out = []
        if torch.isfinite(x).all() and x.abs().max() > 80:
            out.append((torch.full_like(x, float("nan"), dtype=torch.float64), OVERFLOW))
        for other in range(x.dim()):
            if other % x.dim() != dim % x.dim():
                out.append((torch.softmax(x.double(), dim=other),
                            Diag(f"softmax was taken over dim={other}; it must normalize over dim={dim}.",
                                 sections.STABLE_SOFTMAX)))
        out.append((x.double().exp() / x.double().exp().sum(),
                    "you normalized by the sum over *all* elements; normalize along `dim` (keepdim=True)."))
        return out

    what = f"softmax(x of shape {tuple(x.shape)}, dim={dim})"
    if isinstance(got, torch.Tensor) and torch.isnan(got).any() and torch.isfinite(x).all() \
            and not torch.isnan(oracle_softmax(x, dim)).any() and x.abs().max() > 80:
        raise fail(what, OVERFLOW)
    expect_close(got, oracle_softmax(x, dim), what=what, diagnoses=diagnoses)


@check_of("softmax")
def check_softmax_known_values(softmax) -> None:
    """softmax([1, 2, 3]) = [0.0900, 0.2447, 0.6652]: e^i / (e + e² + e³)."""
    x = torch.tensor([1.0, 2.0, 3.0])
    expected = torch.tensor([0.09003057, 0.24472847, 0.66524096])
    expect_close(call_learner(softmax, x, -1, name="softmax"), expected, what="softmax([1, 2, 3])", atol=1e-6)


def _softmax_self_check(softmax) -> None:
    """The quick check run when softmax is a helper of a failing function."""
    check_softmax_known_values(softmax)
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    check_softmax(softmax, x, dim=-1)
    check_softmax(softmax, x, dim=0)
    check_softmax(softmax, x + 1000, dim=-1)
    check_softmax(softmax, torch.tensor([[0.0, float("-inf"), 1.0], [2.0, 2.0, float("-inf")]]), dim=-1)


@check_of("scaled_dot_product_attention")
def check_sdpa(sdpa, q, k, v, mask=None) -> None:
    """Compare ``sdpa(q, k, v, mask)`` with torch's fused attention; diagnose the classic mistakes."""
    args = (q, k, v) if mask is None else (q, k, v, mask)
    result = call_learner(sdpa, *args, name="scaled_dot_product_attention")
    want_out, want_w = oracle_sdpa(q, k, v, mask)
    what = f"scaled_dot_product_attention(q{tuple(q.shape)}, k{tuple(k.shape)}, v{tuple(v.shape)}" + (
        f", mask{tuple(mask.shape)})" if mask is not None else ")")
    out, weights = expect_pair(result, what="scaled_dot_product_attention", shapes=(want_out.shape, want_w.shape))
    cases = None

    def diag(index):
        nonlocal cases
        cases = cases if cases is not None else sdpa_diagnoses(q, k, v, mask)
        return _pick(cases, index)

    _check_fully_masked_rows(weights, mask, want_w.shape, what)
    expect_close(weights, want_w, what=f"{what}: weights", diagnoses=lambda: diag(1))
    expect_close(out, want_out, what=f"{what}: output", diagnoses=lambda: diag(0))


def _check_fully_masked_rows(weights, mask, shape, what: str) -> None:
    """Name the NaN-for-fully-masked-rows mistake before any other diagnosis."""
    if mask is None or not isinstance(weights, torch.Tensor) or weights.shape != shape:
        return
    dead = ~mask.bool().expand(shape).any(dim=-1)  # (..., T_q): queries with no allowed key
    if dead.any() and torch.isnan(weights[dead]).any():
        raise fail(what, FULL_ROW_NAN)


@check_of("additive_attention")
def check_additive_attention(additive, q, k, v, w_q, w_k, w_v, mask=None) -> None:
    """Compare ``additive_attention`` with an explicit double loop over (query, key) pairs."""
    args = (q, k, v, w_q, w_k, w_v) if mask is None else (q, k, v, w_q, w_k, w_v, mask)
    result = call_learner(additive, *args, name="additive_attention")
    want_out, want_w = oracle_additive(q, k, v, w_q, w_k, w_v, mask)
    out, weights = expect_pair(result, what="additive_attention", shapes=(want_out.shape, want_w.shape))

    def diagnoses():
        # Common slip: a dot-product score instead of w_v · tanh(...).
        dot = _variant(q @ w_q, k @ w_k, v, mask, scale=False)
        scaled = _variant(q @ w_q, k @ w_k, v, mask)
        return [(d[1], Diag("your weights match dot-product attention of the projected q and k; additive attention "
                            "scores each pair with w_v · tanh(q_i W_q + k_j W_k).", sections.ADDITIVE))
                for d in (dot, scaled) if d is not None]

    what = f"additive_attention(q{tuple(q.shape)}, k{tuple(k.shape)}, ...)"
    _check_fully_masked_rows(weights, mask, want_w.shape, what)
    expect_close(weights, want_w, what=f"{what}: weights", diagnoses=diagnoses)
    expect_close(out, want_out, what=f"{what}: output")


# ----------------------------------------------------------------------------- properties


def _softmax_properties(p) -> str | None:
    """Sums to 1 along dim, keeps the order of the logits, ignores a constant added along dim
    (and does not overflow for it): the first one broken, in that order of specificity."""
    x, dim = p.get("x"), p.get("dim", -1)
    if x is None or not torch.isfinite(x).all():
        return None
    got = p.call(x, dim)
    if not isinstance(got, torch.Tensor) or got.shape != x.shape:
        return None
    g = got.double()
    sums = g.sum(dim, keepdim=True)
    if torch.isfinite(sums).all() and not torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
        shown = ", ".join(f"{v:.4g}" for v in sums.flatten()[:3].tolist())
        return Diag(f"softmax(x, dim={dim}) must sum to 1 along dim={dim}; yours sums to {shown}: divide the "
                    "exponentials by their sum along the same dim (keepdim=True).", sections.STABLE_SOFTMAX)
    if (g < -1e-12).any():
        return Diag("your softmax has negative entries: probabilities are exponentials divided by their sum, "
                    "never negative.", sections.STABLE_SOFTMAX)
    order = x.double().argsort(dim)
    steps = g.gather(dim, order).diff(dim=dim)
    if (steps < -1e-9).any() and (steps <= 1e-9).all():
        return Diag("your softmax gives the *largest* logits the *smallest* probabilities: the exponent's sign is "
                    "flipped (exp(-x), or max − x instead of x − max).", sections.STABLE_SOFTMAX)
    # softmax(x + c) = softmax(x) for c constant along dim; give each slice its own large c.
    offsets = torch.zeros(x.shape, dtype=torch.float64)
    other = [d for d in range(x.dim()) if d != dim % x.dim()]
    if other:
        ramp = (torch.arange(math.prod(x.shape[d] for d in other), dtype=torch.float64) * 60.0)
        offsets = ramp.reshape([x.shape[d] for d in other]).unsqueeze(dim % x.dim()).expand(x.shape)
    shifted = (x.double() + offsets + 200.0).to(x.dtype)
    moved = p.call(shifted, dim)
    if not isinstance(moved, torch.Tensor) or moved.shape != x.shape:
        return None
    if torch.allclose(moved.double(), oracle_softmax(shifted, dim).double(), atol=1e-2):
        return None
    if torch.isnan(moved).any():
        return Diag("adding large constants to the logits (a different one for each slice) made your softmax NaN: "
                    "subtract each slice's own maximum along `dim` (x.amax(dim, keepdim=True)), not one maximum "
                    "of the whole tensor, and not nothing.", sections.STABLE_SOFTMAX)
    return Diag("adding the same constant to every entry along `dim` must not change a softmax, but yours changed: "
                "the formula is not exp(x_i) / Σ_j exp(x_j) along dim.", sections.STABLE_SOFTMAX)


def _attention_weight_properties(p, weights, out, q, k, v, mask, want_w) -> str | None:
    keep = None if mask is None else mask.bool()
    found = rows_sum_to_one(weights, keep)
    if found:
        return found
    if mask is not None:
        found = masked_keys_get_zero(weights, mask)
        if found:
            return found
    raw = q.double() @ k.double().transpose(-2, -1)
    found = scale_diagnosis(logit_scale(weights, raw, keep), q.shape[-1],
                            {"d_k": q.shape[-1], "d_v": v.shape[-1], "T_k": k.shape[-2], "T_q": q.shape[-2]})
    if found:
        return found
    if out is not None:
        return output_is_weights_times_values(out, weights, v)
    return None


def _sdpa_weights(p) -> str | None:
    q, k, v, mask = p.get("q"), p.get("k"), p.get("v"), p.get("mask")
    result = p.call(q, k, v) if mask is None else p.call(q, k, v, mask)
    if not (isinstance(result, tuple) and len(result) == 2):
        return None
    out, weights = result
    want_out, want_w = oracle_sdpa(q, k, v, mask)
    if not isinstance(weights, torch.Tensor) or weights.shape != want_w.shape:
        return None
    return _attention_weight_properties(p, weights, out, q, k, v, mask, want_w)


def _additive_weights(p) -> str | None:
    q, k, v, mask = p.get("q"), p.get("k"), p.get("v"), p.get("mask")
    w_q, w_k, w_v = p.get("w_q"), p.get("w_k"), p.get("w_v")
    args = (q, k, v, w_q, w_k, w_v) if mask is None else (q, k, v, w_q, w_k, w_v, mask)
    result = p.call(*args)
    if not (isinstance(result, tuple) and len(result) == 2):
        return None
    out, weights = result
    want_out, want_w = oracle_additive(q, k, v, w_q, w_k, w_v, mask)
    if not isinstance(weights, torch.Tensor) or weights.shape != want_w.shape:
        return None
    keep = None if mask is None else mask.bool()
    for found in (rows_sum_to_one(weights, keep), masked_keys_get_zero(weights, mask) if mask is not None else None,
                  weights_depend_on_query(weights, want_w),
                  output_is_weights_times_values(out, weights, v) if isinstance(out, torch.Tensor) else None):
        if found:
            return found
    return None


_SDPA_TRANSPOSE = CrashHint(
    r"mat1 and mat2 shapes cannot be multiplied|Expected size for first two dimensions of batch2|size mismatch",
    lambda m, call: ("the scores must be q @ kᵀ: transpose the last two dims of k (k.transpose(-2, -1); k.T "
                     "reverses *all* dims of a batched tensor).")
    if isinstance(call.args.get("k"), torch.Tensor) and call.args["k"].shape[-2] != call.args["k"].shape[-1] else None)

declare("softmax", chapter="attention", args=("x", "dim"), self_check=_softmax_self_check,
        properties=(Property("sums to 1 along dim, keeps the order of the logits, ignores a constant added along dim",
                             _softmax_properties),))
declare("scaled_dot_product_attention", chapter="attention", args=("q", "k", "v", "mask"), helpers=("softmax",),
        properties=(Property("weights: rows sum to 1, masked keys 0, softmax of q kᵀ/√d_k; output = weights @ v",
                             _sdpa_weights),),
        crash_hints=(_SDPA_TRANSPOSE,))
declare("additive_attention", chapter="attention", args=("q", "k", "v", "w_q", "w_k", "w_v", "mask"),
        helpers=("softmax",),
        properties=(Property("weights: rows sum to 1, masked keys 0, depend on the query; output = weights @ v",
                             _additive_weights),))


def random_attention_inputs(batch: tuple[int, ...], t_q: int, t_k: int, d_k: int, d_v: int, *,
                            dtype=torch.float32, seed: int = 0, scale: float = 1.0):
    """(q, k, v) with fixed seed: q (*batch, t_q, d_k), k (*batch, t_k, d_k), v (*batch, t_k, d_v)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(*batch, t_q, d_k, generator=gen, dtype=torch.float64) * scale
    k = torch.randn(*batch, t_k, d_k, generator=gen, dtype=torch.float64) * scale
    v = torch.randn(*batch, t_k, d_v, generator=gen, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype)


# ----------------------------------------------------------------------------- learner guidance

# Graded function -> the heading of the book section to reread when it fails.
# What answers may not call: the built-ins this exercise asks learners to write ("*" = every answer).
BANNED = {
    "*": ["torch.softmax", "torch.nn.functional.softmax", "torch.nn.Softmax", "torch.special.softmax",
          "torch.Tensor.softmax", "torch.log_softmax", "torch.nn.functional.log_softmax", "torch.nn.LogSoftmax",
          "torch.special.log_softmax", "torch.Tensor.log_softmax",  # log_softmax(x).exp() is the built-in softmax
          "torch.nn.functional.scaled_dot_product_attention",
          "torch.nn.MultiheadAttention", "torch.nn.functional.multi_head_attention_forward"],
}

REREAD = {
    "softmax": "Softmax, temperature and the scale of the logits",
    "scaled_dot_product_attention": "How is attention computed, step by step?",
    "additive_attention": "Dot-product or additive attention?",
}

# Graded function -> progressive hints: each leads further without giving the code away.
HINTS = {
    "softmax": [
        "Softmax does not change if you subtract the same number from every entry along `dim`. "
        "Which number keeps every exponent at most 0?",
        "Use the maximum along `dim` with keepdim=True so it broadcasts back over `x`. "
        "Then divide the exponentials by their sum along the same `dim`.",
        "A row that is entirely -inf has maximum -inf, and -inf - (-inf) is NaN. Replace a non-finite "
        "maximum by 0 before subtracting, and guard the division when the sum is 0.",
    ],
    "scaled_dot_product_attention": [
        "You need one score per (query, key) pair: a (..., T_q, T_k) tensor. Which matrix product of q "
        "and k gives that shape?",
        "Divide the scores by the square root of d_k (the last dimension of q) before the softmax, and "
        "normalize over the keys: the last dimension.",
        "For the mask, fill the logits where the mask is False with -inf *before* the softmax; your "
        "softmax from Part 1 already turns an all -inf row into zeros.",
    ],
    "additive_attention": [
        "Project first: q @ w_q has shape (..., T_q, d_a) and k @ w_k has shape (..., T_k, d_a).",
        "Insert singleton dimensions so the two projections broadcast to (..., T_q, T_k, d_a); then tanh.",
        "Contract the last dimension with w_v to get (..., T_q, T_k) scores; from there it is the same as "
        "dot-product attention: mask, softmax over keys, multiply by v.",
    ],
}
