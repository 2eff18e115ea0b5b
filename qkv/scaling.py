"""Why attention divides by √d_k: the demo code the scaling chapter runs.

The argument (Vaswani et al. 2017, §3.2.1 and footnote 4): if the components of a
query q and a key k are independent with mean 0 and variance 1, then
q·k = Σ_i q_i k_i has mean 0 and variance d_k. Large logits push the softmax toward
one-hot, where its Jacobian diag(p) − p pᵀ is nearly zero, so the gradient *vanishes*.
Dividing by √d_k brings the variance back to 1 — at initialization.

Shapes use ``...`` for any number of leading batch dims, ``T_q``/``T_k`` for query/key
lengths and ``d_k`` for the query/key width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def attention_logits(q: torch.Tensor, k: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Attention logits ``scale · q kᵀ`` (Vaswani et al. 2017, eq. 1, before the softmax).

    Args:
        q: (..., T_q, d_k) queries.
        k: (..., T_k, d_k) keys; leading dims broadcast with q's.
        scale: the factor that *multiplies* q kᵀ (as in
            ``torch.nn.functional.scaled_dot_product_attention(..., scale=)``);
            ``None`` means the default 1/√d_k. ``0.0`` is a valid scale, not "use the default".

    Returns:
        (..., T_q, T_k) logits, in q's dtype.

    Raises:
        ValueError: if q or k has fewer than 2 dims, or their last dims differ.
    """
    if q.dim() < 2 or k.dim() < 2:
        raise ValueError(f"expected q of shape (..., T_q, d_k) and k of shape (..., T_k, d_k); "
                         f"got {tuple(q.shape)} and {tuple(k.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share d_k; got q {tuple(q.shape)} and k {tuple(k.shape)}")
    if scale is None:  # `is None`, not truthiness: scale=0.0 is a legitimate (if useless) choice
        scale = 1.0 / math.sqrt(q.shape[-1])
    return (q @ k.transpose(-2, -1)) * scale


def softmax_jacobian(p: torch.Tensor) -> torch.Tensor:
    """Jacobian of the softmax at the point where it outputs ``p``: J = diag(p) − p pᵀ.

    ``J[..., i, j] = ∂p_i / ∂z_j = p_i (δ_ij − p_j)``. It depends on the logits z only
    through p, is symmetric, and every row sums to 0 (softmax ignores a shift of z).
    When p is one-hot every entry is 0: a saturated softmax passes no gradient back.

    Args:
        p: (..., n) probabilities (each row sums to 1).

    Returns:
        (..., n, n) Jacobians, in p's dtype.

    Raises:
        ValueError: if p is a 0-dim tensor.
    """
    if p.dim() < 1:
        raise ValueError(f"expected p of shape (..., n), got a 0-dim tensor {tuple(p.shape)}")
    # Outer product, not the inner product p·p: one entry per (i, j) pair.
    return torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)


