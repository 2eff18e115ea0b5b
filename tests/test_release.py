"""exercises/ is generated from solutions/ and leaks nothing."""

from __future__ import annotations

import re

import nbformat
import pytest

from autograder.course import EXERCISES, SOLUTIONS, assignments
from autograder.release import stale_exercises
from notebook_tools import SOLUTION_BLOCK, reference_answers

ASSIGNMENTS = assignments()


def test_every_solution_has_an_exercise():
    assert sorted(p.name for p in EXERCISES.iterdir() if p.is_dir() and not p.name.startswith(".")) == ASSIGNMENTS


@pytest.mark.slow
def test_exercises_are_up_to_date():
    assert stale_exercises() == [], "exercises/ differs from a fresh release: run `make exercises` and commit"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_exercise_contains_no_solution_code_or_hidden_tests(assignment):
    text = (EXERCISES / assignment / f"{assignment}.ipynb").read_text()
    assert not re.search(r"BEGIN (SOLUTION|HIDDEN TESTS)|END (SOLUTION|HIDDEN TESTS)", text)
    nb = nbformat.read(EXERCISES / assignment / f"{assignment}.ipynb", as_version=4)
    released_code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for gid, source in reference_answers(assignment).items():
        body = SOLUTION_BLOCK.search(source).group(1)
        for line in body.splitlines():
            line = line.strip()
            if len(line) > 25 and not line.startswith("#"):
                assert line not in released_code, f"{gid}: solution line leaked into the exercise: {line}"
    solution_nb = nbformat.read(SOLUTIONS / assignment / f"{assignment}.ipynb", as_version=4)
    hidden = [c.source for c in solution_nb.cells if "BEGIN HIDDEN TESTS" in c.source]
    assert hidden, "the reference has no hidden tests"
    for source in hidden:
        block = source.split("### BEGIN HIDDEN TESTS", 1)[1].split("### END HIDDEN TESTS", 1)[0]
        for line in block.splitlines():
            if len(line.strip()) > 30:
                assert line.strip() not in released_code, f"hidden test leaked: {line.strip()}"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_every_answer_cell_is_a_stub_in_the_exercise(assignment):
    nb = nbformat.read(EXERCISES / assignment / f"{assignment}.ipynb", as_version=4)
    answers = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")]
    assert answers and all("raise NotImplementedError()" in c.source for c in answers)
    tests = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
    assert tests and all(c.metadata.nbgrader.get("locked") for c in tests)
