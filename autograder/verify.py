"""Trusted verdicts: run the reference's test cells against a learner's functions
that live in a sandbox.

The test cells (visible and hidden) come from ``solutions/`` and run here, in the
grader's own process with its own, unpatched torch and numpy. Each graded function
name is bound to a proxy: calling it sends the arguments to the sandboxed process,
which calls the learner's function and sends back plain data (wire.py). The
learner's code therefore never runs in the process that decides the verdict.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import io
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat
import torch

from autograder import banned as banned_calls
import atexit

from autograder.sandbox import ChildDied, LearnerException, Limits, Sandbox, SandboxError

VERIFIER_VERSION = "1"  # bump to invalidate cached verdicts when grading logic changes
MAX_RESTARTS = 6
HIDDEN = re.compile(r"^[ \t]*### BEGIN HIDDEN TESTS[ \t]*\n(.*?)^[ \t]*### END HIDDEN TESTS[ \t]*\n?", re.S | re.M)

# Learner exceptions re-raised here as the same built-in type, so checks can diagnose them.
_BUILTIN_ERRORS = {e.__name__: e for e in (RuntimeError, ValueError, TypeError, IndexError, KeyError, NameError,
                                           AttributeError, ZeroDivisionError, AssertionError, OverflowError,
                                           MemoryError, RecursionError, UnboundLocalError, LookupError,
                                           ArithmeticError, OSError, ImportError, ModuleNotFoundError,
                                           UnicodeError, StopIteration, NotImplementedError)}


@dataclass
class CellVerdict:
    grade_id: str
    points: float
    passed: bool
    message: str = ""  # shown to the learner
    output: str = ""  # what the visible tests printed
    banned: bool = False


@dataclass
class Verdicts:
    tests: dict[str, CellVerdict] = field(default_factory=dict)
    cell_errors: dict[str, str] = field(default_factory=dict)  # answer/learner cell -> what went wrong loading it
    notes: list[str] = field(default_factory=list)
    key: str = ""

    def to_json(self) -> str:
        return json.dumps({"tests": {k: asdict(v) for k, v in self.tests.items()}, "cell_errors": self.cell_errors,
                           "notes": self.notes, "key": self.key}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Verdicts":
        data = json.loads(text)
        return cls({k: CellVerdict(**v) for k, v in data["tests"].items()}, data["cell_errors"], data["notes"],
                   data.get("key", ""))

    @property
    def banned(self) -> bool:
        return any(v.banned for v in self.tests.values())


def cache_key(source_nb: Path, submission_nb: Path) -> str:
    h = hashlib.sha256(VERIFIER_VERSION.encode())
    for p in (source_nb, submission_nb):
        h.update(Path(p).read_bytes())
    return h.hexdigest()


# ------------------------------------------------------------------------- notebook parts

def _nbgrader(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def _defined_functions(source: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]


@dataclass
class Reference:
    """What the grader takes from the trusted source notebook."""

    setup: list[str]  # locked non-test code cells, in order (imports)
    answers: dict[str, list[str]]  # answer grade_id -> graded names it defines
    tests: list[tuple[str, float, str]]  # (grade_id, points, source with hidden tests)
    order: list[str]  # grade_ids of every nbgrader cell, in order

    @classmethod
    def load(cls, path: Path) -> "Reference":
        nb = nbformat.read(path, as_version=4)
        setup, answers, tests, order = [], {}, [], []
        for cell in nb.cells:
            meta = _nbgrader(cell)
            if meta.get("grade_id"):
                order.append(meta["grade_id"])
            if cell.cell_type != "code":
                continue
            if meta.get("solution"):
                answers[meta["grade_id"]] = _defined_functions(cell.source)
            elif meta.get("grade"):
                tests.append((meta["grade_id"], float(meta.get("points", 0)), cell.source))
            elif meta.get("locked"):
                setup.append(cell.source)
        return cls(setup, answers, tests, order)

    @property
    def graded_names(self) -> list[str]:
        return [name for names in self.answers.values() for name in names]

    def function_of(self, test_id: str) -> str | None:
        """The graded function a test cell tests, from its name ``test_<function>[_aspect]``."""
        names = sorted(self.graded_names, key=len, reverse=True)
        for name in names:
            if test_id == f"test_{name}" or test_id.startswith(f"test_{name}_"):
                return name
        return None


def _is_self_check(cell) -> bool:
    """A learner-side helper cell (``qkv.check(...)``/``qkv.hint(...)``): see
    :func:`qkv.selfcheck.is_self_check_cell`. Skipping is safe whatever the cell says: a skipped
    cell's code never runs. Loading it would run the learner-side checker in the sandbox and
    flag ``import qkv`` as a banned call."""
    from qkv.selfcheck import is_self_check_cell

    return is_self_check_cell(cell)


def learner_cells(reference: Reference, submission) -> list[dict]:
    """The code to load in the sandbox: the reference's locked setup cells, the learner's
    answer cells and any cells the learner added, in the submission's order. Test cells are
    never taken from the submission (they may have been edited)."""
    cells, seen_setup = [], False
    for i, cell in enumerate(submission.cells):
        if cell.cell_type != "code" or _is_self_check(cell):
            continue
        meta = _nbgrader(cell)
        gid = meta.get("grade_id")
        if gid in reference.answers:
            cells.append({"id": gid, "source": cell.source})
        elif meta.get("grade") or (gid and gid in reference.order):
            if not seen_setup:  # the trusted setup goes where the first locked cell was
                cells.extend({"id": f"setup-{j}", "source": s} for j, s in enumerate(reference.setup))
                seen_setup = True
        else:
            cells.append({"id": f"cell-{i + 1}", "source": cell.source})
    if not seen_setup:
        cells[:0] = [{"id": f"setup-{j}", "source": s} for j, s in enumerate(reference.setup)]
    return cells


# ------------------------------------------------------------------------- the learner's process

class _Zygotes:
    """One warm sandbox per grading process (it has imported torch once); each submission
    runs in a fresh fork of it. A sandbox that hung or misbehaved is replaced."""

    def __init__(self):
        self.sandbox: Sandbox | None = None
        atexit.register(self.close)

    def fresh_child(self, limits: Limits) -> Sandbox:
        if self.sandbox is not None and (not self.sandbox.alive or self.sandbox.limits != limits):
            self.close()
        if self.sandbox is None:
            self.sandbox = Sandbox(limits, zygote=True).__enter__()
        try:
            self.sandbox.fork()
        except SandboxError:
            self.close()
            self.sandbox = Sandbox(limits, zygote=True).__enter__()
            self.sandbox.fork()
        return self.sandbox

    def release(self, sandbox: Sandbox | None) -> None:
        """End the submission's child; drop the sandbox if it is no longer trustworthy."""
        if sandbox is None:
            return
        try:
            if sandbox.alive:
                sandbox.end_child()
        except SandboxError:
            pass
        if not sandbox.alive:
            sandbox.close()
            if sandbox is self.sandbox:
                self.sandbox = None

    def close(self) -> None:
        if self.sandbox is not None:
            self.sandbox.close()
            self.sandbox = None


