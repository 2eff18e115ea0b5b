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
import copy
import dataclasses
import importlib
import io
from dataclasses import dataclass
from pathlib import Path

import nbformat

import qkv.notebook_contract as contract
from autograder import banned as banned_calls
from autograder import static_scan
from autograder.hidden import hidden_failure_message
from autograder.learner_process import LearnerProcess, proxy
from autograder.sandbox import Limits
from autograder.verdicts import CellVerdict, Verdicts, cache_key, learner_cell_id

# ------------------------------------------------------------------------- notebook parts


@dataclass
class Reference:
    """What the grader takes from the trusted source notebook."""

    setup: list[str]  # locked non-test code cells, in order (imports)
    answers: dict[str, list[str]]  # answer grade_id -> graded names it defines
    tests: list[tuple[str, float, str]]  # (grade_id, points, source with hidden tests)
    order: list[str]  # grade_ids of every nbgrader cell, in order
    roles: dict[str, dict]  # grade_id -> its nbgrader metadata (and cell type)

    @classmethod
    def load(cls, path: Path) -> Reference:
        nb = nbformat.read(path, as_version=4)
        setup, answers, tests, order, roles = [], {}, [], [], {}
        for cell in nb.cells:
            meta = contract.nbgrader(cell)
            if meta.get("grade_id"):
                order.append(meta["grade_id"])
                roles[meta["grade_id"]] = {**meta, "cell_type": cell.cell_type}
            if contract.is_answer_cell(cell):
                answers[meta["grade_id"]] = contract.defined_names(cell.source)
            elif contract.is_test_cell(cell):
                tests.append((meta["grade_id"], float(meta.get("points", 0)), cell.source))
            elif contract.is_locked_setup_cell(cell):
                setup.append(cell.source)
        return cls(setup, answers, tests, order, roles)

    @property
    def graded_names(self) -> list[str]:
        return [name for names in self.answers.values() for name in names]

    def function_of(self, test_id: str) -> str | None:
        """The graded function a test cell tests, from its name ``test_<function>[_aspect]``."""
        return contract.function_of(test_id, self.graded_names)


def learner_cells(reference: Reference, submission, notes: list[str] | None = None) -> list[dict]:
    """The code to load in the sandbox: the reference's locked setup cells, the learner's
    answer cells and any cells the learner added, in the submission's order. Test cells are
    never taken from the submission (they may have been edited)."""
    cells, seen_setup = [], False
    # A learner may split or copy an answer cell (its id comes along): the answer is the cell that
    # defines the function; copies and ids the release does not have run as the learner's own
    # cells, in their place (the same rule nbgrader's recording gets: NormalizeGradeIds).
    submission = copy.deepcopy(submission)
    # A copy of a test or locked cell is never the learner's code, whichever copy keeps the id.
    released = {i for i, cell in enumerate(submission.cells)
                if (gid := contract.nbgrader(cell).get("grade_id")) in reference.roles and gid not in reference.answers}
    (notes if notes is not None else []).extend(contract.normalize_grade_ids(submission.cells, reference.roles))
    answers = {i for gid, i in contract.answer_cells(submission.cells).items() if gid in reference.answers}
    for i, cell in enumerate(submission.cells):
        # A self-check cell is skipped whatever it says (its code never runs): loading it would run
        # the learner-side checker in the sandbox and flag ``import qkv`` as a banned call.
        if cell.cell_type != "code" or contract.is_self_check_cell(cell):
            continue
        meta = contract.nbgrader(cell)
        gid = meta.get("grade_id")
        if gid in reference.answers and i in answers:
            cells.append({"id": gid, "source": cell.source})
        elif gid in reference.answers:
            cells.append({"id": learner_cell_id(i), "source": cell.source})
        elif meta.get("grade") or (gid and gid in reference.order) or i in released:
            if not seen_setup:  # the trusted setup goes where the first locked cell was
                cells.extend({"id": f"setup-{j}", "source": s} for j, s in enumerate(reference.setup))
                seen_setup = True
        else:
            cells.append({"id": learner_cell_id(i), "source": cell.source})
    if not seen_setup:
        cells[:0] = [{"id": f"setup-{j}", "source": s} for j, s in enumerate(reference.setup)]
    return cells


def _banned_stub(name: str):
    def banned_function(*args, **kwargs):
        raise RuntimeError(f"{name} uses a banned call and is not run")

    banned_function.__name__ = name
    return banned_function


# ------------------------------------------------------------------------- verification


def _failure_message(exc: BaseException, hidden: bool) -> str:
    if hidden:  # nothing derived from the hidden inputs: our fixed wording only (autograder/hidden.py)
        return hidden_failure_message(exc)
    text = str(exc) or type(exc).__name__
    return text if type(exc).__name__ in ("CheckFailed", "NotAttempted") else f"{type(exc).__name__}: {text}"


