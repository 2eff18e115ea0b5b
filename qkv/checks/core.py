"""The comparison machinery that every chapter's checks share.

A check calls the learner's function through :func:`call_learner` and compares the result
with :func:`expect_close` (tensors) or :func:`expect_equal` (lists, strings, numbers). When
they disagree the message names the likely mistake, from the most specific explanation to
the least:

1. a named wrong variant of this function (``diagnoses``: outputs of known wrong versions);
2. the chapter's *properties* of the function and its *helpers* (see :mod:`qkv.checks.graded`);
3. a generic pattern of the difference (:mod:`qkv.checks.patterns`: a constant factor, a
   left-out argument, a transpose, a shift by one, a mismatch confined to one row ...);
4. the bare fact ("values differ").

:func:`call_learner` also turns a crash into a message that names the arguments and the
likely mistake (:mod:`qkv.checks.crashes`), reports an unfinished function (or an unfinished
helper it calls) as "not attempted", and refuses a function that modifies its arguments.
"""

from __future__ import annotations

import contextvars
import copy
import re
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from qkv.checks import crashes, patterns
from qkv.checks.registry import GRADED, Call, Diag, Reread

# Tolerances per dtype: low-precision dtypes round at every step.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    # Measured: a correct float16/bfloat16 attention differs from a float64 oracle
    # by up to 0.0023 / 0.021 relative (200 random cases); these leave a margin.
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (6e-2, 6e-2),
    torch.float32: (1e-5, 1e-4),
    torch.float64: (1e-10, 1e-8),
}

# How specific a failure's explanation is; the most specific one leads the message.
BARE, PATTERN, NAMED = 0, 1, 2


class CheckFailed(AssertionError):
    """A learner's function gave a wrong answer; the message says what and, if known, why.

    ``reason`` is the part of the message that names no inputs (for example "softmax
    was taken over the query axis"): the grader shows only that for hidden tests.
    ``reread`` is the book section that explains the diagnosis (None: the function's
    section, ``REREAD`` in the chapter's checks). ``level`` says how specific the
    explanation is: ``NAMED`` (a known mistake), ``PATTERN`` (a generic description of the
    difference) or ``BARE`` (no explanation); properties and helpers are tried below ``NAMED``.
    """

    def __init__(self, message: str, reason: str | None = None, *, reread: Reread | None = None,
                 level: int = NAMED, what: str | None = None, detail: str | None = None):
        super().__init__(message)
        self.explicit_reason = reason is not None
        self.reason = reason or message
        self.reread = reread if reread is not None else \
            getattr(detail if detail is not None else reason, "reread", None)
        self.level = level
        self.what = what
        self.detail = detail if detail is not None else (reason or message)


class NotAttempted(CheckFailed):
    """The learner's function still raises NotImplementedError."""


# A diagnosis is (what a wrong variant would return, the message to show if the learner matches it).
Diagnosis = tuple[torch.Tensor, str]


def fail(what: str, detail: str, *, reason: str | None = None, level: int = NAMED) -> CheckFailed:
    """A CheckFailed "what: detail" whose input-free reason is ``detail`` (or ``reason``)."""
    return CheckFailed(f"{what}: {detail}", reason=reason if reason is not None else detail,
                       reread=getattr(detail, "reread", None), level=level, what=what, detail=detail)


def report_all(what: str, problems: Sequence[str], *, level: int = NAMED) -> None:
    """Raise one CheckFailed listing every problem (most specific first), or return if there is none."""
    problems = list(dict.fromkeys(p for p in problems if p))
    if not problems:
        return
    detail = problems[0] if len(problems) == 1 else (
        f"{len(problems)} problems. (1) " + " ".join(f"({i + 1}) {p}" if i else p for i, p in enumerate(problems)))
    raise CheckFailed(f"{what}: {detail}", reason=detail, reread=getattr(problems[0], "reread", None),
                      level=level, what=what, detail=detail)


def explain_points(points: Sequence[tuple[str, float, float, str]],
                   variants: Sequence[tuple[Sequence[float], str]], *, tol: float = 1e-9) -> list[str]:
    """Explain a known-values check that failed at several points, most specific first.

    ``points`` are (label, got, expected, why-if-wrong); ``variants`` are (the value a known wrong
    version gives at each point, its message). Variants are chosen greedily by how many failing
    points they explain (so one mistake that explains everything wins over the points' own
    reasons, and two independent mistakes are both named); failing points no variant explains
    keep their own reason.
    """
    def close(a, b) -> bool:
        return abs(a - b) <= tol + tol * abs(b)

    failing = {i for i, (_, got, want, _) in enumerate(points) if not close(got, want)}
    out: list[str] = []
    left = set(failing)
    while left:
        best, covered = None, set()
        for values, message in variants:
            hits = {i for i in left if close(points[i][1], values[i])}
            if len(hits) > len(covered):
                best, covered = message, hits
        if best is None:
            break
        out.append(best)
        left -= covered
    out += [f"{points[i][0]} = {points[i][1]!r}, expected {points[i][2]!r}: {points[i][3]}" for i in sorted(left)]
    return out


