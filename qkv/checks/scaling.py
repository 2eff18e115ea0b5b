"""Checks for the scaling exercise: attention logits, the softmax Jacobian, the variance experiment.

Oracles are independent of any learner code and of qkv's own demo code:

- logits: ``torch.einsum`` in float64 (and, as a cross-check, the softmax of the
  learner's logits must equal the weights of ``F.scaled_dot_product_attention(..., scale=)``);
- softmax Jacobian: ``torch.autograd.functional.jacobian`` of ``torch.softmax``, row by row,
  at the logits log p (any logits with softmax p give the same Jacobian);
- variance experiment: the known values d_k and 1, within a stated statistical tolerance.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from qkv.checks import sections
from qkv.checks.core import CheckFailed, Diagnosis, call_learner, expect_close
from qkv.checks.graded import check_of
from qkv.checks.registry import Diag, Property, declare

# ----------------------------------------------------------------------------- oracles


def oracle_logits(q: torch.Tensor, k: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """scale · q kᵀ by einsum in float64, cast to q's dtype; scale None = 1/√d_k."""
    s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return (torch.einsum("...id,...jd->...ij", q.double(), k.double()) * s).to(q.dtype)


def sdpa_weights(q: torch.Tensor, k: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Attention weights from torch's fused attention (values = identity), float64."""
    q64, k64 = q.double(), k.double()
    # Not torch.broadcast_shapes: its first call imports torch.fx and sympy (seconds).
    batch = torch.broadcast_tensors(q[..., :1, :1], k[..., :1, :1])[0].shape[:-2]
    eye = torch.eye(k.shape[-2], dtype=torch.float64).expand(*batch, k.shape[-2], k.shape[-2])
    return F.scaled_dot_product_attention(q64.expand(*batch, *q.shape[-2:]), k64.expand(*batch, *k.shape[-2:]),
                                          eye, scale=scale)


def oracle_softmax_jacobian(p: torch.Tensor) -> torch.Tensor:
    """Jacobian of torch.softmax by autograd at z = log p, one row at a time, in float64."""
    p64 = p.double()
    flat = p64.reshape(-1, p.shape[-1])
    jacs = [torch.autograd.functional.jacobian(lambda z: torch.softmax(z, dim=-1), row.log()) for row in flat]
    n = p.shape[-1]
    out = torch.stack(jacs) if jacs else torch.empty(0, n, n, dtype=torch.float64)
    return out.reshape(*p.shape, n).to(p.dtype)


def variance_tolerance(d_k: int, n_samples: int, n_sigma: float = 5.0) -> float:
    """Relative tolerance for a sample variance of q·k: n_sigma standard errors.

    q·k is a sum of d_k products of independent N(0, 1) variables, so its kurtosis is
    3 + 6/d_k and the relative standard error of its sample variance is √((2 + 6/d_k)/n).
    With 5 standard errors a correct experiment fails less than once in a million runs.
    """
    return n_sigma * math.sqrt((2 + 6 / d_k) / n_samples)


# ----------------------------------------------------------------------------- misconceptions


def logits_diagnoses(q: torch.Tensor, k: torch.Tensor, scale: float | None) -> list[Diagnosis]:
    """Named wrong variants of the logits (float64)."""
    d = q.shape[-1]
    raw = torch.einsum("...id,...jd->...ij", q.double(), k.double())
    out: list[Diagnosis] = []
    if scale is None:
        out += [
            (raw, Diag("your logits equal q kᵀ without the 1/√d_k scale; by default divide by "
                       f"√d_k = {math.sqrt(d):.4g}.", sections.WHY_SQRT_DK)),
            (raw / d, Diag(f"your logits are q kᵀ divided by d_k = {d}; divide by √d_k = {math.sqrt(d):.4g} instead "
                           "(the variance of q·k is d_k, so its standard deviation is √d_k).",
                           sections.DERIVE_VARIANCE)),
        ]
    else:
        out += [
            (raw / math.sqrt(d), f"you used the default 1/√d_k although scale={scale!r} was passed. Use the default "
                                 "only when scale is None (test `scale is None`: 0.0 is a valid scale)."),
            (raw / scale if scale != 0 else None,
             f"you divided by scale={scale!r}; scale *multiplies* q kᵀ, as in "
             "F.scaled_dot_product_attention(..., scale=)."),
            (raw, f"scale={scale!r} was ignored: multiply q kᵀ by it."),
        ]
    if q.shape[-2] == k.shape[-2] == d:  # only then does q @ k (no transpose) have the right shape
        s = 1 / math.sqrt(d) if scale is None else scale
        out.append((q.double() @ k.double() * s, "k was not transposed: the logits are q @ kᵀ (k.transpose(-2, -1))."))
    return out


def jacobian_diagnoses(p: torch.Tensor) -> list[Diagnosis]:
    """Named wrong variants of diag(p) − p pᵀ (float64)."""
    p64 = p.double()
    diag = torch.diag_embed(p64)
    outer = p64.unsqueeze(-1) * p64.unsqueeze(-2)
    inner = (p64 * p64).sum(-1, keepdim=True).unsqueeze(-1)  # (..., 1, 1): pᵀp, broadcast everywhere
    return [
        (diag, "your Jacobian is diag(p): the outer-product term − p pᵀ is missing. Changing z_j also lowers every "
               "other probability, so the off-diagonal entries are −p_i p_j."),
        (diag - inner, "you subtracted the inner product pᵀp (a number) instead of the outer product p pᵀ "
                       "(an n×n matrix): the transpose is on the wrong factor. Use p as a column times p as a row."),
        (torch.diag_embed(p64 - p64 * p64), "you kept only the diagonal p_i(1 − p_i) (the sigmoid-style derivative); "
                                            "the off-diagonal entries −p_i p_j are missing."),
        (-outer, "the diag(p) term is missing: J = diag(p) − p pᵀ."),
        (outer - diag, "the sign is flipped: J = diag(p) − p pᵀ, not p pᵀ − diag(p)."),
    ]


def variance_diagnoses(d_ks, which: str) -> list[Diagnosis]:
    """Named wrong variants of the measured variances: what the experiment returns if misbuilt."""
    d = torch.tensor([float(x) for x in d_ks], dtype=torch.float64)
    if which == "unscaled":
        return [
            (d.sqrt(), "you returned the standard deviation √d_k; the experiment asks for the variance (d_k)."),
            (torch.ones_like(d), "your 'unscaled' variances are ≈ 1: they look scaled. Measure q·k itself first."),
        ]
    return [
        (1 / d, Diag("your scaled variances are ≈ 1/d_k: you divided q·k by d_k. Divide by √d_k: Var(x/c) = Var(x)/c².",
                     sections.DERIVE_VARIANCE)),
        (d, "your scaled variances are ≈ d_k: the 1/√d_k scale was not applied."),
        (d.sqrt(), "your scaled variances are ≈ √d_k: you divided the *variance* by √d_k. Divide q·k by √d_k "
                   "before taking the variance."),
    ]


# ----------------------------------------------------------------------------- checks


@check_of("attention_logits")
def check_attention_logits(attention_logits, q: torch.Tensor, k: torch.Tensor, scale: float | None = None) -> None:
    """Compare ``attention_logits(q, k[, scale])`` with an einsum oracle and torch's fused attention."""
    args = (q, k) if scale is None else (q, k, scale)
    scale_text = "" if scale is None else f", scale={scale!r}"
    what = f"attention_logits(q{tuple(q.shape)}, k{tuple(k.shape)}{scale_text})"
    got = call_learner(attention_logits, *args, name="attention_logits")
    expect_close(got, oracle_logits(q, k, scale), what=what, diagnoses=lambda: logits_diagnoses(q, k, scale))
    # Cross-check with PyTorch's own attention: the softmax of your logits is its attention matrix.
    if q.dtype == torch.float64:
        expect_close(torch.softmax(got.double(), dim=-1), sdpa_weights(q, k, scale),
                     what=f"{what}: softmax of your logits vs F.scaled_dot_product_attention's weights")


@check_of("softmax_jacobian")
def check_softmax_jacobian(softmax_jacobian, p: torch.Tensor) -> None:
    """Compare ``softmax_jacobian(p)`` with autograd's Jacobian of torch.softmax."""
    got = call_learner(softmax_jacobian, p, name="softmax_jacobian")
    what = f"softmax_jacobian(p of shape {tuple(p.shape)}, {str(p.dtype).removeprefix('torch.')})"
    expect_close(got, oracle_softmax_jacobian(p), what=what, diagnoses=lambda: jacobian_diagnoses(p))


@check_of("softmax_jacobian")
def check_jacobian_properties(softmax_jacobian) -> None:
    """Known values: uniform p gives (I − 1/n)/n; a one-hot p gives the zero matrix; rows sum to 0."""
    n = 4
    uniform = torch.full((n,), 1 / n, dtype=torch.float64)
    expect_close(call_learner(softmax_jacobian, uniform, name="softmax_jacobian"),
                 (torch.eye(n, dtype=torch.float64) - 1 / n) / n,
                 what="softmax_jacobian(uniform p of length 4): expected (I − 1/4)/4",
                 diagnoses=lambda: jacobian_diagnoses(uniform))
    one_hot = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    expect_close(call_learner(softmax_jacobian, one_hot, name="softmax_jacobian"),
                 torch.zeros(3, 3, dtype=torch.float64),
                 what="softmax_jacobian(one-hot p): a saturated softmax has a zero Jacobian",
                 diagnoses=lambda: jacobian_diagnoses(one_hot))
    p = torch.softmax(torch.tensor([[0.3, -1.2, 2.0, 0.5, 0.0]], dtype=torch.float64), -1)
    rows = call_learner(softmax_jacobian, p, name="softmax_jacobian").sum(-1)
    expect_close(rows, torch.zeros_like(rows), what="softmax_jacobian(p).sum(-1): each row must sum to 0 "
                 "(adding a constant to every logit does not change the softmax)", atol=1e-12)


def _variance_pair(result, what: str) -> tuple:
    if not isinstance(result, tuple) or len(result) != 2:
        raise CheckFailed(f"{what}: expected a tuple (unscaled, scaled) of two tensors, got {type(result).__name__}.")
    return result


@check_of("measure_logit_variance")
def check_measure_logit_variance(measure_logit_variance, d_ks, n_samples: int, seed: int = 0) -> tuple:
    """Statistical check: unscaled ≈ d_k and scaled ≈ 1, each within 5 standard errors; same seed,
    same result. Returns the learner's (unscaled, scaled), so that a test can show them without
    running the experiment again."""
    what = f"measure_logit_variance({list(d_ks)}, n_samples={n_samples}, seed={seed})"
    result = call_learner(measure_logit_variance, d_ks, n_samples, seed, name="measure_logit_variance")
    unscaled, scaled = _variance_pair(result, what)
    rtol = max(variance_tolerance(d, n_samples) for d in d_ks)
    d = torch.tensor([float(x) for x in d_ks], dtype=torch.float64)
    expect_close(unscaled, d, what=f"{what}: unscaled variances (theory: d_k; tolerance ±{rtol:.1%})",
                 atol=0.0, rtol=rtol, diagnoses=lambda: variance_diagnoses(d_ks, "unscaled"))
    expect_close(scaled, torch.ones_like(d), what=f"{what}: scaled variances (theory: 1; tolerance ±{rtol:.1%})",
                 atol=0.0, rtol=rtol, diagnoses=lambda: variance_diagnoses(d_ks, "scaled"))
    # Same seed, same numbers: two small runs show it as well as two runs of the full experiment
    # (an unseeded draw differs at any size), at a fraction of the cost (issue #10: a self-check within 1 s).
    small_args = (list(d_ks)[:1], min(n_samples, 1000), seed)
    first, again = (_variance_pair(call_learner(measure_logit_variance, *small_args,
                                                name="measure_logit_variance"), what)
                    for _ in range(2))
    if not all(isinstance(t, torch.Tensor) for t in (*first, *again)):
        raise CheckFailed(f"measure_logit_variance{small_args}: expected a tuple (unscaled, scaled) of two tensors.")
    if not (torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])):
        raise CheckFailed(f"{what}: a second call with the same seed gave different numbers. Draw every sample from "
                          "torch.Generator().manual_seed(seed) (pass generator= to torch.randn).")
    return unscaled, scaled


