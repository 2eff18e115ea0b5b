"""The comparison machinery that every chapter's checks share.

A check calls the learner's function through :func:`call_learner` (so that an
unfinished exercise reports "not attempted" instead of a traceback) and compares
the result with :func:`expect_close`, which tries a list of *diagnoses* — outputs
of known wrong variants — to say what probably went wrong.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch

# Tolerances per dtype: low-precision dtypes round at every step.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    # Measured: a correct float16/bfloat16 attention differs from a float64 oracle
    # by up to 0.0023 / 0.021 relative (200 random cases); these leave a margin.
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (6e-2, 6e-2),
    torch.float32: (1e-5, 1e-4),
    torch.float64: (1e-10, 1e-8),
}


class CheckFailed(AssertionError):
    """A learner's function gave a wrong answer; the message says what and, if known, why.

    ``reason`` is the part of the message that names no inputs (for example "softmax
    was taken over the query axis"): the grader shows only that for hidden tests.
    """

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.explicit_reason = reason is not None
        self.reason = reason or message


class NotAttempted(CheckFailed):
    """The learner's function still raises NotImplementedError."""


# A diagnosis is (what a wrong variant would return, the message to show if the learner matches it).
Diagnosis = tuple[torch.Tensor, str]


def call_learner(fn: Callable, *args, name: str | None = None, **kwargs):
    """Call the learner's ``fn``; turn NotImplementedError and crashes into readable CheckFailed."""
    name = name or getattr(fn, "__name__", "your function")
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise NotAttempted(
            f"{name}: not attempted yet. Replace `raise NotImplementedError()` with your code, then rerun this cell."
        ) from None
    except Exception as exc:  # the learner's code failed: explain, keep the original as the cause
        shapes = ", ".join(_describe(a) for a in args)
        raise CheckFailed(f"{name}({shapes}) raised {type(exc).__name__}: {exc}",
                          reason=f"{name} raised {type(exc).__name__}: {exc}") from exc


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor{tuple(x.shape)} {str(x.dtype).removeprefix('torch.')}"
    return repr(x) if not isinstance(x, (list, tuple)) or len(x) < 6 else f"{type(x).__name__} of {len(x)}"


def expect_close(
    actual,
    expected: torch.Tensor,
    *,
    what: str,
    diagnoses: Iterable[Diagnosis] | Callable[[], Iterable[Diagnosis]] = (),
    atol: float | None = None,
    rtol: float | None = None,
) -> None:
    """Raise CheckFailed unless ``actual`` is a tensor equal to ``expected`` within tolerance.

    Checks, in order: type, shape, dtype, NaN/inf, values. On a value mismatch the
    diagnoses are tried and the first wrong variant that ``actual`` matches names
    the misconception. ``diagnoses`` may be a callable so they are computed only on failure.
    """
    if not isinstance(actual, torch.Tensor):
        msg = f"expected a torch.Tensor, got {type(actual).__name__}."
        raise CheckFailed(f"{what}: {msg}", reason=msg)
    if tuple(actual.shape) != tuple(expected.shape):
        raise CheckFailed(f"{what}: expected shape {tuple(expected.shape)}, got {tuple(actual.shape)}.",
                          reason="the result has the wrong shape.")
    if actual.dtype != expected.dtype:
        msg = (f"expected dtype {expected.dtype}, got {actual.dtype}. "
               "Keep the input's dtype (avoid float literals that upcast, or .double()).")
        raise CheckFailed(f"{what}: {msg}", reason=msg)
    default_atol, default_rtol = TOLERANCES.get(expected.dtype, (1e-6, 1e-5))
    atol = default_atol if atol is None else atol
    rtol = default_rtol if rtol is None else rtol
    a, e = actual.detach().double(), expected.detach().double()
    if torch.allclose(a, e, atol=atol, rtol=rtol, equal_nan=True):
        return
    if callable(diagnoses):
        diagnoses = diagnoses()
    for wrong, message in diagnoses:
        if wrong is not None and wrong.shape == a.shape and torch.allclose(
            a, wrong.detach().double(), atol=atol, rtol=rtol, equal_nan=True
        ):
            raise CheckFailed(f"{what}: {message}", reason=message)
    bad_nan = torch.isnan(a) & ~torch.isnan(e)
    if bad_nan.any():
        msg = "your result has NaN where the answer is finite."
        raise CheckFailed(f"{what}: your result has NaN at {int(bad_nan.sum())} position(s) where the answer is finite.", reason=msg)
    bad_inf = torch.isinf(a) & ~torch.isinf(e)
    if bad_inf.any():
        raise CheckFailed(f"{what}: your result has inf at {int(bad_inf.sum())} position(s) (overflow?).",
                          reason="your result has inf where the answer is finite (overflow?).")
    worst = (a - e).abs().nan_to_num(0.0).max().item()
    raise CheckFailed(f"{what}: values differ from the expected answer (largest difference {worst:.3g}).",
                      reason="values differ from the expected answer.")


def expect_pair(result, *, what: str, names: Sequence[str] = ("output", "weights")) -> tuple:
    """Check that ``result`` is a tuple of ``len(names)`` items and return it."""
    if not isinstance(result, tuple) or len(result) != len(names):
        got = f"a {type(result).__name__}" + (f" of length {len(result)}" if isinstance(result, (tuple, list)) else "")
        msg = f"expected a tuple ({', '.join(names)}), got {got}."
        raise CheckFailed(f"{what}: {msg}", reason=msg)
    return result
