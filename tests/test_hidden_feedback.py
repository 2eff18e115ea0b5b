"""Hidden tests stay hidden (#15 item 9; grading-threat-model.md, guarantee 5).

The reference's hidden tests are replaced by ones whose inputs are recognisable (d_k = 37, 4242.0,
batch 13, ...). Hostile learners pass every visible test and then, on seeing a hidden input, try
every way a text could carry it to their feedback: their own exception text, an exception class
named after it, printed output, their exit status, a non-plain return value named after it, and
wrong answers whose diagnosis would name it ("divided by d_k = 37"). Every text the verdicts hold
for the learner (messages, printed output, notes, cell errors) is searched for the inputs.
"""

from __future__ import annotations

import re

import nbformat
import pytest

from autograder.course import SOLUTIONS
from autograder.verify import verify
from notebook_tools import learner_notebook

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("grading")]

# Recognisable hidden inputs: no visible test uses these sizes or values.
HIDDEN = {
    "test_softmax": "check.check_softmax(softmax, torch.arange(37.0).reshape(1, 37) * 0.29 + 4242.0, dim=-1)",
    "test_scaled_dot_product_attention":
        "_q, _k, _v = check.random_attention_inputs((13,), 29, 31, 37, 11, seed=4242)\n"
        "check.check_sdpa(scaled_dot_product_attention, _q, _k, _v)",
    "test_scaled_dot_product_attention_masks":
        "_q, _k, _v = check.random_attention_inputs((13,), 29, 31, 37, 11, seed=4243)\n"
        "check.check_sdpa(scaled_dot_product_attention, _q, _k, _v, torch.arange(31) < 23)",
    "test_additive_attention":
        "_g = torch.Generator().manual_seed(4242)\n"
        "_q, _k, _v = torch.randn(13, 29, 37, generator=_g), torch.randn(13, 31, 41, generator=_g), "
        "torch.randn(13, 31, 11, generator=_g)\n"
        "check.check_additive_attention(additive_attention, _q, _k, _v, torch.randn(37, 43, generator=_g), "
        "torch.randn(41, 43, generator=_g), torch.randn(43, generator=_g))",
}
# What must never reach the learner: the sizes and values above, and the learners' own markers.
SECRETS = re.compile(r"(?<!\d)(?:37|4242|13|29|31|11|41|43|23)(?!\d)|LEAK|Dk|dk37")

SOFTMAX = ("def softmax(x, dim=-1):\n    e = (x - x.amax(dim, keepdim=True)).exp()\n"
           "    return e / e.sum(dim, keepdim=True)\n")
SDPA = ("import math\n"
        "def _sdpa(q, k, v, mask=None):\n"
        "    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])\n"
        "    if mask is not None:\n"
        "        s = s.masked_fill(~mask, float('-inf'))\n"
        "    w = softmax(s, -1).nan_to_num(0.0)\n"
        "    return w @ v, w\n")
ADDITIVE = ("def _additive(q, k, v, w_q, w_k, w_v, mask=None):\n"
            "    s = torch.tanh((q @ w_q).unsqueeze(-2) + (k @ w_k).unsqueeze(-3)) @ w_v\n"
            "    if mask is not None:\n"
            "        s = s.masked_fill(~mask, float('-inf'))\n"
            "    w = softmax(s, -1).nan_to_num(0.0)\n"
            "    return w @ v, w\n")


def _learner(softmax_hidden: str, sdpa_hidden: str, additive_hidden: str) -> dict[str, str]:
    """Answers right on every visible input; on a hidden one (a last dimension of 37) each runs
    its ``*_hidden`` statement instead."""
    return {
        "softmax": SOFTMAX.replace("def softmax", "def _softmax") +
                   f"def softmax(x, dim=-1):\n    if x.shape[-1] == 37:\n        {softmax_hidden}\n"
                   "    return _softmax(x, dim)",
        "scaled_dot_product_attention": SDPA +
            f"def scaled_dot_product_attention(q, k, v, mask=None):\n    if q.shape[-1] == 37:\n        {sdpa_hidden}\n"
            "    return _sdpa(q, k, v, mask)",
        "additive_attention": ADDITIVE +
            "def additive_attention(q, k, v, w_q, w_k, w_v, mask=None):\n"
            f"    if q.shape[-1] == 37:\n        {additive_hidden}\n"
            "    return _additive(q, k, v, w_q, w_k, w_v, mask)",
    }


