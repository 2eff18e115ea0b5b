"""Generic diagnoses of a wrong answer: what the difference between the learner's answer and the
expected one looks like, whatever function produced it.

These run when no named wrong variant of the function matched. Each recognises a *shape of
mistake* rather than a particular mistake: a constant factor (and which size of the inputs
it equals), an argument left out (the difference equals ``bias``), a transpose, a shift by
one position, the right values in the wrong order, a mismatch confined to one row or to the
masked positions, a near miss. So a mistake nobody listed still gets a message that says
what is wrong in terms a learner can act on.

Every function here takes float64 tensors (or plain Python values) and returns a sentence,
or None when its pattern does not apply. None of them raises on odd input.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

# ----------------------------------------------------------------------------- numbers with names


def named_sizes(inputs: dict[str, Any]) -> list[tuple[str, float]]:
    """(description, value) for the sizes and numbers a factor might come from: every dim of
    every tensor input (``q.shape[-1]``) and every numeric argument (``n_heads``)."""
    out: list[tuple[str, float]] = []
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor):
            for i in range(value.dim()):
                neg = i - value.dim()
                out.append((f"{name}.shape[{neg}]", float(value.shape[i])))
        elif isinstance(value, bool):
            continue
        elif isinstance(value, (int, float)) and value not in (0, 1) and math.isfinite(value):
            out.append((name, float(value)))
    return out


def describe_factor(c: float, inputs: dict[str, Any]) -> str:
    """Say what ``c`` probably is, e.g. '1/√16 (16 = q.shape[-1])', '2', 'n_groups / n_heads', or ''."""
    if not math.isfinite(c) or c == 0:
        return ""

    def close(a: float, b: float) -> bool:
        return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-12)

    for const, text in ((2.0, "2"), (0.5, "1/2"), (-1.0, "-1"), (-2.0, "-2"), (-0.5, "-1/2")):
        if close(c, const):
            return text
    sizes = [(d, v) for d, v in named_sizes(inputs) if v > 1]
    # Prefer the last dims (feature widths) over batch sizes when two sizes are equal.
    sizes.sort(key=lambda dv: (0 if "[-1]" in dv[0] else 1 if "shape" in dv[0] else 2))
    for d, v in sizes:
        n = int(v) if float(v).is_integer() else v
        for value, text in ((v, f"{n}"), (1 / v, f"1/{n}"), (math.sqrt(v), f"√{n}"), (1 / math.sqrt(v), f"1/√{n}"),
                            (v * v, f"{n}²"), ((v - 1) / v, f"({n}−1)/{n}"), (v / (v - 1), f"{n}/({n}−1)")):
            if close(c, value):
                return f"{text} ({n} = {d})" if text != f"{n}" else f"{d}"
    for (d1, v1) in sizes:
        for (d2, v2) in sizes:
            if d1 == d2:
                continue
            if close(c, v1 / v2):
                return f"{d1} / {d2}"
            if close(c, math.sqrt(v1 / v2)):
                return f"√({d1} / {d2})"
    return ""


# ----------------------------------------------------------------------------- tensor patterns


def _close(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, atol=atol, rtol=rtol, equal_nan=True))


def _axis_name(dim: int, ndim: int) -> str:
    return f"dim {dim - ndim}" if ndim > 1 else "the only dim"


def tensor_mismatch(actual: torch.Tensor, expected: torch.Tensor, *, atol: float, rtol: float,
                    inputs: dict[str, Any] | None = None) -> str | None:
    """A sentence describing how ``actual`` differs from ``expected`` (same shape, float64), or None."""
    inputs = inputs or {}
    if _close(actual, expected, atol, rtol):
        return None
    if not (torch.isfinite(actual).all() and torch.isfinite(expected).all()):
        return None  # NaN/inf have their own messages
    for finder in (_equals_an_input, _transposed, _constant_factor, _per_slice_factor, _constant_offset,
                   _argument_left_out, _shifted_or_flipped, _reordered, _localized, _near_miss):
        try:
            found = finder(actual, expected, atol, rtol, inputs)
        except Exception:  # a pattern that cannot be evaluated on these shapes says nothing
            found = None
        if found:
            return found
    return None


def _equals_an_input(a, e, atol, rtol, inputs):
    for name, x in inputs.items():
        if isinstance(x, torch.Tensor) and x.shape == a.shape and x.dtype.is_floating_point \
                and _close(a, x.double(), atol, rtol) and not _close(e, x.double(), atol, rtol):
            return f"your result is the argument `{name}` unchanged: the computation was skipped (an early return?)."
    return None


def _transposed(a, e, atol, rtol, inputs):
    if a.dim() >= 2 and a.shape[-1] == a.shape[-2] and _close(a, e.transpose(-2, -1), atol, rtol):
        return ("your result is the transpose of the answer: entry [..., i, j] holds what belongs at [..., j, i] "
                "(rows and columns swapped; check which axis is which, or a missing/extra transpose).")
    return None


def _fit_factor(a: torch.Tensor, e: torch.Tensor) -> float | None:
    denom = float((e * e).sum())
    if denom == 0:
        return None
    return float((a * e).sum()) / denom


def _constant_factor(a, e, atol, rtol, inputs):
    c = _fit_factor(a, e)
    if c is None or math.isclose(c, 1.0, rel_tol=1e-6) or not _close(a, e * c, atol, rtol):
        return None
    if abs(c) < 1e-12:
        return None
    named = describe_factor(c, inputs)
    if c < 0 and math.isclose(c, -1.0, rel_tol=1e-6):
        return "your result is the answer with the sign flipped (× −1): a subtraction the wrong way round?"
    what = f" (= {named})" if named else ""
    return (f"your result is the answer × {c:.6g}{what}, the same factor everywhere: a scale or normalisation "
            "factor is wrong (missing, inverted, or applied twice).")


def _per_slice_factor(a, e, atol, rtol, inputs):
    if a.dim() < 2:
        return None
    for dim in range(a.dim()):
        other = tuple(d for d in range(a.dim()) if d != dim)
        num = (a * e).sum(other, keepdim=True)
        den = (e * e).sum(other, keepdim=True)
        if (den == 0).any():
            continue
        c = num / den
        if _close(a, e * c, atol, rtol) and not torch.allclose(c, c.flatten()[0].expand_as(c), rtol=1e-6):
            shown = ", ".join(f"{v:.4g}" for v in c.flatten()[:4].tolist()) + (", …" if c.numel() > 4 else "")
            return (f"each slice along {_axis_name(dim, a.dim())} of your result is the answer times its own factor "
                    f"({shown}): a per-row normalisation is wrong (the divisor — a count, a sum or a norm — "
                    "is computed over the wrong elements).")
    return None


def _constant_offset(a, e, atol, rtol, inputs):
    c = float((a - e).mean())
    if abs(c) > atol and _close(a, e + c, atol, rtol):
        return (f"your result is the answer shifted by the constant {c:.6g} everywhere: "
                "an added or missing constant term.")
    return None


def _argument_left_out(a, e, atol, rtol, inputs):
    for name, x in inputs.items():
        if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point or x.numel() < 2:
            continue
        try:
            x64 = x.double().expand_as(e)
        except RuntimeError:
            continue
        if torch.allclose(x64, torch.zeros_like(x64)):
            continue
        if _close(a, e - x64, atol, rtol):
            return f"your result is the answer minus `{name}`: `{name}` was not added (it must be added, not ignored)."
        if _close(a, e + x64, atol, rtol):
            return (f"your result is the answer plus `{name}`: "
                    f"`{name}` was added once too often (or where it does not belong).")
        if not (x64 == 0).any():
            if _close(a, e / x64, atol, rtol):
                return f"your result is the answer divided by `{name}`: `{name}` was not multiplied in."
            if _close(a, e * x64, atol, rtol):
                return f"your result is the answer times `{name}`: `{name}` was multiplied in once too often."
    return None


def _shifted_or_flipped(a, e, atol, rtol, inputs):
    for dim in range(a.dim()):
        n = a.shape[dim]
        if n < 2:
            continue
        name = _axis_name(dim, a.dim())
        for shift in (1, -1):
            rolled = torch.roll(e, shifts=shift, dims=dim)
            keep = [slice(None)] * a.dim()
            keep[dim] = slice(1, None) if shift == 1 else slice(0, n - 1)
            if n > 2 and _close(a[tuple(keep)], rolled[tuple(keep)], atol, rtol) and not _close(a, e, atol, rtol):
                where = "later" if shift == 1 else "earlier"
                return (f"your result is the answer shifted by one position along {name}: entry i holds the value "
                        f"of entry i {'−' if shift == 1 else '+'} 1 "
                        f"(an off-by-one: each value lands one step {where}).")
        if n > 2 and _close(a, e.flip(dim), atol, rtol):
            return f"your result is the answer reversed along {name}: the order of that axis is backwards."
    return None


def _reordered(a, e, atol, rtol, inputs):
    if a.numel() < 2:
        return None
    for dim in range(a.dim()):
        if a.shape[dim] > 1 and _close(a.sort(dim).values, e.sort(dim).values, atol, rtol):
            return (f"your result holds the right values but in the wrong order along {_axis_name(dim, a.dim())}: "
                    "a reshape, transpose or index put them in the wrong places (check the memory layout: reshape "
                    "keeps the order of the elements, transpose/permute changes which axis is which).")
    if _close(a.flatten().sort().values, e.flatten().sort().values, atol, rtol):
        return ("your result holds exactly the right values, but in the wrong places: the layout is mixed up (a "
                "reshape where a transpose/permute was needed, or axes in the wrong order).")
    return None


def _describe_indices(bad: list[int], n: int) -> str | None:
    if not bad or len(bad) == n:
        return None
    if bad == [0]:
        return "at index 0 (the first)"
    if bad == [n - 1]:
        return f"at index {n - 1} (the last)"
    if len(bad) == 1:
        return f"at index {bad[0]}"
    if bad == list(range(bad[0], n)):
        return f"from index {bad[0]} to the end"
    if bad == list(range(0, bad[-1] + 1)):
        return f"at indices 0 … {bad[-1]}"
    return None


def localize(bad: torch.Tensor) -> str | None:
    """Describe where a bool tensor of mismatches is True, if it is confined to a simple set of
    indices along one axis (the first position, the last, a prefix ...)."""
    if not bad.any() or bad.all():
        return None
    for dim in range(bad.dim()):
        other = tuple(d for d in range(bad.dim()) if d != dim)
        rows = bad.any(dim=other) if other else bad
        where = _describe_indices([i for i, b in enumerate(rows.tolist()) if b], bad.shape[dim])
        if where:
            return f"{where} along {_axis_name(dim, bad.dim())}"
    return None


def _localized(a, e, atol, rtol, inputs):
    bad = ~torch.isclose(a, e, atol=atol, rtol=rtol, equal_nan=True)
    mask = next((v for k, v in inputs.items() if "mask" in k and isinstance(v, torch.Tensor)
                 and v.dtype == torch.bool), None)
    if mask is not None:
        try:
            keep = mask.expand(bad.shape)
        except RuntimeError:
            keep = None
        if keep is not None:
            if bad.any() and not (bad & keep).any():
                return "your result differs from the answer only at the masked positions (where the mask is False)."
            if bad.any() and not (bad & ~keep).any():
                return ("your result differs from the answer only at the allowed positions (where the mask is True); "
                        "the masked ones are right.")
            dead = ~keep.any(dim=-1)
            if dead.any() and bad.any(dim=-1).eq(dead).all():
                return ("your result differs from the answer exactly on the rows whose keys are all masked "
                        "(a row with nothing to attend to must come out as zeros).")
    where = localize(bad)
    if where:
        return (f"your result differs from the answer only {where}; the rest is right: look at how that edge "
                "case is handled (the first or last position, an off-by-one bound).")
    return None


def _near_miss(a, e, atol, rtol, inputs):
    if _close(a, e, atol * 100 + 1e-7, rtol * 100 + 1e-7):
        rel = float(((a - e).abs() / (e.abs() + atol)).max())
        return (f"your result is close to the answer but not within tolerance (largest relative difference {rel:.2g}): "
                "a slightly different formula (n − 1 instead of n, eps in a different place) or a lower-precision "
                "intermediate (float16 where float32/float64 was needed).")
    return None


# ----------------------------------------------------------------------------- bool tensors


def bool_mismatch(actual: torch.Tensor, expected: torch.Tensor) -> str | None:
    """How a boolean mask differs from the expected one."""
    if actual.shape != expected.shape:
        return None
    if torch.equal(actual, ~expected):
        return "your mask is exactly inverted: True and False are swapped everywhere."
    if actual.dim() >= 2 and actual.shape[-1] == actual.shape[-2] and torch.equal(actual, expected.transpose(-2, -1)):
        return "your mask is the transpose of the answer: rows (queries) and columns (keys) are swapped."
    extra = actual & ~expected
    missing = expected & ~actual
    if extra.any() and not missing.any():
        where = localize(extra)
        return (f"your mask allows too much: {int(extra.sum())} position(s) that must be False are True"
                + (f" ({where})" if where else "") + ". A condition is missing or combined with | instead of &.")
    if missing.any() and not extra.any():
        where = localize(missing)
        return (f"your mask blocks too much: {int(missing.sum())} position(s) that must be True are False"
                + (f" ({where})" if where else "") + ". A condition is too strict (< where <= was needed?) "
                "or combined with & instead of |.")
    where = localize(extra | missing)
    if where:
        return f"your mask is wrong {where}; everything else is right."
    return None


# ----------------------------------------------------------------------------- shapes and dtypes


def shape_mismatch(actual: tuple[int, ...], expected: tuple[int, ...],
                   inputs: dict[str, Any] | None = None) -> str | None:
    """Why a result may have shape ``actual`` instead of ``expected``."""
    inputs = inputs or {}
    if sorted(actual) == sorted(expected) and len(actual) == len(expected) and actual != expected:
        return ("the axes are in the wrong order (the same sizes, permuted): a transpose/permute is missing or "
                "swaps the wrong axes.")
    if len(actual) == len(expected) + 1:
        for i in range(len(actual)):
            if actual[i] == 1 and actual[:i] + actual[i + 1:] == expected:
                return (f"your result has an extra axis of size 1 at dim {i}: drop it (index with an integer instead "
                        "of a slice, squeeze, or reduce without keepdim=True).")
    if len(actual) + 1 == len(expected):
        for i in range(len(expected)):
            if expected[i] == 1 and expected[:i] + expected[i + 1:] == actual:
                return f"your result is missing an axis of size 1 at dim {i} (keepdim=True, or x[:, None])."
            if expected[:i] + expected[i + 1:] == actual:
                return (f"your result is missing dim {i} (size {expected[i]}): an axis was reduced or indexed away "
                        "that the answer keeps.")
    if len(actual) == len(expected):
        diff = [i for i, (x, y) in enumerate(zip(actual, expected)) if x != y]
        if len(diff) == 1:
            i = diff[0]
            if actual[i] == 1:
                return (f"dim {i} has size 1 where the answer has {expected[i]}: the result was not broadcast/expanded "
                        "to the full size along that axis.")
            got_from = [d for d, v in named_sizes(inputs) if v == actual[i]]
            want_from = [d for d, v in named_sizes(inputs) if v == expected[i]]
            return (f"dim {i} has size {actual[i]}" + (f" (= {got_from[0]})" if got_from else "")
                    + f" where the answer has {expected[i]}" + (f" (= {want_from[0]})" if want_from else "") + ".")
    for name, x in inputs.items():
        if isinstance(x, torch.Tensor) and tuple(x.shape) == actual and actual != expected:
            return f"your result has the shape of the argument `{name}`: was a reduction or a product left out?"
    return None


def dtype_mismatch(actual: torch.dtype, expected: torch.dtype, inputs: dict[str, Any] | None = None) -> str:
    """Why a result may have dtype ``actual`` instead of ``expected``."""
    short = lambda d: str(d).removeprefix("torch.")  # noqa: E731
    if expected == torch.bool:
        return (f"expected a bool mask, got {short(actual)}. A comparison (a < b) already gives a bool tensor; "
                "do not convert it to int or float.")
    if not actual.is_floating_point and expected.is_floating_point:
        return (f"expected {short(expected)}, got the integer dtype {short(actual)}: an integer tensor (torch.arange, "
                "a count, a mask sum) was not converted; divide in floating point or use .to(x.dtype).")
    if actual.is_floating_point and expected.is_floating_point:
        if torch.finfo(actual).bits > torch.finfo(expected).bits:
            return (f"expected {short(expected)}, got {short(actual)}: a wider intermediate upcast the result (a new "
                    "tensor created without dtype=, .double(), a float64 constant). Create tensors with the input's "
                    "dtype (torch.zeros_like, dtype=x.dtype) or cast the result back with .to(x.dtype).")
        return (f"expected {short(expected)}, got {short(actual)}: the result was computed or cast to a narrower "
                "dtype than the input's. Keep the input's dtype.")
    return (f"expected dtype {short(expected)}, got {short(actual)}. Keep the input's dtype (avoid float literals "
            "that upcast, or .double()).")


# ----------------------------------------------------------------------------- numbers, lists, strings


def number_mismatch(got: float, want: float, inputs: dict[str, Any] | None = None) -> str | None:
    """How a number differs from the expected one (a factor, an offset)."""
    if want == 0 or not math.isfinite(got):
        return None
    c = got / want
    named = describe_factor(c, inputs or {})
    if named:
        return f"your result is the answer × {c:.6g} (= {named}): a factor is missing, inverted or doubled."
    return f"your result is {c:.4g} × the answer."


def sequence_mismatch(got: list, want: list) -> str | None:
    """How a list differs from the expected one: missing or extra ends, one wrong element, order."""
    if not isinstance(got, list) or not isinstance(want, list) or got == want:
        return None
    if len(got) == len(want) - 1:
        if got == want[:-1]:
            return "your list is missing the last element (a loop bound stops one step early)."
        if got == want[1:]:
            return "your list is missing the first element."
    if len(got) == len(want) + 1:
        if got[:-1] == want:
            return f"your list has one element too many at the end ({got[-1]!r})."
        if got[1:] == want:
            return f"your list has one element too many at the start ({got[0]!r})."
    if len(got) == len(want):
        diff = [i for i, (x, y) in enumerate(zip(got, want)) if x != y]
        if got == want[::-1]:
            return "your list is the answer reversed."
        if len(diff) == 1:
            i = diff[0]
            return f"only element {i} is wrong: got {got[i]!r}, expected {want[i]!r}."
        try:
            if sorted(got) == sorted(want):
                return "your list has the right elements in the wrong order."
        except TypeError:
            pass
    first = next((i for i, (x, y) in enumerate(zip(got, want)) if x != y), min(len(got), len(want)))
    if 0 < first < min(len(got), len(want)):
        return (f"the first {first} elements are right; element {first} differs (got {got[first]!r}, expected "
                f"{want[first]!r}).")
    return None


def text_mismatch(got: str, want: str) -> str | None:
    """Where two strings first differ, with a little context."""
    if not isinstance(got, str) or not isinstance(want, str) or got == want:
        return None
    for codec in ("latin-1", "cp1252"):
        try:
            if got == want.encode("utf-8").decode(codec, errors="replace"):
                return (f"your text is the UTF-8 bytes read as {codec} (mojibake: 'Ã©' for 'é'): decode the joined "
                        "bytes as UTF-8.")
        except (UnicodeError, LookupError):
            pass
    i = next((j for j, (x, y) in enumerate(zip(got, want)) if x != y), min(len(got), len(want)))
    lo = max(0, i - 10)
    return (f"the text first differs at character {i}: got {got[lo:i + 10]!r}, expected {want[lo:i + 10]!r}"
            + (f" (yours has {len(got)} characters, the answer {len(want)})" if len(got) != len(want) else "") + ".")


def first(items: Iterable[str | None]) -> str | None:
    return next((x for x in items if x), None)