def verify(source_nb: Path, submission_nb: Path, assignment: str, limits: Limits = Limits()) -> Verdicts:
    """Grade every test cell of the reference against the learner's functions.

    The visible part of every test cell runs first, then the hidden parts (each in the namespace its
    own visible part left): the learner's process has seen no hidden input before the last message
    that may quote its output in full is written, and a hidden failure says only what our fixed
    wording says (autograder/hidden.py).

    Raises InfrastructureError (autograder.sandbox) when the sandbox itself fails: that is never
    a learner's score, and the caller must not record or cache anything for this submission."""
    reference = Reference.load(source_nb)
    submission = nbformat.read(submission_nb, as_version=4)
    verdicts = Verdicts(key=cache_key(source_nb, submission_nb, limits))
    cells = learner_cells(reference, submission, verdicts.notes)

    # Banned names, read from what will run and penalised only where a graded function reaches them.
    table = banned_for_assignment(assignment)
    banned_names = {name: table.get("*", []) + table.get(name, []) for name in reference.graded_names}
    scanned = static_scan.scan(cells, banned_names, frozenset(c["id"] for c in cells if c["id"].startswith("setup-")))
    for cell in cells:
        cell["source"] = scanned.runnable[cell["id"]]  # exactly the code that was read
    verdicts.cell_errors.update(scanned.problems)
    banned_by_function = {name: [u.describe() for u in uses] for name, uses in scanned.uses.items() if uses}

    from qkv.checks.registry import spec_of  # the exercise's parameter names, for messages

    arg_names = {name: spec.args for name in reference.graded_names if (spec := spec_of(name)) is not None}
    process = LearnerProcess(cells, limits, verdicts.notes, verdicts.cell_errors, banned_names,
                             arg_names=arg_names, in_place=banned_calls.in_place_for(assignment))
    namespace: dict = {"__name__": "__qkv_grader__"}
    try:
        for setup in reference.setup:
            exec(compile(setup, "<reference setup>", "exec"), namespace)
        for name in reference.graded_names:
            namespace[name] = _banned_stub(name) if name in banned_by_function else proxy(process, name)
        hidden_parts = []
        for test_id, points, source in reference.tests:
            visible, hidden = contract.split_hidden(source)
            # A banned function's tests still run (they may set up names later cells use),
            # against a stub; the verdict is a 0 that says why.
            verdicts.tests[test_id] = _run_part(test_id, points, visible, namespace, hidden=False)
            if process.failure is not None:  # ours, whatever the test code made of it: never a verdict
                raise process.failure
            if hidden.strip() and verdicts.tests[test_id].passed:
                hidden_parts.append((test_id, points, hidden, dict(namespace)))
        for test_id, points, hidden, snapshot in hidden_parts:
            verdict = _run_part(test_id, points, hidden, snapshot, hidden=True)
            if process.failure is not None:
                raise process.failure
            if not verdict.passed:
                verdict.output = verdicts.tests[test_id].output  # what the visible part printed
                verdicts.tests[test_id] = verdict
        # Banned names reachable from a function, and what it reached at run time, cost all of its
        # tests (a hidden test may be the first to reach it); such a 0 names no section to reread.
        for test_id, points, _ in reference.tests:
            function = reference.function_of(test_id)
            verdicts.tests[test_id] = with_default_reread(verdicts.tests[test_id], assignment, function)
            reasons = [*banned_by_function.get(function, []), *process.reached.get(function, [])]
            if reasons:
                verdicts.tests[test_id] = CellVerdict(
                    test_id, points, False, f"Scored 0: your code {'; '.join(dict.fromkeys(reasons))}.", banned=True)
    finally:
        process.close()
    if process.skipped:
        verdicts.notes.append(f"{len(process.skipped)} cell(s) hung or crashed the grader's process and were skipped")
    if process.out_of_time:
        verdicts.notes.append(f"the notebook used up its time budget of {limits.submission_seconds:g} s; "
                              "the tests that had not run yet failed")
    return verdicts


def _run_part(test_id: str, points: float, code: str, namespace: dict, hidden: bool) -> CellVerdict:
    """Run one part of a test cell; a hidden part's printed output is never kept."""
    printed = io.StringIO()
    label = f"<{test_id}{' hidden' if hidden else ''}>"
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(code, label, "exec"), namespace)
    except Exception as exc:
        # The section names no input of a hidden test: it is given as for a visible one.
        return CellVerdict(test_id, points, False, _failure_message(exc, hidden=hidden),
                           "" if hidden else printed.getvalue()[-4000:], **_reread_of(exc))
    return CellVerdict(test_id, points, True, "", "" if hidden else printed.getvalue()[-4000:])


def _reread_of(exc: BaseException) -> dict[str, str]:
    """The section the failing diagnosis names (``CheckFailed.reread``, set by our own checks in
    this process), as CellVerdict fields; {} when it names none."""
    reread = getattr(exc, "reread", None)
    chapter, heading = getattr(reread, "chapter", None), getattr(reread, "heading", None)
    if isinstance(chapter, str) and isinstance(heading, str) and chapter and heading:
        return {"reread_chapter": chapter, "reread_heading": heading}
    return {}


def with_default_reread(verdict: CellVerdict, chapter: str, function: str | None) -> CellVerdict:
    """A failed ``verdict`` that names no section gets ``function``'s own (``REREAD`` in
    ``qkv/checks/<chapter>.py``), when there is one."""
    if verdict.passed or verdict.reread_heading or function is None:
        return verdict
    try:
        heading = getattr(importlib.import_module(f"qkv.checks.{chapter}"), "REREAD", {}).get(function, "")
    except (ImportError, ValueError):  # an assignment that is not one of the book's chapters
        heading = ""
    return dataclasses.replace(verdict, reread_chapter=chapter, reread_heading=heading) if heading else verdict


def banned_for_assignment(assignment: str) -> dict[str, list[str]]:
    return banned_calls.banned_for(assignment)
