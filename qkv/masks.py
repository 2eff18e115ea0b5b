"""Padding and causal masks: the demo implementations the masking chapter runs.

Every mask here is boolean and follows ``torch.nn.functional.scaled_dot_product_attention``:
``True`` means "this query may attend to this key". (``torch.nn.MultiheadAttention``
uses the *opposite* convention for its boolean masks; the chapter shows both.)

Shapes use ``B`` for batch, ``T_q``/``T_k`` for query/key lengths and ``d`` for the width.
"""

from __future__ import annotations

import math

import torch


def _check_lengths(lengths: torch.Tensor, max_len: int, name: str = "lengths") -> None:
    if not isinstance(lengths, torch.Tensor) or lengths.dim() != 1:
        shape = tuple(lengths.shape) if isinstance(lengths, torch.Tensor) else type(lengths).__name__
        raise ValueError(f"expected {name} of shape (B,), got {shape}")
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise ValueError(f"expected integer {name}, got dtype {lengths.dtype}")
    if len(lengths) and (lengths.min() < 0 or lengths.max() > max_len):
        raise ValueError(f"{name} must lie in [0, {max_len}], got {lengths.tolist()}")


def padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """Bool (B, max_len): ``True`` where position ``j < lengths[b]`` holds a real token.

    Args:
        lengths: int tensor (B,), the number of real tokens of each sequence (right padding).
        max_len: the padded length T.

    Raises:
        ValueError: if ``lengths`` is not a 1-d integer tensor with values in [0, max_len].
    """
    _check_lengths(lengths, max_len)
    positions = torch.arange(max_len, device=lengths.device)  # (T,)
    return positions[None, :] < lengths[:, None]  # (B, T): broadcast one comparison per (b, j)


def causal_mask(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Bool (n, n): ``True`` where key ``j <= i`` (lower triangle *including* the diagonal).

    Query i may attend to itself and to every earlier position, never to a later one.

    Raises:
        ValueError: if ``n`` is negative.
    """
    if n < 0:
        raise ValueError(f"expected a non-negative sequence length n, got {n}")
    i = torch.arange(n, device=device)
    return i[None, :] <= i[:, None]  # [i, j] = j <= i


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the last dim of ``logits`` that gives masked keys exactly zero weight.

    Args:
        logits: float tensor (..., T_k), any float dtype (float16 and bfloat16 included).
        mask: bool tensor broadcastable to ``logits``; True = may attend. None = no mask.

    Returns:
        Weights with the shape and dtype of ``logits``. A row whose keys are all masked
        gets zeros (not NaN, not a uniform distribution over padding).

    Raises:
        ValueError: if ``mask`` is not boolean or does not broadcast to ``logits``.

    The fill value is ``torch.finfo(dtype).min``, the most negative *finite* number of the
    dtype: −1e9 does not fit in float16 (max 65504) and ``-inf`` turns a fully masked
    row into ``exp(-inf - (-inf)) = NaN``.
    """
    if mask is None:
        return torch.softmax(logits, dim=-1)
    if mask.dtype != torch.bool:
        raise ValueError(f"expected a bool mask (True = may attend), got dtype {mask.dtype}")
    try:
        mask = mask.expand(logits.shape)
    except RuntimeError:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to logits "
                         f"{tuple(logits.shape)}") from None
    filled = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
    weights = torch.softmax(filled, dim=-1)
    # A fully masked row is all finfo.min, so its softmax is uniform: zero it explicitly.
    return weights.masked_fill(~mask, 0.0)


