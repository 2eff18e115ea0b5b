"""Attention, written out: the demo implementations the attention chapter runs.

Shapes use ``B`` for batch (any number of leading dims), ``T_q``/``T_k`` for
query/key lengths, ``d_k`` for the query/key width and ``d_v`` for the value width.
Masks are boolean and follow ``torch.nn.functional.scaled_dot_product_attention``:
``True`` means "may attend".
"""

from __future__ import annotations

import math

import torch


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Numerically stable softmax of ``x`` along ``dim`` (same shape and dtype as ``x``).

    Subtracting the row maximum changes nothing mathematically (softmax is
    shift-invariant) but keeps ``exp`` from overflowing: ``exp(1000.)`` is inf.
    Rows that are entirely ``-inf`` (fully masked) give zeros, not NaN.
    """
    x_max = x.amax(dim=dim, keepdim=True)
    # A fully masked row has max -inf; shifting by it would give inf - inf = NaN.
    x_max = torch.where(torch.isfinite(x_max), x_max, torch.zeros_like(x_max))
    e = torch.exp(x - x_max)
    total = e.sum(dim=dim, keepdim=True)
    return e / torch.where(total > 0, total, torch.ones_like(total))


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() < 2 or k.dim() < 2 or v.dim() < 2:
        raise ValueError(
            f"expected q, k, v with shape (..., T, d); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same length T_k; got k {tuple(k.shape)} and v {tuple(v.shape)}")


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q kᵀ / √d_k) v  (Vaswani et al. 2017, §3.2.1, eq. 1).

    Args:
        q: (..., T_q, d_k) queries.
        k: (..., T_k, d_k) keys.
        v: (..., T_k, d_v) values.
        mask: optional bool, broadcastable to (..., T_q, T_k); True = may attend.

    Returns:
        output (..., T_q, d_v) and weights (..., T_q, T_k). A query whose keys
        are all masked gets zero weights and a zero output.

    Raises:
        ValueError: if the shapes do not fit together.
    """
    _check_qkv(q, k, v)
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share d_k; got q {tuple(q.shape)} and k {tuple(k.shape)}")
    logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., T_q, T_k)
    if mask is not None:
        logits = logits.masked_fill(~mask.bool(), float("-inf"))
    weights = softmax(logits, dim=-1)
    return weights @ v, weights


def additive_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w_q: torch.Tensor,
    w_k: torch.Tensor,
    w_v: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Additive (Bahdanau) attention: score_ij = w_v · tanh(q_i W_q + k_j W_k).

    Bahdanau et al. 2015, appendix A.1.2 (there q is the decoder state s_{i-1}
    and k = v are the encoder annotations h_j).

    Args:
        q: (..., T_q, d_q), k: (..., T_k, d_k), v: (..., T_k, d_v).
        w_q: (d_q, d_a), w_k: (d_k, d_a), w_v: (d_a,).
        mask: optional bool broadcastable to (..., T_q, T_k); True = may attend.

    Returns:
        output (..., T_q, d_v) and weights (..., T_q, T_k).

    Note the (..., T_q, T_k, d_a) intermediate: additive attention cannot be
    written as one matrix product, which is why dot-product attention is faster.
    """
    _check_qkv(q, k, v)
    hidden = torch.tanh((q @ w_q).unsqueeze(-2) + (k @ w_k).unsqueeze(-3))  # (..., T_q, T_k, d_a)
    logits = hidden @ w_v  # (..., T_q, T_k)
    if mask is not None:
        logits = logits.masked_fill(~mask.bool(), float("-inf"))
    weights = softmax(logits, dim=-1)
    return weights @ v, weights


class SelfAttention(torch.nn.Module):
    """Single-head self-attention with separate learned W_Q, W_K, W_V.

    Q, K and V come from the same X through *different* projections, so they differ.
    Input (B, T, d_model) → output (B, T, d_head).
    """

    def __init__(self, d_model: int, d_head: int, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        scale = 1 / math.sqrt(d_model)
        self.w_q = torch.nn.Parameter(torch.randn(d_model, d_head, generator=gen) * scale)
        self.w_k = torch.nn.Parameter(torch.randn(d_model, d_head, generator=gen) * scale)
        self.w_v = torch.nn.Parameter(torch.randn(d_model, d_head, generator=gen) * scale)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return scaled_dot_product_attention(x @ self.w_q, x @ self.w_k, x @ self.w_v, mask)


def relative_position_ids(t_q: int, t_k: int, max_distance: int) -> torch.Tensor:
    """Index of the clipped offset ``clip(j - i, -k, k) + k`` for every (query i, key j) pair.

    Shaw et al. 2018, §3.2: offsets beyond ``max_distance`` (their k) share one representation.
    Returns a (t_q, t_k) long tensor with values in [0, 2k].
    """
    if max_distance < 0:
        raise ValueError(f"max_distance must be >= 0, got {max_distance}")
    offset = torch.arange(t_k)[None, :] - torch.arange(t_q)[:, None]  # (t_q, t_k): j - i
    return offset.clamp(-max_distance, max_distance) + max_distance


def relation_aware_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a_k: torch.Tensor,
    a_v: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-attention with relative position *vectors* on the keys and the values (Shaw et al. 2018).

    §3.1, eq. 3 and 4:  e_ij = q_i · (k_j + a^K_ij) / √d,  α = softmax_j(e),
    z_i = Σ_j α_ij (v_j + a^V_ij).

    Args:
        q: (..., T_q, d), k: (..., T_k, d), v: (..., T_k, d_v).
        a_k: (T_q, T_k, d) and a_v: (T_q, T_k, d_v), one vector per (i, j) pair, usually
            ``table[relative_position_ids(...)]`` for learned tables of 2k + 1 rows.

    Returns:
        output (..., T_q, d_v) and weights (..., T_q, T_k).
    """
    _check_qkv(q, k, v)
    t_q, t_k = q.shape[-2], k.shape[-2]
    if a_k.shape != (t_q, t_k, q.shape[-1]) or a_v.shape != (t_q, t_k, v.shape[-1]):
        raise ValueError(f"expected a_k of shape {(t_q, t_k, q.shape[-1])} and a_v of shape "
                         f"{(t_q, t_k, v.shape[-1])}; got {tuple(a_k.shape)} and {tuple(a_v.shape)}")
    # q_i·k_j plus q_i·a^K_ij: the second term is one dot product per (i, j) pair.
    logits = (q @ k.transpose(-2, -1) + torch.einsum("...id,ijd->...ij", q, a_k)) / math.sqrt(q.shape[-1])
    weights = softmax(logits, dim=-1)  # (..., T_q, T_k)
    return weights @ v + torch.einsum("...ij,ijd->...id", weights, a_v), weights