def _jacobian_properties(p) -> str | None:
    """diag(p) − p pᵀ is symmetric, its rows sum to 0 and its diagonal is p(1 − p)."""
    probs = p.get("p")
    if probs is None:
        return None
    got = p.call(probs)
    n = probs.shape[-1]
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != (*probs.shape, n):
        return None
    j, q = got.double(), probs.double()
    found = []
    if not torch.allclose(torch.diagonal(j, dim1=-2, dim2=-1), q * (1 - q), atol=1e-3):
        found.append("the diagonal must be ∂p_i/∂z_i = p_i(1 − p_i); yours is not")
    off = j - torch.diag_embed(torch.diagonal(j, dim1=-2, dim2=-1))
    want_off = -(q.unsqueeze(-1) * q.unsqueeze(-2))
    want_off = want_off - torch.diag_embed(torch.diagonal(want_off, dim1=-2, dim2=-1))
    if not torch.allclose(off, want_off, atol=1e-3):
        if torch.allclose(off, off.transpose(-2, -1), atol=1e-6):
            found.append("the off-diagonal entries must be ∂p_i/∂z_j = −p_i p_j; yours are not")
        else:
            found.append("the Jacobian of a softmax is symmetric (∂p_i/∂z_j = ∂p_j/∂z_i = −p_i p_j); yours is not: "
                         "an index or a broadcast is the wrong way round")
    if not torch.allclose(j.sum(-1), torch.zeros_like(j.sum(-1)), atol=1e-3):
        found.append("each row must sum to 0 (adding a constant to every logit does not change a softmax); yours "
                     "do not")
    if not found:
        return None
    return Diag("; ".join(found) + ". J = diag(p) − p pᵀ.", sections.SOFTMAX_JACOBIAN)


