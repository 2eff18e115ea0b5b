"""Properties shared by several chapters: facts about attention weights, masks, normalisations
and causality that hold for every correct answer, each returning a sentence that names what a
wrong answer broke (or None when it holds).

They take float64 tensors computed from the learner's output; none raises on odd input
(the caller skips a property that cannot be evaluated). Each runs in milliseconds on the
small inputs of a check, and only after a check has failed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from qkv.checks import sections
from qkv.checks.patterns import describe_factor
from qkv.checks.registry import Diag

# ----------------------------------------------------------------------------- attention weights


def rows_sum_to_one(weights: torch.Tensor, keep: torch.Tensor | None = None) -> str | None:
    """Each query's weights sum to 1 over the keys (rows with no allowed key: to 0)."""
    w = weights.double()
    sums = w.sum(-1)
    want = torch.ones_like(sums)
    if keep is not None:
        want = keep.expand(w.shape).any(-1).double()
    bad = ~torch.isclose(sums, want, atol=1e-3, rtol=1e-3) & torch.isfinite(sums)
    if not bad.any():
        return None
    other = (w.transpose(-1, -2).sum(-1) if w.dim() >= 2 and w.shape[-1] == w.shape[-2] else None)
    if other is not None and torch.allclose(other, torch.ones_like(other), atol=1e-3):
        return Diag("each query's weights must sum to 1 over the keys (the last dim); yours sum to 1 over the "
                    "queries instead: the softmax normalised the wrong axis (use dim=-1).", sections.ATTENTION_STEPS)
    shown = ", ".join(f"{v:.3g}" for v in sums[bad].flatten()[:3].tolist())
    return Diag(f"each query's weights must sum to 1 over the keys; some of yours sum to {shown}: the weights are not "
                "a softmax over the last dim (wrong axis, or the normalisation was changed after the softmax).",
                sections.ATTENTION_STEPS)


def masked_keys_get_zero(weights: torch.Tensor, mask: torch.Tensor) -> str | None:
    """Weights are 0 where the mask is False; with the opposite polarity, name it."""
    w = weights.double()
    keep = mask.bool().expand(w.shape)
    leak = w.masked_fill(keep, 0.0).abs()
    if not (leak > 1e-6).any():
        return None
    blocked_allowed = w.masked_fill(~keep, 0.0).abs()
    if keep.any() and (~keep).any() and not (blocked_allowed > 1e-6).any():
        return Diag("your weights are zero exactly where the mask is True and positive where it is False: the mask "
                    "polarity is inverted. True means 'may attend' (as in F.scaled_dot_product_attention); fill the "
                    "logits where the mask is False.", sections.MASK_POLARITY)
    return Diag(f"masked keys (mask False) still receive weight (up to {leak.max().item():.3g}): fill their logits "
                "with -inf (or torch.finfo(dtype).min) *before* the softmax, by replacement. Filling with 0, adding a "
                "finite number or multiplying by the mask leaves them in the sum (e^0 = 1).", sections.MINUS_INF)


def output_is_weights_times_values(out: torch.Tensor, weights: torch.Tensor, v: torch.Tensor) -> str | None:
    """The output is the weighted average of the values with the returned weights."""
    try:
        want = weights.double() @ v.double()
    except RuntimeError:
        return None
    if want.shape != out.shape or not torch.isfinite(want).all() \
            or torch.allclose(out.double(), want, atol=1e-4, rtol=1e-3):
        return None
    return Diag("your output is not your weights @ v: each output row must be the average of the value rows "
                "weighted by that query's weights (check the last step, and that v is not transposed).",
                sections.ATTENTION_STEPS)


def logit_scale(weights: torch.Tensor, raw_logits: torch.Tensor, keep: torch.Tensor | None = None) -> float | None:
    """The s for which weights = softmax(s · raw_logits) over the allowed keys, if one fits."""
    w = weights.double()
    L = raw_logits.double().expand(w.shape)
    ok = w > 1e-9
    if keep is not None:
        ok &= keep.bool().expand(w.shape)
    logw = torch.where(ok, w.clamp_min(1e-300).log(), torch.zeros_like(w))
    # Differences against the row's first usable key remove the softmax's normaliser.
    num = den = 0.0
    pairs = []
    for idx in range(w.reshape(-1, w.shape[-1]).shape[0]):
        row_ok = ok.reshape(-1, w.shape[-1])[idx]
        cols = row_ok.nonzero().flatten()
        if len(cols) < 2:
            continue
        j0 = cols[0]
        dl = logw.reshape(-1, w.shape[-1])[idx, cols[1:]] - logw.reshape(-1, w.shape[-1])[idx, j0]
        dz = L.reshape(-1, w.shape[-1])[idx, cols[1:]] - L.reshape(-1, w.shape[-1])[idx, j0]
        pairs.append((dl, dz))
        num += float((dl * dz).sum())
        den += float((dz * dz).sum())
    if den == 0 or not pairs:
        return None
    s = num / den
    resid = sum(float(((dl - s * dz) ** 2).sum()) for dl, dz in pairs)
    total = sum(float((dl ** 2).sum()) for dl, _ in pairs)
    if total == 0 or resid > 1e-4 * total + 1e-8:
        return None
    return s


