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
    assert set(verdicts.tests) == {
        gid for gid, _, _ in Reference.load(SOLUTIONS / assignment / f"{assignment}.ipynb").tests}
    assert verdicts.cell_errors == {}


@pytest.mark.parametrize("assignment", assignments())
def test_untouched_exercise_fails_every_test_as_not_attempted(assignment, tmp_path):
    nbformat.write(learner_notebook(assignment, {}), tmp_path / "submission.ipynb")
    verdicts = verify(SOLUTIONS / assignment / f"{assignment}.ipynb", tmp_path / "submission.ipynb", assignment)
    assert verdicts.tests and all(not v.passed for v in verdicts.tests.values())
    assert all("not attempted" in v.message for v in verdicts.tests.values()), \
        {g: v.message for g, v in verdicts.tests.items()}


def test_hidden_failure_messages_hide_the_inputs():
    """A hidden test's message keeps our wording and nothing the inputs decided: not even the dim
    a diagnosis names, nor a shape, nor the numbers of an explicit reason."""
    from autograder.verify import _failure_message
    from qkv.checks import CheckFailed

    explicit = CheckFailed("softmax(x of shape (7, 3), dim=0): softmax was taken over dim=1.",
                           reason="softmax was taken over dim=1.")
    shown = _failure_message(explicit, hidden=True)
    assert shown.startswith(
        "Your function passed the visible tests but failed a hidden test: softmax was taken over dim=")
    assert "1" not in shown and "7" not in shown
    implicit = CheckFailed("mlm_mask: labels must have the shape of input_ids (3, 100), got (3, 99) at [4, 17]")
    shown = _failure_message(implicit, hidden=True)
    assert "100" not in shown and "17" not in shown and "99" not in shown
    assert "labels must have the shape of input_ids" in shown
    assert "(3, 100)" in _failure_message(implicit, hidden=False)  # visible tests show everything