# ----------------------------------------------------------------------------- calling the learner

# The arguments of the most recent learner call, so that a comparison can name them
# ("`bias` was not added") without every check passing them again.
_LAST_CALL: contextvars.ContextVar[Call | None] = contextvars.ContextVar("qkv_last_call", default=None)

_GROUP_WITH_DIGITS = re.compile(r"\([^()]*\d[^()]*\)|\[[^\[\]]*\d[^\[\]]*\]")


def redact(text: str) -> str:
    """Hide bracketed groups holding numbers (shapes, values): what a hidden test's message must
    not show (the grader keeps even less of a hidden test's message: autograder/hidden.py)."""
    previous = None
    while previous != text:
        previous = text
        text = _GROUP_WITH_DIGITS.sub(lambda m: "(…)" if m.group(0)[0] == "(" else "[…]", text)
    return text


def last_call() -> Call | None:
    return _LAST_CALL.get()


_IMMUTABLE = (int, float, bool, str, bytes, tuple, type(None), torch.Generator)


def _snapshot(value):
    if type(value) in _IMMUTABLE:  # the common case, kept fast: some checks call the learner thousands of times
        return None
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (list, dict, bytearray, set)):
        try:
            return copy.deepcopy(value)
        except Exception:  # something that cannot be copied cannot be compared either
            return None
    return None


def _same(before, after) -> bool:
    if isinstance(before, torch.Tensor):
        if not isinstance(after, torch.Tensor) or before.shape != after.shape or before.dtype != after.dtype:
            return False
        if before.is_floating_point() or before.is_complex():
            return bool(((before == after) | (before.isnan() & after.isnan())).all())
        return torch.equal(before, after)
    if isinstance(before, dict):
        return isinstance(after, dict) and before.keys() == after.keys() \
            and all(_same(before[k], after[k]) for k in before)
    if isinstance(before, (list, tuple)):
        return isinstance(after, (list, tuple)) and len(before) == len(after) \
            and all(_same(a, b) for a, b in zip(before, after))
    try:
        return bool(before == after)
    except Exception:
        return True


