"""Learning-rate schedules: the Transformer's warm-up then inverse-square-root decay ("Noam")."""

from __future__ import annotations

import torch


def noam_lr(step: int, d_model: int, warmup: int) -> float:
    """Vaswani et al. 2017, §5.3: lr = d_model^-0.5 · min(step^-0.5, step · warmup^-1.5).

    Linear growth for step < warmup, then decay ∝ 1/√step; the two branches
    meet at step = warmup, where the peak is (d_model · warmup)^-0.5.

    Raises:
        ValueError: if step, d_model or warmup is < 1 (step^-0.5 is undefined at 0).
    """
    for name, value in (("step", step), ("d_model", d_model), ("warmup", warmup)):
        if value < 1:
            raise ValueError(f"expected {name} >= 1, got {value!r} (count steps from 1)")
    return d_model ** -0.5 * min(step ** -0.5, step * warmup ** -1.5)


def noam_curve(steps: torch.Tensor, d_model: int, warmup: int) -> torch.Tensor:
    """noam_lr on a 1-D tensor of steps (>= 1), vectorized; float64 result of the same shape."""
    s = steps.to(torch.float64)
    if (s < 1).any():
        raise ValueError("expected every step >= 1 (count steps from 1)")
    return d_model ** -0.5 * torch.minimum(s ** -0.5, s * warmup ** -1.5)