LEARNERS = {
    # the learner's own text, echoing the inputs
    "echo": _learner(
        "raise ValueError(f'LEAK shape={tuple(x.shape)} first={x.flatten()[0].item()} {x.tolist()}')",
        "print('LEAK', q.shape, q); raise type(f'Dk{q.shape[-1]}Error', (RuntimeError,), {})(f'LEAK {q.shape}')",
        "import os; print('LEAK', q.shape, flush=True); os._exit(q.shape[-1])"),
    # wrong answers whose diagnoses, in a visible test, name the inputs
    "diagnosed": _learner(
        "return x / x.sum(dim, keepdim=True)",
        "s = q @ k.transpose(-2, -1) / q.shape[-1]; w = _softmax(s, -1); return w @ v, w",
        "return _additive(q, k, v, w_q, w_k, w_v, mask)[0].transpose(-2, -1), None"),
    # in-place changes, non-plain values named after the inputs, NaN
    "other": _learner(
        "x.mul_(2); return _softmax(x, dim)",
        "return type(f'dk{q.shape[-1]}', (), {})(), None",
        "return torch.full((*q.shape[:-1], v.shape[-1]), float('nan')), None"),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The attention reference with its hidden tests replaced by the recognisable ones."""
    nb = nbformat.read(SOLUTIONS / "attention" / "attention.ipynb", as_version=4)
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid in HIDDEN:
            visible, _, rest = cell.source.partition("### BEGIN HIDDEN TESTS")
            assert rest, gid
            cell.source = f"{visible}### BEGIN HIDDEN TESTS\n{HIDDEN[gid]}\n### END HIDDEN TESTS"
    path = tmp_path_factory.mktemp("reference") / "attention.ipynb"
    nbformat.write(nb, path)
    return path


def _verify(reference, tmp_path, answers):
    nbformat.write(learner_notebook("attention", answers), tmp_path / "submission.ipynb")
    return verify(reference, tmp_path / "submission.ipynb", "attention")


def test_the_recognisable_hidden_tests_pass_for_the_reference(reference, tmp_path):
    verdicts = _verify(reference, tmp_path, {gid: "reference" for gid in (
        "softmax", "scaled_dot_product_attention", "additive_attention")})
    assert {g: v.message for g, v in verdicts.tests.items() if not v.passed} == {}


@pytest.mark.parametrize("learner", list(LEARNERS))
def test_nothing_derived_from_a_hidden_input_reaches_the_learner(reference, tmp_path, learner):
    verdicts = _verify(reference, tmp_path, LEARNERS[learner])
    # Every function passed its visible tests and failed its hidden one: the hidden inputs were seen.
    for gid, verdict in verdicts.tests.items():
        assert not verdict.passed and verdict.message.startswith(
            "Your function passed the visible tests but failed a hidden test"), (gid, verdict.message)
    texts = [t for v in verdicts.tests.values() for t in (v.message, v.output)]
    texts += list(verdicts.notes) + list(verdicts.cell_errors.values())
    leaks = [t for t in texts if SECRETS.search(t)]
    assert leaks == [], leaks


def test_a_hidden_diagnosis_names_the_mistake_without_the_inputs(reference, tmp_path):
    verdicts = _verify(reference, tmp_path, LEARNERS["diagnosed"])
    message = verdicts.tests["test_scaled_dot_product_attention"].message
    assert "divided by d_k = …" in message and not SECRETS.search(message), message


def test_a_redacted_diagnosis_stays_readable():
    """The checks already replace numbers by "(…)" in a reason; what is left of our wording must
    still read as a sentence, not as words torn out of it (a source piece "(up to " no longer matches)."""
    from autograder.hidden import hidden_safe

    reason = ("masked keys (mask False) still receive weight (…): fill their logits with -inf (or "
              "torch.finfo(dtype).min) *before* the softmax, by replacement.")
    shown = hidden_safe(reason)
    assert shown.startswith("masked keys (mask False) still receive weight (…): fill their logits with -inf"), shown
    # a learner's text glued to ours is cut where our wording ends
    assert hidden_safe("masked keys (mask False) still receive weightLEAK37") == (
        "masked keys (mask False) still receive weight…")