_ZYGOTES = _Zygotes()


class LearnerProcess:
    """The learner's loaded notebook in a sandbox, restarted (skipping the culprit) after a crash."""

    def __init__(self, cells: list[dict], limits: Limits, notes: list[str], cell_errors: dict[str, str]):
        self.cells, self.limits, self.notes, self.cell_errors = cells, limits, notes, cell_errors
        self.skipped: set[int] = set()
        self.sandbox: Sandbox | None = None
        self.restarts = 0
        self.functions: set[str] = set()

    def close(self) -> None:
        _ZYGOTES.release(self.sandbox)
        self.sandbox = None

    def _start(self) -> None:
        while True:
            if self.restarts > MAX_RESTARTS:
                raise SandboxError("your notebook crashed the grader's process too many times")
            self.close()
            self.sandbox = _ZYGOTES.fresh_child(self.limits)
            active = [c for i, c in enumerate(self.cells) if i not in self.skipped]
            index_map = [i for i in range(len(self.cells)) if i not in self.skipped]
            try:
                errors, names = self.sandbox.load(active)
            except SandboxError as exc:
                self.restarts += 1
                idx = getattr(exc, "cell_index", -1)
                if idx < 0:
                    raise SandboxError(f"the grader's process could not start ({exc})") from None
                culprit = index_map[idx]
                self.skipped.add(culprit)
                what = (f"did not finish within {self.limits.cell_seconds:g} s" if "timeout" in str(exc)
                        else f"ended the process ({exc})")
                self.cell_errors[self.cells[culprit]["id"]] = f"this cell {what}; the grader skipped it"
                continue
            for i, err in zip(index_map, errors):
                if err and self.cells[i]["id"] not in self.cell_errors:
                    if err.get("type") == "Timeout":
                        text = f"this cell did not finish within {self.limits.cell_seconds:g} s and was stopped"
                    else:
                        text = f"this cell raised {err.get('message') or err.get('type')}"
                    self.cell_errors[self.cells[i]["id"]] = text
            self.functions = set(names)
            return

    def call(self, name: str, args: tuple, kwargs: dict):
        if self.sandbox is None or not self.sandbox.alive or not self.sandbox.child_alive:
            self._start()
        if name not in self.functions:
            raise NameError(f"name {name!r} is not defined: its cell did not run (see the message on that cell)")
        try:
            value, new_args, new_kwargs = self.sandbox.call(name, args, kwargs)
        except SandboxError as exc:
            self.restarts += 1
            self.close()
            if "timeout" in str(exc):
                raise TimeoutError(f"{name} did not return within {self.limits.call_seconds:g} s "
                                   "(an infinite loop?)") from None
            raise RuntimeError(f"{name} ended the grader's process: {exc}") from None
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
        _write_back(args, new_args)
        _write_back(kwargs, new_kwargs)
        return value