def relative_bias_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention with a *scalar* added to each logit that depends on the offset j - i (T5's scheme).

    Raffel et al. 2020, §2.1: "each 'embedding' is simply a scalar that is added to the
    corresponding logit". The values are left alone (unlike Shaw et al.'s a^V).

    Args:
        q: (..., T_q, d), k: (..., T_k, d), v: (..., T_k, d_v); bias: (T_q, T_k), e.g.
            ``table[relative_position_ids(...)]`` for a learned table of scalars.

    Returns:
        output (..., T_q, d_v) and weights (..., T_q, T_k).
    """
    _check_qkv(q, k, v)
    if bias.shape != (q.shape[-2], k.shape[-2]):
        raise ValueError(f"expected bias of shape {(q.shape[-2], k.shape[-2])}, got {tuple(bias.shape)}")
    weights = softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + bias, dim=-1)
    return weights @ v, weights


def linear_readout_r2(features: torch.Tensor, targets: torch.Tensor, n_train: int) -> float:
    """How much of ``targets`` the best linear read-out of ``features`` recovers, on held-out rows.

    Fits least squares (with an intercept) on the first ``n_train`` rows and returns the
    pooled R² = 1 − Σ residual² / Σ (y − mean)² on the remaining rows.

    Args:
        features: (N, F); targets: (N, D); 0 < n_train < N.

    Raises:
        ValueError: if the row counts differ or ``n_train`` leaves no rows to test on.
    """
    if features.dim() != 2 or targets.dim() != 2 or features.shape[0] != targets.shape[0]:
        raise ValueError(f"expected features (N, F) and targets (N, D) with the same N; "
                         f"got {tuple(features.shape)} and {tuple(targets.shape)}")
    if not 0 < n_train < features.shape[0]:
        raise ValueError(f"n_train must be between 1 and N - 1 = {features.shape[0] - 1}, got {n_train}")
    x = torch.cat([features, torch.ones(features.shape[0], 1, dtype=features.dtype)], dim=1).double()
    y = targets.double()
    coef = torch.linalg.lstsq(x[:n_train], y[:n_train]).solution  # (F + 1, D)
    residual = y[n_train:] - x[n_train:] @ coef
    spread = y[n_train:] - y[n_train:].mean(0)
    return 1.0 - residual.pow(2).sum().item() / spread.pow(2).sum().item()