def _stub_owner(name: str, exc: BaseException) -> str | None:
    """Which function's stub raised NotImplementedError: ``name`` itself, a graded helper it
    calls, or None when the traceback does not say (the grader's sandbox sends none)."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.name == name or frame.name in GRADED:
            return frame.name
    return None


def argument_modified(name: str, arg: str) -> CheckFailed:
    """The failure of a function that changed its argument ``arg`` in place (the self-check sees
    the change; the grader's sandbox reports it, because there the function works on copies)."""
    detail = (f"{name} modified an argument in place: `{arg}` changed during the call. A graded function must "
              "leave its inputs untouched (the caller still needs them): build new tensors or lists "
              "(x = x - m, torch.cat, .clone(), list(ids)) instead of in-place operations "
              "(x -= m, x[i] = ..., .add_(), masked_fill_, list.pop).")
    return CheckFailed(detail, reason=detail, what=name, detail=detail)


def call_learner(fn: Callable, *args, name: str | None = None, **kwargs):
    """Call the learner's ``fn``; turn NotImplementedError, crashes and in-place changes of the
    arguments into a CheckFailed that says what happened and the likely mistake."""
    name = name or getattr(fn, "__name__", "your function")
    call = crashes.bind(name, fn, args, kwargs)
    _LAST_CALL.set(call)
    before = {k: _snapshot(v) for k, v in call.args.items()}
    try:
        result = fn(*args, **kwargs)
    except NotImplementedError as exc:
        owner = _stub_owner(name, exc)
        if owner and owner != name:
            raise NotAttempted(f"{owner}: not attempted yet ({name} calls it). Replace `raise NotImplementedError()` "
                               f"in {owner} with your code, then rerun this cell.") from None
        failure = NotAttempted(
            f"{name}: not attempted yet. Replace `raise NotImplementedError()` with your code, then rerun this cell.")
        failure.stub_known = owner == name  # False: perhaps a helper's stub (helper-first will look)
        raise failure from None
    except CheckFailed:  # already a verdict about the call (the grader's proxy: an argument changed in place)
        raise
    except Exception as exc:  # the learner's code failed: explain, keep the original as the cause
        raise crash_failure(call, exc) from exc
    for arg, old in before.items():  # call.args holds the very objects the learner received
        if old is not None and not _same(old, call.args[arg]):
            raise argument_modified(name, arg)
    return result


def crash_failure(call: Call, exc: BaseException) -> CheckFailed:
    """A CheckFailed for a learner function that raised ``exc``: argument names and shapes, the
    exception, and the likely mistake behind it."""
    kind = type(exc).__name__
    text = str(exc).strip().split("\n")[0]
    text = text.removeprefix(f"{kind}: ")  # the grader's re-raised exceptions may carry their type name
    if len(text) > 400:
        text = text[:400] + " …"
    shown = ", ".join(f"{k}={crashes.describe(v)}" for k, v in call.args.items())
    hint = crashes.explain(kind, text, call)
    message = f"{call.name}({shown}) raised {kind}: {text}"
    # The exception's own text is the learner's: it may echo the inputs, so a hidden test shows
    # only its type and our explanation.
    reason = f"{call.name} raised {kind}"
    if hint:
        message += f" — likely cause: {hint}"
        reason += f" — likely cause: {redact(hint)}"
    failure = CheckFailed(message, reason=reason, level=PATTERN if hint else BARE, what=call.name,
                          detail=f"raised {kind}: {text}" + (f" — likely cause: {hint}" if hint else ""))
    # A function that raised would raise again under a property's probes; one that hung would hang
    # again (and cost the grader a restart each time): say so, so that diagnosing does not call it again.
    failure.crashed = True
    failure.kind, failure.hint = kind, hint  # a hidden test shows these, never the exception's own text
    failure.hung = kind in ("TimeoutError", "StepTimeout") or "did not return within" in text
    return failure


# ----------------------------------------------------------------------------- comparing


def _inputs(inputs: dict[str, Any] | None) -> dict[str, Any]:
    if inputs is not None:
        return inputs
    call = _LAST_CALL.get()
    return call.args if call is not None else {}


def expect_close(
    actual,
    expected: torch.Tensor,
    *,
    what: str,
    diagnoses: Iterable[Diagnosis] | Callable[[], Iterable[Diagnosis]] = (),
    atol: float | None = None,
    rtol: float | None = None,
    inputs: dict[str, Any] | None = None,
    fallback: str | None = None,
) -> None:
    """Raise CheckFailed unless ``actual`` is a tensor equal to ``expected`` within tolerance.

    Checks, in order: type, shape, dtype, values. On a value mismatch the named wrong
    variants (``diagnoses``, which may be a callable so they are computed only on failure)
    are tried first; then NaN/inf; then generic patterns of the difference, described with
    the names of ``inputs`` (by default the arguments of the last learner call); then
    ``fallback`` (a known-values check's reason); then "values differ".
    """
    named_inputs = _inputs(inputs)
    if not isinstance(actual, torch.Tensor):
        got = type(actual).__name__
        if isinstance(actual, tuple) and actual and isinstance(actual[0], torch.Tensor):
            got += f" of {len(actual)} tensors: return only the tensor, not a tuple"
        raise fail(what, f"expected a torch.Tensor, got {got}.")
    if tuple(actual.shape) != tuple(expected.shape):
        why = patterns.shape_mismatch(tuple(actual.shape), tuple(expected.shape), named_inputs)
        detail = f"expected shape {tuple(expected.shape)}, got {tuple(actual.shape)}" + (f": {why}" if why else ".")
        raise CheckFailed(f"{what}: {detail}",
                          reason="the result has the wrong shape" + (f": {redact(why)}" if why else "."),
                          level=PATTERN if why else BARE, what=what, detail=detail)
    if actual.dtype != expected.dtype:
        raise fail(what, patterns.dtype_mismatch(actual.dtype, expected.dtype, named_inputs))
    default_atol, default_rtol = TOLERANCES.get(expected.dtype, (1e-6, 1e-5))
    atol = default_atol if atol is None else atol
    rtol = default_rtol if rtol is None else rtol
    a, e = actual.detach().double(), expected.detach().double()
    # NaN matches NaN only where NaN can be the answer: when an input holds NaN or ±inf. With finite
    # inputs, a NaN in the expected value is never the answer (its oracle saw inputs something poisoned).
    nan_can_be_right = any(isinstance(x, torch.Tensor) and (x.is_floating_point() or x.is_complex())
                           and not bool(torch.isfinite(x).all()) for x in named_inputs.values())
    if torch.allclose(a, e, atol=atol, rtol=rtol, equal_nan=nan_can_be_right):
        return
    if callable(diagnoses):
        diagnoses = diagnoses()
    for wrong, message in diagnoses:
        if wrong is not None and wrong.shape == a.shape and torch.allclose(
            a, wrong.detach().double(), atol=atol, rtol=rtol, equal_nan=True
        ):
            raise fail(what, message)
    bad_nan = torch.isnan(a) & ~torch.isnan(e)
    if bad_nan.any():
        where = patterns.localize(bad_nan)
        big = [n for n, x in named_inputs.items() if isinstance(x, torch.Tensor) and x.is_floating_point()
               and torch.isfinite(x).any() and x[torch.isfinite(x)].abs().max() > 80]
        cause = (f"exp overflowed for the large values in `{big[0]}` (inf − inf = NaN): subtract the maximum before exp"
                 if big else "NaN comes from 0/0 (a sum, count or variance that is 0: add eps or guard the division) "
                 "or from inf − inf (an overflow)")
        detail = (f"your result has NaN at {int(bad_nan.sum())} position(s) where the answer is finite"
                  + (f" ({where})" if where else "") + f"; {cause}.")
        raise CheckFailed(f"{what}: {detail}", reason=f"your result has NaN where the answer is finite; {cause}.",
                          level=PATTERN, what=what, detail=detail)
    bad_inf = torch.isinf(a) & ~torch.isinf(e)
    if bad_inf.any():
        detail = (f"your result has inf at {int(bad_inf.sum())} position(s) where the answer is finite: an overflow "
                  "(exp of a large number, a division by a tiny value, or a fill value too large for the dtype).")
        raise CheckFailed(f"{what}: {detail}", reason="your result has inf where the answer is finite (an overflow).",
                          level=PATTERN, what=what, detail=detail)
    if expected.dtype == torch.bool:
        pattern = patterns.bool_mismatch(actual.detach(), expected.detach())
    else:
        pattern = patterns.tensor_mismatch(a, e, atol=atol, rtol=rtol, inputs=named_inputs)
    if pattern:
        raise CheckFailed(f"{what}: {pattern}", reason=redact(pattern), level=PATTERN, what=what, detail=pattern)
    if fallback:
        raise fail(what, fallback, level=PATTERN)
    worst = (a - e).abs().nan_to_num(0.0).max().item()
    detail = f"values differ from the expected answer (largest difference {worst:.3g})."
    raise CheckFailed(f"{what}: {detail}", reason="values differ from the expected answer.", level=BARE,
                      what=what, detail=detail)


def expect_equal(got, want, what: str, diagnoses: Callable[[], Iterable[tuple[object, str]]] = lambda: []) -> None:
    """Raise CheckFailed unless ``got == want`` (lists, strings, dicts, numbers); named wrong
    variants first, then a generic description of the difference."""
    if got == want:
        return
    for wrong, message in diagnoses():
        if got == wrong:
            raise fail(what, message)
    pattern = None
    if isinstance(want, list) and isinstance(got, list):
        pattern = patterns.sequence_mismatch(got, want)
    elif isinstance(want, str) and isinstance(got, str):
        pattern = patterns.text_mismatch(got, want)
    shown = f"expected {short(want)}, got {short(got)}."
    if pattern:
        detail = pattern if isinstance(want, str) else f"{pattern} ({shown})"
        raise CheckFailed(f"{what}: {detail}", reason=redact(pattern), level=PATTERN, what=what, detail=detail)
    raise CheckFailed(f"{what}: {shown}", reason="the result differs from the expected answer.", level=BARE,
                      what=what, detail=shown)


def short(x, limit: int = 300) -> str:
    s = repr(x)
    if len(s) <= limit:
        return s
    return s[:limit] + (f"... ({len(x)} items)" if hasattr(x, "__len__") else "...")


def expect_pair(result, *, what: str, names: Sequence[str] = ("output", "weights"),
                shapes: Sequence[tuple[int, ...]] | None = None) -> tuple:
    """Check that ``result`` is a tuple of ``len(names)`` items and return it; with the expected
    ``shapes``, a result in the wrong order is named as such."""
    if not isinstance(result, tuple) or len(result) != len(names):
        got = f"a {type(result).__name__}" + (f" of length {len(result)}" if isinstance(result, (tuple, list)) else "")
        hint = " (a list: return a tuple)" if isinstance(result, list) and len(result) == len(names) else ""
        raise fail(what, f"expected a tuple ({', '.join(names)}), got {got}{hint}.")
    if shapes is not None and all(isinstance(r, torch.Tensor) for r in result):
        got_shapes = [tuple(r.shape) for r in result]
        want = [tuple(s) for s in shapes]
        if got_shapes != want and sorted(got_shapes) == sorted(want) and len(set(want)) == len(want):
            order = [names[want.index(s)] for s in got_shapes]
            raise fail(what, f"the results are in the wrong order: you returned ({', '.join(order)}); return "
                             f"({', '.join(names)}).")
    return result


__all__ = ["BARE", "PATTERN", "NAMED", "TOLERANCES", "CheckFailed", "NotAttempted", "Diag", "Diagnosis", "Reread",
           "call_learner", "crash_failure", "expect_close", "expect_equal", "expect_pair", "explain_points", "fail",
           "last_call",
           "redact", "report_all", "short"]
