"""Turn one failing check into the best diagnosis: helpers first, then properties, all reported.

A chapter marks each check with the graded function it checks::

    @check_of("scaled_dot_product_attention")
    def check_sdpa(sdpa, q, k, v, mask=None): ...

When the check fails, :func:`diagnose` improves the failure, in this order of specificity:

1. **Helpers first.** Each helper declared for the function (``declare(..., helpers=("softmax",))``)
   is looked up among the names the test cell can see (the learner's notebook namespace in a
   self-check, the grader's proxies in grading) and put through its own quick ``self_check``.
   A helper that fails it is the root cause: "your `softmax` fails its own check (...);
   scaled_dot_product_attention uses it: fix softmax first".
2. **The check's own named diagnosis**, when it recognised a known mistake (level ``NAMED``).
3. **Properties** (``declare(..., properties=...)``), evaluated only when no known mistake was
   recognised: facts every correct answer satisfies ("each row of the weights sums to 1",
   "changing a future token does not change earlier outputs"). Every violated one is reported.
4. **The generic description** of the difference, when it says more than "values differ".

All findings that apply are reported, the most specific first; the first one's book section
becomes the failure's ``reread``.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from typing import Any

from qkv.checks.core import BARE, NAMED, PATTERN, CheckFailed, NotAttempted, redact
from qkv.checks.registry import spec_of


class Probe:
    """What a property sees: the learner's function, the failing check's inputs by parameter
    name (``probe.inputs["q"]``), and :meth:`call` to run the learner's function again."""

    def __init__(self, fn: Callable, name: str, inputs: dict[str, Any]):
        self.fn, self.name, self.inputs = fn, name, inputs

    def call(self, *args, **kwargs):
        from qkv.checks.core import call_learner

        return call_learner(self.fn, *args, name=self.name, **kwargs)

    def get(self, key: str, default=None):
        return self.inputs.get(key, default)


def _learner_namespace(frame) -> dict:
    """The namespace of the test cell that called the check: the learner's functions (or the
    grader's proxies for them). Frames of qkv's own modules are not a learner's namespace."""
    while frame is not None and str(frame.f_globals.get("__name__", "")).startswith("qkv.checks"):
        frame = frame.f_back
    return frame.f_globals if frame is not None else {}


def helper_findings(function: str, namespace: dict) -> list[tuple[str, CheckFailed]]:
    """(helper name, its failure) for every declared helper of ``function`` that fails its self-check."""
    spec = spec_of(function)
    out = []
    for helper in (spec.helpers if spec else ()):
        fn = namespace.get(helper)
        helper_spec = spec_of(helper)
        if not callable(fn) or helper_spec is None or helper_spec.self_check is None:
            continue
        try:
            helper_spec.self_check(fn)
        except CheckFailed as failure:
            out.append((helper, failure))
        except Exception:  # noqa: BLE001 - a self-check that cannot run blames nobody
            continue
    return out


def property_findings(function: str, fn: Callable, inputs: dict[str, Any]) -> list[tuple[str, Any]]:
    """(message, reread) for every declared property of ``function`` that ``fn`` breaks."""
    spec = spec_of(function)
    out = []
    probe = Probe(fn, function, inputs)
    for prop in (spec.properties if spec else ()):
        try:
            broken = prop.broken(probe)
        except CheckFailed as failure:
            if getattr(failure, "hung", False):
                break  # the function hangs on a probe: do not probe it again
            continue
        except Exception:  # noqa: BLE001 - a property that cannot be evaluated says nothing
            continue
        if broken:
            out.append((broken, getattr(broken, "reread", None) or prop.reread))
    return out


