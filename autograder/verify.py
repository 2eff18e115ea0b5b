"""Trusted verdicts: run the reference's test cells against a learner's functions
that live in a sandbox.

The test cells (visible and hidden) come from ``solutions/`` and run here, in the
grader's own process with its own, unpatched torch and numpy. Each graded function
name is bound to a proxy: calling it sends the arguments to the sandboxed process,
which calls the learner's function and sends back plain data (wire.py). The
learner's code therefore never runs in the process that decides the verdict.
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat

import qkv.notebook_contract as contract
from autograder import banned as banned_calls
from autograder.learner_process import LearnerProcess, proxy
from autograder.sandbox import Limits
from autograder.verdicts import CellVerdict, Verdicts, cache_key

# ------------------------------------------------------------------------- notebook parts


@dataclass
class Reference:
    """What the grader takes from the trusted source notebook."""

    setup: list[str]  # locked non-test code cells, in order (imports)
    answers: dict[str, list[str]]  # answer grade_id -> graded names it defines
    tests: list[tuple[str, float, str]]  # (grade_id, points, source with hidden tests)
    order: list[str]  # grade_ids of every nbgrader cell, in order

    @classmethod
    def load(cls, path: Path) -> Reference:
        nb = nbformat.read(path, as_version=4)
        setup, answers, tests, order = [], {}, [], []
        for cell in nb.cells:
            meta = contract.nbgrader(cell)
            if meta.get("grade_id"):
                order.append(meta["grade_id"])
            if contract.is_answer_cell(cell):
                answers[meta["grade_id"]] = contract.defined_names(cell.source)
            elif contract.is_test_cell(cell):
                tests.append((meta["grade_id"], float(meta.get("points", 0)), cell.source))
            elif contract.is_locked_setup_cell(cell):
                setup.append(cell.source)
        return cls(setup, answers, tests, order)

    @property
    def graded_names(self) -> list[str]:
        return [name for names in self.answers.values() for name in names]

    def function_of(self, test_id: str) -> str | None:
        """The graded function a test cell tests, from its name ``test_<function>[_aspect]``."""
        return contract.function_of(test_id, self.graded_names)


def learner_cells(reference: Reference, submission) -> list[dict]:
    """The code to load in the sandbox: the reference's locked setup cells, the learner's
    answer cells and any cells the learner added, in the submission's order. Test cells are
    never taken from the submission (they may have been edited)."""
    cells, seen_setup = [], False
    for i, cell in enumerate(submission.cells):
        # A self-check cell is skipped whatever it says (its code never runs): loading it would run
        # the learner-side checker in the sandbox and flag ``import qkv`` as a banned call.
        if cell.cell_type != "code" or contract.is_self_check_cell(cell):
            continue
        meta = contract.nbgrader(cell)
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


def _banned_stub(name: str):
    def banned_function(*args, **kwargs):
        raise RuntimeError(f"{name} uses a banned call and is not run")

    banned_function.__name__ = name
    return banned_function


# ------------------------------------------------------------------------- verification

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
    """Grade every test cell of the reference against the learner's functions.

    Raises InfrastructureError (autograder.sandbox) when the sandbox itself fails: that is never
    a learner's score, and the caller must not record or cache anything for this submission."""
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

    banned_names = {name: table.get("*", []) + table.get(name, []) for name in reference.graded_names}
    process = LearnerProcess(cells, limits, verdicts.notes, verdicts.cell_errors, banned_names)
    namespace: dict = {"__name__": "__qkv_grader__"}
    try:
        for setup in reference.setup:
            exec(compile(setup, "<reference setup>", "exec"), namespace)
        for name in reference.graded_names:
            namespace[name] = _banned_stub(name) if name in banned_by_function else proxy(process, name)
        for test_id, points, source in reference.tests:
            visible, hidden = contract.split_hidden(source)
            # A banned function's tests still run (they may set up names later cells use),
            # against a stub; the verdict is a 0 that says why.
            verdict = _run_test(test_id, points, visible, hidden, namespace)
            if process.failure is not None:  # ours, whatever the test code made of it: never a verdict
                raise process.failure
            function = reference.function_of(test_id)
            if function in banned_by_function:
                reasons = "; ".join(dict.fromkeys(banned_by_function[function]))
                verdict = CellVerdict(test_id, points, False, f"Scored 0: your code {reasons}.", banned=True)
            verdicts.tests[test_id] = verdict
        # The second layer: what a function reached at run time costs all of its tests, as a
        # banned name found in its code does (a hidden test may be the first to reach it).
        for test_id, points, _ in reference.tests:
            function = reference.function_of(test_id)
            if process.reached.get(function) and not verdicts.tests[test_id].banned:
                reasons = "; ".join(process.reached[function])
                verdicts.tests[test_id] = CellVerdict(test_id, points, False, f"Scored 0: your code {reasons}.",
                                                      banned=True)
    finally:
        process.close()
    if process.skipped:
        verdicts.notes.append(f"{len(process.skipped)} cell(s) hung or crashed the grader's process and were skipped")
    if process.out_of_time:
        verdicts.notes.append(f"the notebook used up its time budget of {limits.submission_seconds:g} s; "
                              "the tests that had not run yet failed")
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
