"""Helpers for the diagnosis tests: run a check as a test cell would, and read its message."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from qkv.checks import CheckFailed


def failure_of(check: Callable, *args, namespace: dict | None = None, **kwargs) -> CheckFailed:
    """The CheckFailed that ``check(*args, **kwargs)`` raises. With ``namespace``, the check is
    called from a test cell whose globals are ``namespace`` (where helpers-first looks up the
    learner's other functions), as in a notebook, ``qkv check`` or the grader."""
    with pytest.raises(CheckFailed) as info:
        if namespace is None:
            check(*args, **kwargs)
        else:
            ns = dict(namespace, _check=check, _args=args, _kwargs=kwargs)
            exec("_check(*_args, **_kwargs)", ns)  # noqa: S102 - a test cell's frame, with these globals
    return info.value


def as_grader_proxy(fn: Callable, name: str) -> Callable:
    """What the grader puts in a test cell's namespace: a function without a signature that re-raises
    a learner exception as the nearest built-in type with only its message (autograder/verify.py,
    LearnerProcess.call): no traceback, no exception subclass, no argument names."""
    builtin = {cls.__name__: cls for cls in (RuntimeError, TypeError, ValueError, IndexError, KeyError,
                                            ZeroDivisionError, AttributeError, NotImplementedError)}

    def learner_function(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - mimic the sandbox boundary
            nearest = next((builtin[c.__name__] for c in type(exc).__mro__ if c.__name__ in builtin), RuntimeError)
            raise nearest(str(exc).strip("'\"") if isinstance(exc, KeyError) else str(exc)) from None

    learner_function.__name__ = learner_function.__qualname__ = name
    return learner_function


def assert_named(failure: CheckFailed, *words: str) -> str:
    """The message names the mistake: it contains every word and is not a bare 'values differ'."""
    text = str(failure)
    assert "values differ from the expected answer" not in text, text
    for word in words:
        assert word.lower() in text.lower(), f"{word!r} not in: {text}"
    return text
