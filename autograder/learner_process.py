"""The life cycle of a submission's sandboxed process: one warm sandbox per grading process, a
fresh learner process per submission, restarts that skip the cell that crashed it, a time budget.

What is the learner's doing and what is ours is decided here:

- the learner process dies, hangs or garbles its channel: ChildDied / ChildTimeout (learner);
  the cell or call that did it fails, and a fresh learner process serves the rest;
- the sandbox cannot start, or its control channel fails: InfrastructureError (ours). It is
  remembered (``failure``) and re-raised by ``verify`` whatever the test code did with it, so it
  can never become a failed test.
"""

from __future__ import annotations

import atexit
import functools
import time

import torch

from autograder.banned import runtime_denials
from autograder.sandbox import (
    BannedAtRunTime,
    BudgetExceeded,
    Child,
    ChildDied,
    ChildTimeout,
    InfrastructureError,
    LearnerException,
    Limits,
    Sandbox,
    SandboxError,
)

MAX_RESTARTS = 6

# Learner exceptions re-raised here as the same built-in type, so checks can diagnose them.
_BUILTIN_ERRORS = {e.__name__: e for e in (RuntimeError, ValueError, TypeError, IndexError, KeyError, NameError,
                                           AttributeError, ZeroDivisionError, AssertionError, OverflowError,
                                           MemoryError, RecursionError, UnboundLocalError, LookupError,
                                           ArithmeticError, OSError, ImportError, ModuleNotFoundError,
                                           UnicodeError, StopIteration, NotImplementedError)}


class _Zygotes:
    """One warm sandbox per grading process (it has imported torch once); each submission runs in
    a fresh learner process forked from it. A sandbox that failed or is not known clean is replaced."""

    def __init__(self):
        self.sandbox: Sandbox | None = None
        atexit.register(self.close)

    def warm(self, limits: Limits) -> None:
        """Start the sandbox now (it imports torch: seconds) rather than on the first submission.
        A failure here is left for that submission to meet, and report, as usual."""
        if self.sandbox is None:
            try:
                self.sandbox = Sandbox(limits).start()
            except InfrastructureError:
                self.sandbox = None

    def fresh_child(self, limits: Limits, deny_ops: dict[str, str], deny_modules) -> Child:
        if self.sandbox is not None and (not self.sandbox.alive or self.sandbox.limits != limits):
            self.close()
        try:
            if self.sandbox is None:
                self.sandbox = Sandbox(limits).start()
            return self.sandbox.fork(deny_ops, deny_modules)
        except InfrastructureError:
            # It may have died between two submissions (the machine's OOM killer, an admin):
            # one fresh sandbox is worth a try; a second failure is reported.
            self.close()
            self.sandbox = Sandbox(limits).start()
            return self.sandbox.fork(deny_ops, deny_modules)

    def release(self, child: Child | None) -> None:
        """End a submission's learner process; drop the sandbox unless the zygote says it is clean."""
        if child is None:
            return
        try:
            child.end()
        except InfrastructureError:
            pass
        if child.sandbox is self.sandbox and not child.sandbox.alive:
            self.close()

    def close(self) -> None:
        if self.sandbox is not None:
            self.sandbox.close()
            self.sandbox = None


_ZYGOTES = _Zygotes()


def warm_sandbox(limits: Limits) -> None:
    """Start this process's sandbox ahead of its first learner process (see ``_Zygotes.warm``)."""
    _ZYGOTES.warm(limits)


