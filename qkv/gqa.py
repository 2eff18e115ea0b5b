"""Grouped-query attention, written out: the demo code of the MQA/GQA chapter.

Shapes: ``B`` batch, ``H`` query heads, ``H_kv`` key/value heads, ``T`` query
length, ``S`` key length, ``d`` head width. Query head ``h`` uses KV head
``h // (H // H_kv)``: a *group* is a block of consecutive query heads
(Ainslie et al. 2023, §2.2; the layout used by Llama 2 and
``F.scaled_dot_product_attention(..., enable_gqa=True)``).

* ``H_kv == H``: multi-head attention (MHA, Vaswani et al. 2017).
* ``H_kv == 1``: multi-query attention (MQA, Shazeer 2019).
* anything in between that divides ``H``: grouped-query attention (GQA).

Masks are boolean, ``True`` = may attend, as in the attention chapter.
"""

from __future__ import annotations

import math

import torch


def _check_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> int:
    """Validate (B, H, T, d) / (B, H_kv, S, d) shapes and return the group size H // H_kv."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"expected {name} of shape (B, H, T, d), got {tuple(t.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape (B, H_kv, S, d); got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share B and d; got q {tuple(q.shape)} and k {tuple(k.shape)}")
    n_heads, n_kv = q.shape[1], k.shape[1]
    if n_kv == 0 or n_heads % n_kv:
        raise ValueError(f"the number of query heads ({n_heads}) must be a multiple of the number of KV heads ({n_kv})")
    return n_heads // n_kv


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, H_kv, S, d) → (B, H_kv·n_rep, S, d): KV head j serves query heads j·n_rep … j·n_rep + n_rep − 1.

    Equals ``torch.repeat_interleave(x, n_rep, dim=1)`` (not ``x.repeat(1, n_rep, 1, 1)``,
    which would pair query head h with KV head h mod H_kv). Same dtype as ``x``.
    The result is a copy: real kernels avoid materializing it (see
    :func:`grouped_query_attention`), or MQA would read as many bytes as MHA.

    Raises:
        ValueError: if ``x`` is not 4-D or ``n_rep`` < 1.
    """
    if x.dim() != 4:
        raise ValueError(f"expected x of shape (B, H_kv, S, d), got {tuple(x.shape)}")
    if not isinstance(n_rep, int) or n_rep < 1:
        raise ValueError(f"n_rep must be a positive int, got {n_rep!r}")
    b, h_kv, s, d = x.shape
    return x[:, :, None].expand(b, h_kv, n_rep, s, d).reshape(b, h_kv * n_rep, s, d)


def grouped_query_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(q kᵀ/√d) v where groups of consecutive query heads share one KV head.

    Args:
        q: (B, H, T, d) queries.
        k, v: (B, H_kv, S, d) keys and values; H must be a multiple of H_kv.
        mask: optional bool, broadcastable to (B, H, T, S); True = may attend.
            Every query must be allowed at least one key.

    Returns:
        (B, H, T, d), same dtype as ``q``.

    The query heads of a group are folded into the query axis, (B, H_kv, G·T, d),
    so each KV head is read from memory once per step for all G query heads that
    share it; no copy of K or V is made. That is where MQA/GQA save bandwidth.

    Raises:
        ValueError: on shapes that do not fit together.
    """
    group = _check_heads(q, k, v)
    b, n_heads, t, d = q.shape
    n_kv, s = k.shape[1], k.shape[2]
    qg = q.reshape(b, n_kv, group * t, d)  # heads h = j·G + g land in row block g of KV head j
    logits = qg @ k.transpose(-2, -1) / math.sqrt(d)  # (B, H_kv, G·T, S)
    if mask is not None:
        full = mask.bool().expand(b, n_heads, t, s).reshape(b, n_kv, group * t, s)
        logits = logits.masked_fill(~full, float("-inf"))
    weights = torch.softmax(logits, dim=-1)
    return (weights @ v).reshape(b, n_heads, t, d)


def grouped_query_attention_repeat(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The same result as :func:`grouped_query_attention`, by copying KV heads with :func:`repeat_kv`.

    Simple and common in reference code, but it materializes (B, H, S, d) keys and
    values, so it moves as many bytes as MHA. Shapes and errors as above.
    """
    group = _check_heads(q, k, v)
    k, v = repeat_kv(k, group), repeat_kv(v, group)  # (B, H, S, d)
    logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        logits = logits.masked_fill(~mask.bool(), float("-inf"))
    return torch.softmax(logits, dim=-1) @ v


def mean_pool_kv_heads(w_kv: torch.Tensor, n_heads: int, n_groups: int) -> torch.Tensor:
    """Convert one MHA K (or V) projection to GQA by mean-pooling the heads of each group.

    Ainslie et al. 2023, §2.1–2.2: "we construct each group key and value head by
    mean-pooling all the original heads within that group", then uptrain.

    Args:
        w_kv: (n_heads·d_head, ...) — an ``nn.Linear`` weight (out_features, in_features)
            or its bias (out_features,). Head h owns rows h·d_head … (h+1)·d_head − 1.
        n_heads: number of heads in the checkpoint.
        n_groups: number of KV heads wanted; must divide ``n_heads``.

    Returns:
        (n_groups·d_head, ...), same dtype: group g is the mean of heads
        g·G … g·G + G − 1 with G = n_heads // n_groups.

    Raises:
        ValueError: if the sizes do not divide.
    """
    if n_groups < 1 or n_heads % n_groups:
        raise ValueError(f"n_groups ({n_groups}) must be a positive divisor of n_heads ({n_heads})")
    if w_kv.dim() < 1 or w_kv.shape[0] % n_heads:
        raise ValueError(f"expected w_kv of shape (n_heads·d_head, ...) with n_heads = {n_heads}, "
                         f"got {tuple(w_kv.shape)}")
    d_head = w_kv.shape[0] // n_heads
    rest = w_kv.shape[1:]
    grouped = w_kv.reshape(n_groups, n_heads // n_groups, d_head, *rest)  # (groups, heads per group, d_head, ...)
    return grouped.mean(dim=1).reshape(n_groups * d_head, *rest)
