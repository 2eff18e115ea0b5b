"""The diagnoses reach the grader's verdicts: learner notebooks with unlisted mistakes, graded by
``autograder.verify`` through the sandbox (learner functions are proxies there, and exceptions come
back as built-in types carrying only their message)."""

from __future__ import annotations

import nbformat
import pytest

from autograder.course import SOLUTIONS
from autograder.verify import verify
from notebook_tools import learner_notebook, solution_cell_ids

pytestmark = [pytest.mark.slow]

MHA_WITHOUT_HEAD_AXIS = '''
def multi_head_attention(query, key, value, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias,
                         n_heads, mask=None):
    w_q, w_k, w_v = in_proj_weight.chunk(3)
    b_q, b_k, b_v = (None, None, None) if in_proj_bias is None else in_proj_bias.chunk(3)
    q = split_heads(torch.nn.functional.linear(query, w_q, b_q), n_heads)
    k = split_heads(torch.nn.functional.linear(key, w_k, b_k), n_heads)
    v = split_heads(torch.nn.functional.linear(value, w_v, b_v), n_heads)
    logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        logits = logits.masked_fill(~mask.bool(), float("-inf"))      # no head axis
    weights = torch.softmax(logits, dim=-1)
    return torch.nn.functional.linear(merge_heads(weights @ v), out_proj_weight, out_proj_bias), weights.mean(dim=1)
'''

NAIVE_SOFTMAX = '''
def softmax(x, dim=-1):
    e = torch.exp(x)
    return e / e.sum(dim=dim, keepdim=True)
'''


def _grade(tmp_path, assignment: str, answers: dict) -> dict:
    full = {gid: "reference" for gid in solution_cell_ids(assignment)}
    full.update(answers)
    nbformat.write(learner_notebook(assignment, full), tmp_path / "submission.ipynb")
    verdicts = verify(SOLUTIONS / assignment / f"{assignment}.ipynb", tmp_path / "submission.ipynb", assignment)
    return {gid: v for gid, v in verdicts.tests.items()}


def test_a_mask_without_head_axis_is_explained(tmp_path):
    """The issue's example: a raw broadcast error before; now the arguments and the fix."""
    verdicts = _grade(tmp_path, "multihead", {"multi_head_attention": MHA_WITHOUT_HEAD_AXIS})
    failed = {gid: v.message for gid, v in verdicts.items() if not v.passed}
    assert set(failed) == {"test_multi_head_attention_masks"}, failed
    message = failed["test_multi_head_attention_masks"]
    assert "mask=(2, 1, 6) bool" in message and "mask[:, None]" in message, message
    assert "RuntimeError: RuntimeError" not in message


def test_a_broken_softmax_is_blamed_in_the_attention_tests(tmp_path):
    verdicts = _grade(tmp_path, "attention", {"softmax": NAIVE_SOFTMAX})
    failed = {gid: v.message for gid, v in verdicts.items() if not v.passed}
    assert "test_softmax" in failed
    blamed = [gid for gid, m in failed.items() if "your `softmax` fails its own check" in m]
    assert blamed and all(gid.startswith(("test_scaled_dot_product_attention", "test_additive"))
                          for gid in blamed), failed


NOAM_FOR_512_ONLY = '''
def noam_lr(step, d_model, warmup):
    return 512 ** -0.5 * min(step ** -0.5, step * warmup ** -1.5)   # d_model fixed at the visible test's value
'''


def test_a_hidden_failure_names_the_section_to_reread_and_a_visible_one_its_diagnosiss_own(tmp_path):
    """Every failed test's verdict names a section: a hidden test's too (the section reveals no
    input); where the diagnosis has its own section it wins over the function's; a banned call's
    zero names none (the section would not help)."""
    verdicts = _grade(tmp_path, "transformer", {"noam_lr": NOAM_FOR_512_ONLY})
    failed = {gid: v for gid, v in verdicts.items() if not v.passed}
    assert set(failed) == {"test_noam_lr"}, {g: v.message for g, v in failed.items()}
    noam = failed["test_noam_lr"]
    assert noam.message.startswith("Your function passed the visible tests but failed a hidden test")
    assert (noam.reread_chapter, noam.reread_heading) == ("transformer",
                                                          "What learning-rate schedule does the Transformer use?")
    assert all(not v.reread_heading for v in verdicts.values() if v.passed)
    attention = _grade(tmp_path, "attention", {"scaled_dot_product_attention": '''
def scaled_dot_product_attention(q, k, v, mask=None):
    w = softmax(q @ k.transpose(-2, -1), dim=-1)   # the learner's softmax, without the 1/sqrt(d_k)
    return w @ v, w
''', "additive_attention": '''
def additive_attention(q, k, v, w_q, w_k, w_v, mask=None):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v), None   # banned in this chapter
'''})
    unscaled = attention["test_scaled_dot_product_attention"]
    assert not unscaled.passed
    assert (unscaled.reread_chapter, unscaled.reread_heading) == (
        "scaling", "Why does attention divide the logits by √d_k?")
    banned = attention["test_additive_attention"]
    assert banned.banned and not banned.reread_heading
