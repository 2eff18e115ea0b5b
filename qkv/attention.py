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