def measure_logit_variance(d_ks: Sequence[int], n_samples: int = 20_000, seed: int = 0
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Measured Var(q·k) and Var(q·k/√d_k) for q, k with i.i.d. N(0, 1) components.

    For each d_k, draws ``n_samples`` independent pairs (q, k) of shape (d_k,) from
    ``torch.Generator().manual_seed(seed)`` in float64 and returns the unbiased sample
    variances. Theory: d_k unscaled, 1 scaled; the relative standard error of a sample
    variance of q·k is √((2 + 6/d_k) / n_samples) (its kurtosis is 3 + 6/d_k).

    Returns:
        (unscaled, scaled): two float64 tensors of shape (len(d_ks),).

    Raises:
        ValueError: if a d_k is < 1 or n_samples < 2.
    """
    if n_samples < 2 or any(int(d) < 1 for d in d_ks):
        raise ValueError(f"need n_samples >= 2 and every d_k >= 1; got n_samples={n_samples}, d_ks={list(d_ks)}")
    gen = torch.Generator().manual_seed(seed)
    unscaled, scaled = [], []
    for d_k in d_ks:
        q = torch.randn(n_samples, d_k, generator=gen, dtype=torch.float64)
        k = torch.randn(n_samples, d_k, generator=gen, dtype=torch.float64)
        dots = (q * k).sum(-1)  # (n_samples,): one q·k per pair
        unscaled.append(dots.var())
        scaled.append((dots / math.sqrt(d_k)).var())
    return torch.stack(unscaled), torch.stack(scaled)


def random_logits(d_k: int, *, scaled: bool, n_queries: int = 256, n_keys: int = 16, seed: int = 0) -> torch.Tensor:
    """(n_queries, n_keys) attention logits of random unit-variance q and k, optionally divided by √d_k."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n_queries, d_k, generator=gen, dtype=torch.float64)
    k = torch.randn(n_keys, d_k, generator=gen, dtype=torch.float64)
    return attention_logits(q, k, scale=None if scaled else 1.0)


def saturation(d_k: int, *, scaled: bool, n_queries: int = 256, n_keys: int = 16, seed: int = 0) -> dict[str, float]:
    """How saturated the softmax of random logits is, averaged over queries.

    Returns a dict with ``max_p`` (mean of each query's largest probability; 1/n_keys is
    uniform, 1 is one-hot) and ``jacobian_norm`` (mean Frobenius norm of diag(p) − p pᵀ;
    0 means no gradient flows back through the softmax).
    """
    p = torch.softmax(random_logits(d_k, scaled=scaled, n_queries=n_queries, n_keys=n_keys, seed=seed), dim=-1)
    jac = softmax_jacobian(p)  # (n_queries, n_keys, n_keys)
    return {"max_p": p.amax(-1).mean().item(), "jacobian_norm": jac.flatten(-2).norm(dim=-1).mean().item()}


def grad_norm_to_q(d_k: int, *, scaled: bool, n_queries: int = 256, n_keys: int = 16, d_v: int = 16,
                   seed: int = 0) -> float:
    """Median over queries of ‖∂L/∂q‖ through one attention layer, with or without 1/√d_k.

    L = Σ ⟨softmax(logits) V, G⟩ with random V and a random upstream gradient G, so
    ∂L/∂q_i is the gradient a query receives from a loss downstream of attention.
    q and k have unit-variance components, as at initialization.
    """
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n_queries, d_k, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(n_keys, d_k, generator=gen, dtype=torch.float64)
    v = torch.randn(n_keys, d_v, generator=gen, dtype=torch.float64)
    upstream = torch.randn(n_queries, d_v, generator=gen, dtype=torch.float64)
    weights = torch.softmax(attention_logits(q, k, scale=None if scaled else 1.0), dim=-1)
    ((weights @ v) * upstream).sum().backward()
    # Median, not mean: unscaled, a few unsaturated queries dominate a mean.
    return q.grad.norm(dim=-1).median().item()


def train_self_retrieval(d_model: int = 32, d_k: int = 32, steps: int = 200, seed: int = 0
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Train W_Q, W_K so that each token attends to itself; return scaled logits before and after.

    A toy task (batches of 8 random tokens, V = X, loss ‖attention(X) − X‖²) that rewards
    sharp attention. At initialization (W ~ N(0, 1/d_model)) the scaled logits have
    variance ≈ 1; training grows W_Q and W_K and correlates q with k, so it does not stay 1.

    Returns:
        (before, after): (64, 8, 8) float32 scaled logits on a fixed evaluation batch.
    """
    gen = torch.Generator().manual_seed(seed)
    w_q = (torch.randn(d_model, d_k, generator=gen) / math.sqrt(d_model)).requires_grad_()
    w_k = (torch.randn(d_model, d_k, generator=gen) / math.sqrt(d_model)).requires_grad_()
    x_eval = torch.randn(64, 8, d_model, generator=gen)

    def logits(x):
        return attention_logits(x @ w_q, x @ w_k)  # (B, 8, 8), divided by √d_k

    with torch.no_grad():
        before = logits(x_eval).clone()
    opt = torch.optim.Adam([w_q, w_k], lr=1e-2)
    # The matrices are tiny: on a busy CPU, thread synchronisation costs more than the maths.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(steps):
            x = torch.randn(64, 8, d_model, generator=gen)
            loss = ((torch.softmax(logits(x), dim=-1) @ x - x) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        after = logits(x_eval)
    return before, after


def t5_fold_gap(optimizer: str, *, d_model: int = 64, d_k: int = 16, steps: int = 5, lr: float = 1e-2,
                seed: int = 1) -> tuple[float, float]:
    """Train attention written Vaswani's way and T5's way with the same optimizer; compare the logits.

    Vaswani: logits = (x W_Q)(x W_K)ᵀ / √d_k. T5 drops the 1/√d_k and starts from
    W_Q / √d_k instead (its released code initializes W_Q with a √d_k-times smaller standard
    deviation), so at initialization the two logits are equal. Both are then trained on the
    same toy loss (match a fixed random attention pattern) for ``steps`` steps of:

    * ``"adam"``: ``torch.optim.Adam``. Its steps do not scale with the gradient, so the √d_k
      times smaller W_Q moves √d_k times faster relative to its size: the fold is not exact.
    * ``"adafactor"``: ``torch.optim.Adafactor``, whose step is relative to the parameter's
      own scale (α_t = max(ε₂, RMS(θ)) ρ_t) and invariant to the gradient's scale: the
      T5 W_Q stays exactly W_Q / √d_k, so the fold stays exact (T5 trained with AdaFactor).
    * ``"sgd"``: plain SGD, for contrast: the gradient of the smaller W_Q is √d_k larger.

    Returns:
        (gap at initialization, gap after training): the largest |logit difference| on a
        fixed batch of 8 tokens.

    Raises:
        ValueError: for an unknown optimizer name.
    """
    factories = {
        "adam": lambda params: torch.optim.Adam(params, lr=lr),
        "adafactor": lambda params: torch.optim.Adafactor(params, lr=lr),
        "sgd": lambda params: torch.optim.SGD(params, lr=lr),
    }
    if optimizer not in factories:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {sorted(factories)}")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(8, d_model, generator=gen)                      # (T, d_model)
    w_q = torch.randn(d_model, d_k, generator=gen) / math.sqrt(d_model)
    w_k = torch.randn(d_model, d_k, generator=gen) / math.sqrt(d_model)
    target = torch.softmax(torch.randn(8, 8, generator=gen), dim=-1)

    def trained_logits(w_q0: torch.Tensor, scale: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        wq, wk = w_q0.clone().requires_grad_(), w_k.clone().requires_grad_()
        opt = factories[optimizer]([wq, wk])
        start = attention_logits(x @ wq, x @ wk, scale=scale).detach()
        for _ in range(steps):
            loss = ((torch.softmax(attention_logits(x @ wq, x @ wk, scale=scale), -1) - target) ** 2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return start, attention_logits(x @ wq, x @ wk, scale=scale).detach()

    vaswani_0, vaswani = trained_logits(w_q, None)                   # 1/√d_k in the logits
    t5_0, t5 = trained_logits(w_q / math.sqrt(d_k), 1.0)             # folded into W_Q, no scale
    return (vaswani_0 - t5_0).abs().max().item(), (vaswani - t5).abs().max().item()
