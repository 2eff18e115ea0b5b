"""Positional information for a permutation-equivariant model: sinusoidal encodings and RoPE.

Shapes: ``T`` positions, ``d`` the model (or head) width, which must be even
because both schemes work on pairs of dimensions (one frequency per pair).
"""

from __future__ import annotations

import torch


def _check_even(d: int, name: str) -> None:
    if not isinstance(d, int) or d <= 0 or d % 2:
        raise ValueError(f"expected a positive even {name} (one frequency per pair of dims), got {d!r}")


def pair_frequencies(d: int, base: float = 10000.0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """ω_i = base^(-2i/d) for i = 0 .. d/2 - 1: shape (d/2,). Wavelengths run from 2π to base·2π."""
    _check_even(d, "d")
    return base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d).to(dtype)


def sinusoidal_positional_encoding(n_positions: int, d_model: int, base: float = 10000.0,
                                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Vaswani et al. 2017, §3.5: PE[pos, 2i] = sin(pos ω_i), PE[pos, 2i+1] = cos(pos ω_i).

    Returns a (n_positions, d_model) tensor of ``dtype``. Angles are computed in
    float64: ``pos · ω_0`` reaches n_positions radians, where float16 would round badly.

    Raises:
        ValueError: if n_positions < 1 or d_model is not a positive even integer.
    """
    if not isinstance(n_positions, int) or n_positions < 1:
        raise ValueError(f"expected n_positions >= 1, got {n_positions!r}")
    _check_even(d_model, "d_model")
    angles = torch.arange(n_positions, dtype=torch.float64)[:, None] * pair_frequencies(d_model, base)  # (T, d/2)
    pe = torch.empty(n_positions, d_model, dtype=torch.float64)
    pe[:, 0::2] = angles.sin()  # interleaved: sin on even dims, cos on odd dims
    pe[:, 1::2] = angles.cos()
    return pe.to(dtype)


def shift_matrix(k: int, d_model: int, base: float = 10000.0) -> torch.Tensor:
    """The fixed (d_model, d_model) matrix M_k with PE[pos + k] = M_k @ PE[pos] for every pos.

    Block diagonal: each (sin, cos) pair is rotated by the angle k ω_i, because
    sin(a + b) and cos(a + b) are linear in (sin a, cos a). M_k does not depend on pos.
    """
    _check_even(d_model, "d_model")
    phi = k * pair_frequencies(d_model, base)
    m = torch.zeros(d_model, d_model, dtype=torch.float64)
    m[0::2, 0::2] = torch.diag(phi.cos())   # sin(a+b) = sin a cos b + cos a sin b
    m[0::2, 1::2] = torch.diag(phi.sin())
    m[1::2, 0::2] = torch.diag(-phi.sin())  # cos(a+b) = cos a cos b - sin a sin b
    m[1::2, 1::2] = torch.diag(phi.cos())
    return m


def _rope_angles(x: torch.Tensor, positions: torch.Tensor,
                 base: float) -> tuple[torch.dtype, torch.Tensor, torch.Tensor]:
    """Check RoPE's arguments; return (working dtype, cos, sin), each angle table (T, d/2)."""
    if x.dim() < 2:
        raise ValueError(f"expected x of shape (..., T, d), got {tuple(x.shape)}")
    t, d = x.shape[-2], x.shape[-1]
    _check_even(d, "last dim of x")
    if positions.shape != (t,):
        raise ValueError(f"expected positions of shape ({t},) to match x {tuple(x.shape)}, "
                         f"got {tuple(positions.shape)}")
    work = torch.promote_types(x.dtype, torch.float32)  # float16 angles would be off by ~0.03 rad at m = 50
    angles = positions.to(work)[:, None] * pair_frequencies(d, base, work)  # (T, d/2)
    return work, angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding (Su et al. 2021, RoFormer, §3.4.2 eq. 34), interleaved pairs.

    Each pair of dims (x[..., 2i], x[..., 2i+1]) at position m is rotated by the
    angle m θ_i with θ_i = base^(-2i/d):

        out[2i]   = x[2i] cos(mθ_i) - x[2i+1] sin(mθ_i)
        out[2i+1] = x[2i] sin(mθ_i) + x[2i+1] cos(mθ_i)

    (GPT-NeoX and Hugging Face LLaMA pair dim j with dim j + d/2 instead, see
    :func:`apply_rope_half`: the same rotation on permuted dims, so weights move
    between the layouts by the fixed permutation :func:`interleaved_to_half`.)

    Args:
        x: (..., T, d) queries or keys, d even; any float dtype.
        positions: (T,) integer or float positions (e.g. arange(T) + cache offset).

    Returns:
        (..., T, d) tensor of x's dtype. Angles are computed in float32 or better.

    Raises:
        ValueError: if d is odd or positions does not have shape (T,).
    """
    work, cos, sin = _rope_angles(x, positions, base)  # cos, sin: (T, d/2)
    x_even, x_odd = x[..., 0::2].to(work), x[..., 1::2].to(work)
    out = torch.stack([x_even * cos - x_odd * sin, x_even * sin + x_odd * cos], dim=-1)  # (..., T, d/2, 2)
    return out.flatten(-2).to(x.dtype)


def apply_rope_half(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """RoPE in the "rotate half" layout (GPT-NeoX, Hugging Face LLaMA): dim j pairs with dim j + d/2.

    Pair i is (x[..., i], x[..., i + d/2]), rotated by m θ_i with the same θ_i as
    :func:`apply_rope`. Shapes, dtypes and errors as in :func:`apply_rope`.
    """
    work, cos, sin = _rope_angles(x, positions, base)  # cos, sin: (T, d/2)
    d = x.shape[-1]
    first, second = x[..., : d // 2].to(work), x[..., d // 2:].to(work)
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1).to(x.dtype)


def interleaved_to_half(d: int) -> torch.Tensor:
    """Index permutation P (shape (d,)) with ``apply_rope_half(x[..., P]) == apply_rope(x)[..., P]``.

    P lists the even dims, then the odd dims: pair i of the interleaved layout, dims
    (2i, 2i+1), lands on dims (i, i + d/2) of the rotate-half layout. Permuting the rows
    of a checkpoint's W_Q and W_K per head this way converts it between the layouts
    without changing any attention score (what Hugging Face's LLaMA conversion script does).
    """
    _check_even(d, "d")
    return torch.cat([torch.arange(0, d, 2), torch.arange(1, d, 2)])


def learned_positional_embedding(n_positions: int, d_model: int, seed: int = 0) -> torch.nn.Embedding:
    """A learned table (BERT, GPT-2): one trainable vector per position, so at most n_positions tokens."""
    torch.manual_seed(seed)
    return torch.nn.Embedding(n_positions, d_model)