def attention_mask(
    q_lengths: torch.Tensor | None,
    k_lengths: torch.Tensor,
    t_q: int,
    t_k: int,
    causal: bool = False,
) -> torch.Tensor:
    """Combine padding (and causal) masks into one bool (B, 1, T_q, T_k) attention mask.

    ``[b, 0, i, j]`` is True when key j is a real token of sequence b (``j < k_lengths[b]``),
    query i is a real token (``i < q_lengths[b]``, skipped when ``q_lengths`` is None) and,
    if ``causal``, ``j <= i``. The singleton dim broadcasts over heads.

    Uses:
        encoder self-attention:  ``attention_mask(src_len, src_len, S, S)``
        decoder self-attention:  ``attention_mask(tgt_len, tgt_len, T, T, causal=True)``
        cross-attention:         ``attention_mask(tgt_len, src_len, T, S)`` (never causal)

    Raises:
        ValueError: on bad lengths, or ``causal`` with ``t_q != t_k`` (a causal mask relates
        positions of *one* sequence; cross-attention has two).
    """
    _check_lengths(k_lengths, t_k, "k_lengths")
    if causal and t_q != t_k:
        raise ValueError(f"a causal mask needs T_q == T_k (self-attention), got T_q={t_q}, T_k={t_k}")
    mask = padding_mask(k_lengths, t_k)[:, None, None, :]  # (B, 1, 1, T_k): mask keys
    if q_lengths is not None:
        _check_lengths(q_lengths, t_q, "q_lengths")
        if len(q_lengths) != len(k_lengths):
            raise ValueError("q_lengths and k_lengths must have the same batch size, "
                             f"got {len(q_lengths)} and {len(k_lengths)}")
        # Padded queries attend to nothing: their outputs are zero and are ignored downstream.
        mask = mask & padding_mask(q_lengths, t_q)[:, None, :, None]  # (B, 1, T_q, T_k)
    mask = mask.expand(len(k_lengths), 1, t_q, t_k)
    if causal:
        mask = mask & causal_mask(t_q, device=k_lengths.device)
    return mask.contiguous()


def masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q kᵀ/√d, masked) v with :func:`masked_softmax`.

    Args:
        q: (..., T_q, d), k: (..., T_k, d), v: (..., T_k, d_v); mask: bool broadcastable to (..., T_q, T_k).

    Returns:
        output (..., T_q, d_v) and weights (..., T_q, T_k); a query with no allowed key gets zeros.

    Raises:
        ValueError: if the shapes do not fit together.
    """
    if q.dim() < 2 or q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"expected q (..., T_q, d), k (..., T_k, d), v (..., T_k, d_v); "
                         f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., T_q, T_k)
    weights = masked_softmax(logits, mask)
    return weights @ v, weights


class TinyDecoderLayer(torch.nn.Module):
    """One single-head decoder layer: masked self-attention, then cross-attention, residuals.

    Enough machinery to show *where* each mask goes (Vaswani et al. 2017, §3.1, §3.2.3);
    no feed-forward block or normalization, which mix nothing across positions.
    Input tgt (B, T, d) and memory (B, S, d) -> output (B, T, d).
    """

    def __init__(self, d: int, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        names = ["sq", "sk", "sv", "cq", "ck", "cv"]  # self- and cross-attention projections
        for name in names:
            setattr(self, name, torch.nn.Parameter(torch.randn(d, d, generator=gen) / math.sqrt(d)))

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, self_mask: torch.Tensor | None = None,
                cross_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = tgt + masked_attention(tgt @ self.sq, tgt @ self.sk, tgt @ self.sv, self_mask)[0]  # (B, T, d)
        return h + masked_attention(h @ self.cq, memory @ self.ck, memory @ self.cv, cross_mask)[0]


def plain_masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The textbook version: fill masked logits with ``-inf``, then ``torch.softmax``.

    Correct for every query that may attend to at least one key. A query whose keys are *all*
    masked gets ``exp(-inf - (-inf)) = NaN`` weights and a NaN output; the chapter uses this to
    show how such NaNs travel (compare :func:`masked_attention`, which returns zeros there).

    Args and returns as :func:`masked_attention`.
    """
    if q.dim() < 2 or q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"expected q (..., T_q, d), k (..., T_k, d), v (..., T_k, d_v); "
                         f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., T_q, T_k)
    if mask is not None:
        logits = logits.masked_fill(~mask.bool(), float("-inf"))
    weights = torch.softmax(logits, dim=-1)
    return weights @ v, weights
