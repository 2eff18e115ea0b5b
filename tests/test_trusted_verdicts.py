"""The trusted verifier agrees with the notebooks: for every assignment the reference
solution, submitted as a learner would, passes every test through the sandbox, and the
untouched exercise passes none (each reported as not attempted)."""

from __future__ import annotations

import nbformat
import pytest

from autograder.course import SOLUTIONS, assignments
from autograder.verify import Reference, verify
from notebook_tools import learner_notebook, solution_cell_ids

pytestmark = [pytest.mark.slow]


@pytest.mark.parametrize("assignment", assignments())
def test_reference_answers_pass_every_test_through_the_sandbox(assignment, tmp_path):
    nb = learner_notebook(assignment, {gid: "reference" for gid in solution_cell_ids(assignment)})
    nbformat.write(nb, tmp_path / "submission.ipynb")
    verdicts = verify(SOLUTIONS / assignment / f"{assignment}.ipynb", tmp_path / "submission.ipynb", assignment)
    failed = {gid: v.message for gid, v in verdicts.tests.items() if not v.passed}
    assert failed == {}
    assert set(verdicts.tests) == {gid for gid, _, _ in Reference.load(SOLUTIONS / assignment / f"{assignment}.ipynb").tests}
    assert verdicts.cell_errors == {}


@pytest.mark.parametrize("assignment", assignments())
def test_untouched_exercise_fails_every_test_as_not_attempted(assignment, tmp_path):
    nbformat.write(learner_notebook(assignment, {}), tmp_path / "submission.ipynb")
    verdicts = verify(SOLUTIONS / assignment / f"{assignment}.ipynb", tmp_path / "submission.ipynb", assignment)
    assert verdicts.tests and all(not v.passed for v in verdicts.tests.values())
    assert all("not attempted" in v.message for v in verdicts.tests.values()), \
        {g: v.message for g, v in verdicts.tests.items()}