def scale_diagnosis(s: float | None, d_k: int, names: dict[str, float]) -> str | None:
    """Name a wrong softmax scale s (the right one is 1/√d_k)."""
    if s is None or math.isclose(s, 1 / math.sqrt(d_k), rel_tol=2e-3):
        return None
    if s < 0:
        return Diag(f"your weights are softmax(−{abs(s):.4g} · q kᵀ): the sign of the scores is flipped, so the "
                    "least similar keys get the most weight.", sections.ATTENTION_STEPS)
    named = describe_factor(s, names)
    what = f" (= {named})" if named else ""
    return Diag(f"your weights are softmax(q kᵀ × {s:.4g}{what}); the scale must be 1/√d_k = {1 / math.sqrt(d_k):.4g} "
                "(divide the scores by the square root of the query/key width).", sections.WHY_SQRT_DK)


def weights_depend_on_query(weights: torch.Tensor, expected: torch.Tensor) -> str | None:
    """If the answer's weights differ between queries but the learner's do not, the query was lost."""
    w, e = weights.double(), expected.double()
    if w.shape[-2] < 2:
        return None
    same = torch.allclose(w, w[..., :1, :].expand_as(w), atol=1e-6)
    if same and not torch.allclose(e, e[..., :1, :].expand_as(e), atol=1e-6):
        return Diag("every query got the same weights: the query does not influence the scores. In additive "
                    "attention the query's term only survives the softmax through the nonlinearity: "
                    "w_v · tanh(q W_q + k W_k), with tanh applied to the sum.", sections.ADDITIVE)
    return None


def recover_weights(call_with_values: Callable[[torch.Tensor], torch.Tensor], n_keys: int,
                    like: torch.Tensor) -> torch.Tensor | None:
    """Attention weights of a function that returns only its output: call it with one-hot
    values (value j = e_j), so that output = weights. ``like`` gives the values' leading shape."""
    eye = torch.eye(n_keys, dtype=like.dtype).expand(*like.shape[:-2], n_keys, n_keys).contiguous()
    out = call_with_values(eye)
    if not isinstance(out, torch.Tensor) or out.shape[-1] != n_keys:
        return None
    return out.double()


# ----------------------------------------------------------------------------- causality and masks


def future_is_ignored(call: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, t: int,
                      seq_dim: int = -2) -> str | None:
    """Outputs before position t must not change when the tokens from t on change."""
    base = call(x)
    edited = x.clone()
    idx = [slice(None)] * x.dim()
    idx[seq_dim] = slice(t, None)
    edited[tuple(idx)] = edited[tuple(idx)] + 3.0
    after = call(edited)
    if not isinstance(base, torch.Tensor) or not isinstance(after, torch.Tensor) or base.shape != after.shape:
        return None
    keep = [slice(None)] * base.dim()
    keep[seq_dim] = slice(0, t)
    if torch.allclose(base[tuple(keep)].double(), after[tuple(keep)].double(), atol=1e-6):
        return None
    return Diag(f"changing the tokens from position {t} on changed your outputs at positions before {t}: earlier "
                "positions can see later ones (the causal mask is missing, transposed, or applied to the wrong axis).",
                sections.CAUSAL)


# ----------------------------------------------------------------------------- normalisation


def normalised_axes(y: torch.Tensor, candidates: dict[str, tuple[int, ...]], *, center: bool = True,
                    tol: float = 1e-3) -> list[str]:
    """Which of the candidate axis sets ``y`` has mean 0 (if ``center``) and unit variance
    (or unit mean square) over."""
    y = y.double()
    found = []
    for name, dims in candidates.items():
        if any(y.shape[d] < 2 for d in dims):
            continue
        if center:
            mean = y.mean(dims)
            var = ((y - y.mean(dims, keepdim=True)) ** 2).mean(dims)
            if torch.allclose(mean, torch.zeros_like(mean), atol=tol) \
                    and torch.allclose(var, torch.ones_like(var), atol=10 * tol):
                found.append(name)
        else:
            ms = (y ** 2).mean(dims)
            if torch.allclose(ms, torch.ones_like(ms), atol=10 * tol):
                found.append(name)
    return found


def insensitive_to(call: Callable[..., object], name: str, value, other, compare=None) -> str | None:
    """The result must change when argument ``name`` changes from ``value`` to ``other``;
    if it does not, the function ignores that argument."""
    a, b = call(value), call(other)
    same = compare(a, b) if compare else (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                                          and a.shape == b.shape and torch.equal(a, b))
    if same:
        return (f"your result does not change when `{name}` changes ({value!r} → {other!r}): `{name}` is ignored "
                "(or used where it has no effect).")
    return None