class LearnerProcess:
    """The learner's loaded notebook in a sandbox, restarted (skipping the culprit) after a crash.

    A learner process refuses a fixed set of banned operators from its start (sandbox_worker._arm):
    calling a function whose exercise bans a different set starts a fresh process for it."""

    def __init__(self, cells: list[dict], limits: Limits, notes: list[str], cell_errors: dict[str, str],
                 banned: dict[str, list[str]] | None = None, *, arg_names: dict[str, tuple[str, ...]] | None = None,
                 in_place: dict[str, tuple[str, ...]] | None = None):
        """``banned``: graded function -> the dotted names its exercise bans (blocked at run time).
        ``arg_names``: graded function -> its parameter names (for messages). ``in_place``: graded
        function -> the arguments its contract lets it change in place; their new values are
        written back into the grader's objects. Any other change of an argument fails the call."""
        self.cells, self.limits, self.notes, self.cell_errors = cells, limits, notes, cell_errors
        self.denials = {name: runtime_denials(names) for name, names in (banned or {}).items()}
        self.deny_modules = sorted({m for _, modules in self.denials.values() for m in modules} | {"qkv"})
        self.banned_names = banned or {}
        self.arg_names = arg_names or {}
        self.in_place = in_place or {}
        self.child_ops: dict[str, str] | None = None  # the operators the running learner process refuses
        self.reached: dict[str, list[str]] = {}  # function -> banned things it reached at run time
        self.skipped: set[int] = set()
        self.child: Child | None = None
        self.restarts = 0
        self.functions: set[str] = set()
        self.failure: InfrastructureError | None = None  # ours: never a verdict
        self.learner_seconds = 0.0  # time spent waiting for the learner's code
        self.out_of_time = False

    def close(self) -> None:
        _ZYGOTES.release(self.child)
        self.child = None

    # -- the budget: the learner's own time, loads and calls together

    def _budget_deadline(self) -> float:
        return time.monotonic() + max(0.0, self.limits.submission_seconds - self.learner_seconds)

    def _timed(self, fn):
        start = time.monotonic()
        try:
            return fn()
        finally:
            self.learner_seconds += time.monotonic() - start

    def _check_budget(self, name: str) -> None:
        if self.out_of_time or self.learner_seconds >= self.limits.submission_seconds:
            self.out_of_time = True
            raise TimeoutError(f"{name} was not run: your notebook used up the grader's time budget of "
                               f"{self.limits.submission_seconds:g} s (make slow functions faster)")

    def _infrastructure(self, exc: InfrastructureError) -> InfrastructureError:
        self.failure = self.failure or exc
        self.close()
        return self.failure

    # -- loading

    def _start(self, deny_ops: dict[str, str]) -> None:
        while True:
            if self.restarts > MAX_RESTARTS:
                raise SandboxError("your notebook crashed the grader's process too many times")
            self.close()
            try:
                self.child = _ZYGOTES.fresh_child(self.limits, deny_ops, self.deny_modules)
                self.child_ops = dict(deny_ops)
            except InfrastructureError as exc:
                raise self._infrastructure(exc) from None
            active = [c for i, c in enumerate(self.cells) if i not in self.skipped]
            index_map = [i for i in range(len(self.cells)) if i not in self.skipped]
            try:
                errors, names = self._timed(functools.partial(self.child.load, active, self.limits.cell_seconds,
                                                              self._budget_deadline()))
            except InfrastructureError as exc:
                raise self._infrastructure(exc) from None
            except BudgetExceeded:
                self.out_of_time = True
                self.close()
                raise TimeoutError(f"your notebook used up the grader's time budget of "
                                   f"{self.limits.submission_seconds:g} s while its cells were loading") from None
            except SandboxError as exc:
                self.restarts += 1
                self.close()
                if exc.cell_index < 0:  # before the first cell: only our code had run
                    raise self._infrastructure(InfrastructureError(
                        f"a learner process ended before running any cell ({exc})")) from None
                culprit = index_map[max(exc.cell_index, 0)] if index_map else 0
                self.skipped.add(culprit)
                what = (f"did not finish within {self.limits.cell_seconds:g} s" if isinstance(exc, ChildTimeout)
                        else f"ended the process ({exc})")
                self.cell_errors[self.cells[culprit]["id"]] = f"this cell {what}; the grader skipped it"
                continue
            for i, err in zip(index_map, errors):
                if err and self.cells[i]["id"] not in self.cell_errors:
                    if err.get("type") == "Note":
                        text = f"note: {str(err.get('message'))[:1500]}"
                    elif err.get("type") == "Timeout":
                        text = f"this cell did not finish within {self.limits.cell_seconds:g} s and was stopped"
                    else:
                        text = f"this cell raised {str(err.get('message') or err.get('type'))[:2000]}"
                    self.cell_errors[self.cells[i]["id"]] = text
            self.functions = set(names)
            return

    # -- calling

    def call(self, name: str, args: tuple, kwargs: dict):
        if self.failure is not None:
            raise self.failure
        self._check_budget(name)
        ops = self.denials.get(name, ({}, []))[0]
        if self.child is None or self.child.ended is not None or self.child_ops != ops:
            self._start(ops)
        if name not in self.functions:
            raise NameError(f"name {name!r} is not defined: its cell did not run (see the message on that cell)")
        try:
            value, changed = self._timed(
                lambda: self.child.call(name, args, kwargs, self.limits.call_seconds, self._budget_deadline(),
                                        self.banned_names.get(name, [])))
        except InfrastructureError as exc:
            raise self._infrastructure(exc) from None
        except BudgetExceeded:
            self.out_of_time = True
            self.close()
            raise TimeoutError(f"{name} was stopped: your notebook used up the grader's time budget of "
                               f"{self.limits.submission_seconds:g} s") from None
        except ChildTimeout:
            self.restarts += 1
            self.close()
            raise TimeoutError(f"{name} did not return within {self.limits.call_seconds:g} s "
                               "(an infinite loop?)") from None
        except ChildDied as exc:
            self.restarts += 1
            self.close()
            raise RuntimeError(f"{name} ended the grader's process: {exc}") from None
        except BannedAtRunTime as exc:
            seen = self.reached.setdefault(name, [])
            seen += [r for r in exc.reached if r not in seen]
            raise RuntimeError(f"{name} reached a banned operation: {exc}") from None
        except LearnerException as exc:
            if exc.type_name == "NotImplementedError":
                raise NotImplementedError() from None
            if exc.type_name == "Timeout":
                raise TimeoutError(f"{name} did not return within {self.limits.call_seconds:g} s "
                                   "(an infinite loop?)") from None
            if exc.type_name == "NotPlainData":
                raise TypeError(f"{name} returned {exc.message}; return plain tensors, numbers, strings, "
                                "bytes, lists, tuples or dicts") from None
            nearest = next((_BUILTIN_ERRORS[b] for b in exc.bases if b in _BUILTIN_ERRORS), RuntimeError)
            raise nearest(exc.message) from None
        self._apply_changes(name, args, kwargs, changed)
        return value

    def _apply_changes(self, name: str, args: tuple, kwargs: dict, changed: list) -> None:
        """The learner's function worked on copies: the grader's own arguments are untouched, so
        the checks' oracles see exactly what was sent. A change the function's contract allows
        (``in_place``) is written back; any other change of a tensor or container fails the call,
        as it fails in the learner's own notebook; a consumed generator is nobody's business."""
        names = self.arg_names.get(name, ())
        allowed = self.in_place.get(name, ())
        for key, new in changed:
            if isinstance(key, int) and 0 <= key < len(args):
                old, label = args[key], names[key] if key < len(names) else f"argument {key + 1}"
            elif isinstance(key, str) and key in kwargs:
                old, label = kwargs[key], key
            else:
                continue  # not an argument that was sent: a reply that lies hurts only itself
            if label in allowed:
                _write_back(old, new)
            elif type(old) is not torch.Generator:
                from qkv.checks.core import argument_modified

                raise argument_modified(name, label)


def _write_back(old, new) -> None:
    """Apply an in-place change that a function's contract allows to the grader's object."""
    if type(old) is torch.Tensor and type(new) is torch.Tensor and old.shape == new.shape and old.dtype == new.dtype:
        with torch.no_grad():
            old.copy_(new)
    elif type(old) is torch.Generator and type(new) is torch.Generator:
        old.set_state(new.get_state())


def proxy(process: LearnerProcess, name: str):
    """A stand-in for the learner's ``name`` in the grader's namespace: calls it in the sandbox."""
    def learner_function(*args, **kwargs):
        return process.call(name, args, kwargs)

    learner_function.__name__ = learner_function.__qualname__ = name
    return learner_function