declare("attention_logits", chapter="scaling", args=("q", "k", "scale"))
declare("softmax_jacobian", chapter="scaling", args=("p",),
        properties=(Property("symmetric, rows sum to 0, diagonal p(1 − p)", _jacobian_properties),))
declare("measure_logit_variance", chapter="scaling", args=("d_ks", "n_samples", "seed"))


def random_qk(batch: tuple[int, ...], t_q: int, t_k: int, d_k: int, *, dtype=torch.float32, seed: int = 0):
    """(q, k) with unit-variance components and a fixed seed: q (*batch, t_q, d_k), k (*batch, t_k, d_k)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(*batch, t_q, d_k, generator=gen, dtype=torch.float64)
    k = torch.randn(*batch, t_k, d_k, generator=gen, dtype=torch.float64)
    return q.to(dtype), k.to(dtype)


def random_probs(shape: tuple[int, ...], *, dtype=torch.float32, seed: int = 0, temperature: float = 1.0):
    """Softmax of random logits (divided by ``temperature``), shape ``shape``, fixed seed."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(*shape, generator=gen, dtype=torch.float64) / temperature
    return torch.softmax(z, dim=-1).to(dtype)


# ----------------------------------------------------------------------------- learner guidance

# Graded function -> the heading of the book section to reread when it fails.
REREAD = {
    "attention_logits": "Why does attention divide the logits by √d_k?",
    "softmax_jacobian": "What happens without the scaling?",
    "measure_logit_variance": "Derive it: why is the variance of q·k equal to d_k?",
}