def diagnose(function: str, failure: CheckFailed, fn: Callable | None, inputs: dict[str, Any],
             namespace: dict) -> CheckFailed:
    """The improved failure (or ``failure`` itself when there is nothing to add)."""
    if getattr(failure, "diagnosed", False) or getattr(failure, "hung", False):
        return failure  # a hang is explained by its own message; probing would hang again
    helpers = helper_findings(function, namespace)
    not_attempted = [(h, f) for h, f in helpers if isinstance(f, NotAttempted)]
    if isinstance(failure, NotAttempted):
        # The function is unfinished or calls an unfinished helper: say which, nothing else.
        if not_attempted and failure.detail.startswith(function) and not getattr(failure, "stub_known", True):
            h, f = not_attempted[0]
            out = NotAttempted(f"{h}: not attempted yet ({function} calls it). Replace `raise NotImplementedError()` "
                               f"in {h} with your code, then rerun this cell.")
            out.diagnosed = True
            return out
        failure.diagnosed = True
        return failure
    # A function that calls an unfinished helper would have stopped with "not attempted" itself:
    # this one failed otherwise, so it does not call that helper, which is then not to blame.
    helpers = [(h, f) for h, f in helpers if not isinstance(f, NotAttempted)]
    findings: list[tuple[str, str, Any]] = []  # (message, input-free reason, reread)
    for helper, f in helpers:
        text = (f"your `{helper}` fails its own check ({f.detail.rstrip('.')}); {function} uses it, so fix {helper} "
                "first and rerun.")
        findings.append((text, redact(text) if not f.explicit_reason else
                         f"your `{helper}` fails its own check ({f.reason.rstrip('.')}); {function} uses it, so fix "
                         f"{helper} first.", f.reread))
    own = (failure.detail, failure.reason if failure.explicit_reason else redact(failure.detail), failure.reread)
    props = []
    # A broken helper explains the failure: its consequences (properties, the generic description)
    # would only repeat it. A known mistake of the function itself is independent of it: keep it.
    if failure.level < NAMED and fn is not None and not helpers and not getattr(failure, "crashed", False):
        props = property_findings(function, fn, inputs)
    if helpers and failure.level == NAMED:
        # Possibly a consequence of the broken helper, possibly a mistake of its own: say it second.
        names = " and ".join(h for h, _ in helpers)
        findings.append((f"once {names} is fixed, check this too: {own[0]}",
                         f"once {names} is fixed, check this too: {own[1]}", own[2]))
    elif failure.level == NAMED or not (helpers or props):
        findings.append(own)
    else:
        findings += [(m, redact(m), r) for m, r in props]
    if len(findings) == 1 and findings[0] is own:
        failure.diagnosed = True
        return failure
    texts = list(dict.fromkeys(t for t, _, _ in findings))
    reasons = list(dict.fromkeys(r for _, r, _ in findings))
    detail = texts[0] if len(texts) == 1 else " ".join([texts[0]] + [f"Also: {t}" for t in texts[1:]])
    reason = reasons[0] if len(reasons) == 1 else " ".join([reasons[0]] + [f"Also: {r}" for r in reasons[1:]])
    what = failure.what or function
    level = NAMED if (helpers or props or failure.level == NAMED) else failure.level
    out = CheckFailed(f"{what}: {detail}", reason=reason, reread=findings[0][2] or failure.reread, level=level,
                      what=what, detail=detail)
    out.diagnosed = True
    return out


def check_of(function: str):
    """Decorate a check of graded function ``function``: on failure, :func:`diagnose` it.

    The check's first parameter must be the learner's function; its other parameters are
    the inputs that properties see (by name).
    """

    def wrap(check: Callable) -> Callable:
        signature = inspect.signature(check)

        @functools.wraps(check)
        def wrapper(*args, **kwargs):
            try:
                return check(*args, **kwargs)
            except CheckFailed as failure:
                try:
                    bound = signature.bind(*args, **kwargs)
                    bound.apply_defaults()
                    values = dict(bound.arguments)
                except TypeError:
                    values = {}
                fn = values.pop(next(iter(signature.parameters)), None) if values else None
                namespace = _learner_namespace(sys._getframe(1))
                try:
                    better = diagnose(function, failure, fn if callable(fn) else None, values, namespace)
                except Exception:  # noqa: BLE001 - diagnosing must never hide the original failure
                    better = failure
                if better is failure:
                    raise
                raise better from failure.__cause__

        wrapper.checks = function
        return wrapper

    return wrap


__all__ = ["BARE", "NAMED", "PATTERN", "Probe", "check_of", "diagnose", "helper_findings", "property_findings"]
