"""Test helpers: execute notebooks and build learner submissions from the reference solution."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent

SOLUTION_BLOCK = re.compile(r"[ \t]*### BEGIN SOLUTION\n(.*?)[ \t]*### END SOLUTION\n?", re.S)
STUB = re.compile(r"[ \t]*# YOUR CODE HERE\n[ \t]*raise NotImplementedError\(\)\n?")


def execute(nb: nbformat.NotebookNode, cwd: Path, *, allow_errors: bool, timeout: int = 300) -> nbformat.NotebookNode:
    """Run ``nb`` in a fresh python3 kernel with ``cwd`` as working folder; return the executed copy."""
    nb = copy.deepcopy(nb)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=allow_errors,
                   resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def grade_id(cell) -> str | None:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


def errors_by_cell(nb) -> dict[str, tuple[str, str]]:
    """grade_id -> (exception name, message) for every executed cell that raised."""
    out = {}
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error":
                out[grade_id(cell) or "?"] = (o["ename"], o["evalue"])
    return out


def reference_answers(assignment: str) -> dict[str, str]:
    """grade_id -> reference code (between the solution markers) for each answer cell."""
    nb = nbformat.read(REPO / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)
    answers = {}
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("solution"):
            answers[grade_id(cell)] = cell.source
    return answers


def learner_notebook(assignment: str, answers: dict[str, str]) -> nbformat.NotebookNode:
    """The released exercise with some answer cells filled in, as a learner would submit it.

    ``answers`` maps grade_id -> either "reference" (the reference body), or the full
    new source of that cell.
    """
    nb = nbformat.read(REPO / "exercises" / assignment / f"{assignment}.ipynb", as_version=4)
    refs = reference_answers(assignment)
    for cell in nb.cells:
        gid = grade_id(cell)
        if gid in answers:
            if answers[gid] == "reference":
                body = SOLUTION_BLOCK.search(refs[gid]).group(1)
                cell.source = STUB.sub(lambda _, body=body: body, cell.source)
            else:
                cell.source = answers[gid]
    return nb


def solution_cell_ids(assignment: str) -> list[str]:
    return list(reference_answers(assignment))


def reference_namespace(assignment: str) -> dict:
    """The names the reference solution defines: its locked setup cells and answer cells, executed
    (what a learner's kernel holds after running a finished notebook, test cells aside)."""
    import contextlib
    import io

    nb = nbformat.read(REPO / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)
    ns: dict = {"__name__": "__main__"}
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type == "code" and (meta.get("solution") or (meta.get("locked") and not meta.get("grade"))):
            with contextlib.redirect_stdout(io.StringIO()):
                exec(cell.source, ns)  # noqa: S102 - the course's own reference solution
    return ns
