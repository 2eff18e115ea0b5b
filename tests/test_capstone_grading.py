"""Grading the capstone with every protection: the sandbox, hidden tests, banned calls, diagnoses.

Scores are reasoned from the reference's test cells (points: forward 3 + causal 2 + tied 2 +
cache 3, train_step 4 + tied 2 + learns 3, generate 3 + cache 3 = 25), not read off a run.
"""

from __future__ import annotations

import csv
import subprocess
import sys

import nbformat
import pytest

from notebook_tools import SOLUTION_BLOCK, learner_notebook, reference_answers, solution_cell_ids

pytestmark = [pytest.mark.slow]

MAX = 25
ALL_REFERENCE = {gid: "reference" for gid in solution_cell_ids("capstone")}


def _reference_body(gid: str) -> str:
    return SOLUTION_BLOCK.search(reference_answers("capstone")[gid]).group(1)


def _answer_with(gid: str, old: str, new: str) -> str:
    """The reference answer cell ``gid`` with one line changed: a deliberate mistake."""
    source = reference_answers("capstone")[gid]
    assert old in source, f"the reference {gid} no longer contains {old!r}: update this test"
    return SOLUTION_BLOCK.sub(lambda m: m.group(1), source.replace(old, new))


# generate returns only the new tokens: both generate tests fail on the shape, nothing else changes.
ONLY_NEW_TOKENS = _answer_with("generate", "    return tokens\n", "    return tokens[:, prompt_ids.shape[1]:]\n")
# The continuation through the cache is rotated from position 0: forward without a cache is right
# (forward, causal, tied pass), the cache test fails, and cached generation goes wrong (both generate tests).
RESTARTED_POSITIONS = _answer_with("forward", "positions = torch.arange(past, past + t)", "positions = torch.arange(t)")
# Adam from torch.optim: a banned call, so every train_step test scores 0 and is flagged.
TORCH_ADAM = '''
def train_step(params, config, tokens, lr, state=None):
    leaves = {k: t.detach().clone().requires_grad_(True) for k, t in params.items()}
    opt = torch.optim.Adam(list(leaves.values()), lr=lr, betas=config["adam_betas"], eps=config["adam_eps"])
    logits, _ = forward(leaves, config, tokens[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
    loss.backward()
    opt.step()
    return {k: t.detach() for k, t in leaves.items()}, {"step": 1, "m": {}, "v": {}}, loss.item()
'''

# A hostile learner reaches for the library's own forward through the modules the setup cell
# imported: qkv.gpt is never imported in the sandbox, so there is nothing to reach.
LIBRARY_FORWARD = '''
def forward(params, config, tokens, cache=None):
    import sys
    return sys.modules["q" + "kv.gpt"].forward(params, config, tokens, cache)
'''


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("capstone-class")
    subs = root / "submissions"
    students = {
        "ada": ALL_REFERENCE,
        "ben": {**ALL_REFERENCE, "generate": ONLY_NEW_TOKENS},
        "cy": {**ALL_REFERENCE, "train_step": TORCH_ADAM},
        "dee": {},
        "eve": {**ALL_REFERENCE, "forward": RESTARTED_POSITIONS},
        "fay": {**ALL_REFERENCE, "forward": LIBRARY_FORWARD},
    }
    for student, answers in students.items():
        (subs / student).mkdir(parents=True)
        nbformat.write(learner_notebook("capstone", answers), subs / student / "capstone.ipynb")
    out = root / "out"
    proc = subprocess.run([sys.executable, "-m", "autograder", "grade", "capstone", str(subs), "--out", str(out),
                           "--workers", "2"], capture_output=True, text=True, timeout=1800)
    rows = {}
    if (out / "grades.csv").exists():
        with open(out / "grades.csv") as f:
            rows = {r["student_id"]: r for r in csv.DictReader(f)}
    return proc, rows, out


def test_the_run_completes(graded):
    proc, rows, _ = graded
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "6 submissions: 6 graded, 0 errors, 1 rejected cheats" in proc.stdout


@pytest.mark.parametrize("student, score", [
    ("ada", MAX),           # the reference: full marks
    ("ben", MAX - 6),       # generate returns only the new tokens: generate 3 + generate_cache 3 lost
    ("cy", MAX - 9),        # torch.optim is banned: train_step 4 + tied 2 + learns 3 lost
    ("dee", 0),             # the untouched exercise
    ("eve", MAX - 3 - 6),   # positions restart in the cache: forward_cache 3, generate 3, generate_cache 3 lost
    ("fay", 0),             # forward raises (no qkv.gpt to borrow), and every other function calls it
])
def test_scores(graded, student, score):
    _, rows, _ = graded
    assert (float(rows[student]["score"]), float(rows[student]["max_score"]), rows[student]["status"]) == \
        (score, MAX, "graded")


def test_feedback_names_the_mistake_without_leaking_hidden_tests(graded):
    _, _, out = graded
    page = lambda student: (out / "feedback" / student / "capstone.html").read_text()  # noqa: E731
    assert "not only the new tokens" in page("ben")
    assert "torch.optim" in page("cy") and "implement yourself" in page("cy")
    assert "rotated as if they started at position 0" in page("eve")
    assert "not attempted" in page("dee")
    assert "forward(params (18 tensors), config, tensor" in page("fay") and "raised KeyError" in page("fay")
    for student in ("ada", "ben", "cy", "dee", "eve", "fay"):
        text = page(student)
        assert "BEGIN HIDDEN TESTS" not in text and "_cfg" not in text  # hidden-test source never shown
