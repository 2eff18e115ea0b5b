"""Dropout two ways: inverted (what frameworks do) and the original formulation."""

from __future__ import annotations

import torch


def _check_p(p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"expected a drop probability p in [0, 1], got {p!r}")


def inverted_dropout(x: torch.Tensor, p: float, training: bool,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero each element with probability p and scale survivors by 1/(1 - p), in training only.

    The 1/(1-p) scale keeps E[output] = x during training, so at test time
    (``training=False``) the layer is the identity: nothing to rescale
    (this is ``torch.nn.Dropout``). Same shape and dtype as x.

    Raises:
        ValueError: if p is outside [0, 1].
    """
    _check_p(p)
    if not training or p == 0.0:
        return x
    if p == 1.0:  # 1/(1-p) is infinite: every element is dropped
        return torch.zeros_like(x)
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= p  # P(keep) = 1 - p
    return x * keep.to(x.dtype) / (1.0 - p)


def original_dropout(x: torch.Tensor, p: float, training: bool,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Srivastava et al. 2014, §1 and Fig. 2: no scaling in training; at test, multiply by the keep probability 1 - p.

    Equivalent in expectation to inverted dropout; the rescaling merely moves from
    training time to test time (the paper scales the outgoing weights by 1 - p).
    """
    _check_p(p)
    if not training:
        return x * (1.0 - p)
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= p
    return x * keep.to(x.dtype)