def _write_back(originals, updated: dict) -> None:
    """Apply in-place changes the learner's function made to tensor/generator arguments."""
    for key, new in updated.items():
        try:
            old = originals[key]
        except (KeyError, IndexError, TypeError):
            continue
        if type(old) is torch.Tensor and type(new) is torch.Tensor and old.shape == new.shape and old.dtype == new.dtype:
            if not torch.equal(old.detach(), new) and not (old.isnan().any() and new.isnan().any()):
                with torch.no_grad():
                    old.copy_(new)
        elif type(old) is torch.Generator and type(new) is torch.Generator:
            old.set_state(new.get_state())


def _banned_stub(name: str):
    def banned_function(*args, **kwargs):
        raise RuntimeError(f"{name} uses a banned call and is not run")

    banned_function.__name__ = name
    return banned_function


def _proxy(process: LearnerProcess, name: str):
    def learner_function(*args, **kwargs):
        return process.call(name, args, kwargs)

    learner_function.__name__ = learner_function.__qualname__ = name
    return learner_function


# ------------------------------------------------------------------------- verification

def _split_hidden(source: str) -> tuple[str, str]:
    hidden = "\n".join(m.group(1) for m in HIDDEN.finditer(source))
    return HIDDEN.sub("", source), hidden


_GROUP_WITH_DIGITS = re.compile(r"\([^()]*\d[^()]*\)|\[[^\[\]]*\d[^\[\]]*\]")


def redact_inputs(message: str) -> str:
    """Hide what a message says about a hidden test's inputs: bracketed groups holding numbers
    (shapes, values, index lists) become (…) / […]; the diagnosis around them stays."""
    previous = None
    while previous != message:  # nested groups: innermost first
        previous = message
        message = _GROUP_WITH_DIGITS.sub(lambda m: "(…)" if m.group(0)[0] == "(" else "[…]", message)
    return message


def _failure_message(exc: BaseException, hidden: bool) -> str:
    reason = getattr(exc, "reason", None)
    if not hidden:
        text = str(exc) or type(exc).__name__
        return text if type(exc).__name__ in ("CheckFailed", "NotAttempted") else f"{type(exc).__name__}: {text}"
    if reason:
        if not getattr(exc, "explicit_reason", False):
            reason = redact_inputs(reason)  # written without a hidden-safe reason: hide its numbers
        return f"Your function passed the visible tests but failed a hidden test: {reason}"
    return f"Your function passed the visible tests but failed a hidden test ({type(exc).__name__})."


def verify(source_nb: Path, submission_nb: Path, assignment: str, limits: Limits = Limits()) -> Verdicts:
    """Grade every test cell of the reference against the learner's functions."""
    reference = Reference.load(source_nb)
    submission = nbformat.read(submission_nb, as_version=4)
    verdicts = Verdicts(key=cache_key(source_nb, submission_nb))
    cells = learner_cells(reference, submission)

    # Banned calls: in an answer cell they cost that function's tests; in a cell the
    # learner added, every function's (a helper may be called from any answer).
    table = banned_for_assignment(assignment)
    banned_by_function: dict[str, list[str]] = {}
    for cell in cells:
        if cell["id"].startswith("setup-"):
            continue
        owners = reference.answers.get(cell["id"], reference.graded_names)
        for name in owners:
            for hit in banned_calls.find(cell["source"], table.get("*", []) + table.get(name, [])):
                banned_by_function.setdefault(name, []).append(hit.describe())

    process = LearnerProcess(cells, limits, verdicts.notes, verdicts.cell_errors)
    namespace: dict = {"__name__": "__qkv_grader__"}
    try:
        for setup in reference.setup:
            exec(compile(setup, "<reference setup>", "exec"), namespace)
        for name in reference.graded_names:
            namespace[name] = _banned_stub(name) if name in banned_by_function else _proxy(process, name)
        for test_id, points, source in reference.tests:
            visible, hidden = _split_hidden(source)
            # A banned function's tests still run (they may set up names later cells use),
            # against a stub; the verdict is a 0 that says why.
            verdict = _run_test(test_id, points, visible, hidden, namespace)
            function = reference.function_of(test_id)
            if function in banned_by_function:
                reasons = "; ".join(dict.fromkeys(banned_by_function[function]))
                verdict = CellVerdict(test_id, points, False, f"Scored 0: your code {reasons}.", banned=True)
            verdicts.tests[test_id] = verdict
    finally:
        process.close()
    if process.skipped:
        verdicts.notes.append(f"{len(process.skipped)} cell(s) hung or crashed the grader's process and were skipped")
    return verdicts


def _run_test(test_id: str, points: float, visible: str, hidden: str, namespace: dict) -> CellVerdict:
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(visible, f"<{test_id}>", "exec"), namespace)
    except Exception as exc:
        return CellVerdict(test_id, points, False, _failure_message(exc, hidden=False), printed.getvalue()[-4000:])
    if hidden.strip():
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(hidden, f"<{test_id} hidden>", "exec"), namespace)
        except Exception as exc:
            return CellVerdict(test_id, points, False, _failure_message(exc, hidden=True), printed.getvalue()[-4000:])
    return CellVerdict(test_id, points, True, "", printed.getvalue()[-4000:])


def banned_for_assignment(assignment: str) -> dict[str, list[str]]:
    return banned_calls.banned_for(assignment)
