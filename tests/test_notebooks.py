"""Every assignment: the reference solution passes all its tests; the released exercise
runs to the end and every graded test reports "not attempted"."""

from __future__ import annotations

import nbformat
import pytest

from autograder.course import EXERCISES, SOLUTIONS, assignments
from notebook_tools import errors_by_cell, execute, grade_id

ASSIGNMENTS = assignments()


def test_there_is_at_least_one_assignment():
    assert "attention" in ASSIGNMENTS


@pytest.mark.slow
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_solution_passes_every_test(assignment, tmp_path):
    nb = nbformat.read(SOLUTIONS / assignment / f"{assignment}.ipynb", as_version=4)
    executed = execute(nb, tmp_path, allow_errors=True)
    assert errors_by_cell(executed) == {}
    for cell in executed.cells:  # stderr zeroes a test cell in nbgrader: a reference must not print any
        for out in cell.get("outputs", []):
            assert not (out.get("output_type") == "stream" and out.get("name") == "stderr"), \
                f"{grade_id(cell)} wrote to stderr: {out.get('text', '')[:300]}"


@pytest.mark.slow
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_released_exercise_runs_to_the_end_and_reports_not_attempted(assignment, tmp_path):
    nb = nbformat.read(EXERCISES / assignment / f"{assignment}.ipynb", as_version=4)
    executed = execute(nb, tmp_path, allow_errors=True)
    errors = errors_by_cell(executed)
    graded = [grade_id(c) for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
    assert graded, "the assignment has no graded test cells"
    for gid in graded:
        assert gid in errors, f"{gid} passed on an empty exercise: the test cannot fail"
        ename, evalue = errors[gid]
        assert ename == "NotAttempted" and "not attempted" in evalue, f"{gid}: {ename}: {evalue}"
    # Only graded test cells may fail: the answer stubs define functions without running them.
    assert set(errors) == set(graded)