# Graded function -> progressive hints: each leads further without giving the code away.
HINTS = {
    "attention_logits": [
        "You need one logit per (query, key) pair: a (..., T_q, T_k) tensor. Which matrix product of q and k "
        "gives that shape?",
        "The default scale is one over the square root of d_k, the last dimension of q: the standard deviation "
        "of q·k, not its variance.",
        "Use the default only when scale is None; a scale of 0.0 must be honoured. The scale multiplies the "
        "products, as in PyTorch's own attention.",
    ],
    "softmax_jacobian": [
        "Differentiate p_i = exp(z_i) / Σ exp(z_j) with respect to z_j twice: once for j = i and once for j ≠ i. "
        "Both results can be written with p alone.",
        "The result is a diagonal matrix built from p minus a matrix with one entry per (i, j) pair: an outer "
        "product, not the inner product (a single number).",
        "For batched p of shape (..., n), build the diagonal part with a function that embeds the last dimension "
        "as a diagonal, and the outer product by inserting a singleton dimension in two different places.",
    ],
    "measure_logit_variance": [
        "For each d_k, draw n_samples query vectors and n_samples key vectors with standard normal entries, "
        "from one generator seeded with seed, and take one dot product per pair (not a full matrix of pairs).",
        "Var(q·k) should come out near d_k. For the scaled version divide each dot product by the square root "
        "of d_k before taking the variance.",
        "Return two float64 tensors with one entry per d_k, in the order given; draw in float64 so that "
        "nothing is lost to rounding.",
    ],
}


# What answers may not call (read by the grader's static check; see autograder/banned.py).
BANNED = {
    "attention_logits": ["torch.nn.functional.scaled_dot_product_attention"],
    "softmax_jacobian": ["torch.autograd", "torch.func", "torch.Tensor.backward", "functorch"],
}
