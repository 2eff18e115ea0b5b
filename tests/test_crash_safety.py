"""A grading run killed with SIGKILL partway through is rerun to the same grades, and a
manual grade entered before the run survives."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbgrader.api import Gradebook

from notebook_tools import learner_notebook

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("grading")]

RIGHT = {"softmax": "reference", "scaled_dot_product_attention": "reference", "additive_attention": "reference"}
NO_SCALE = ("def scaled_dot_product_attention(q, k, v, mask=None):\n"
            "    w = softmax(q @ k.transpose(-2, -1), dim=-1)\n    return w @ v, w")
CLASS = {
    "ada": RIGHT,
    "ben": {"softmax": "reference", "scaled_dot_product_attention": NO_SCALE},
    "cy": {**RIGHT, "additive_attention": "def additive_attention(:\n    pass"},
    "dan": RIGHT,
    "eli": {**RIGHT, "softmax": "def softmax(x, dim=-1):\n    return x.exp() / x.exp().sum()"},
    "fay": {},
}


def _write_class(folder: Path, students) -> Path:
    for student in students:
        (folder / student).mkdir(parents=True)
        nbformat.write(learner_notebook("attention", CLASS[student]), folder / student / "attention.ipynb")
    return folder


def _grade(subs: Path, out: Path, **popen):
    return subprocess.Popen([sys.executable, "-m", "autograder", "grade", "attention", str(subs), "--out", str(out),
                             "--quiet", "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)


def _rows(out: Path) -> dict[str, tuple]:
    return {r["student_id"]: (float(r["score"]), r["status"]) for r in csv.DictReader(open(out / "grades.csv"))}


def test_killed_run_reruns_to_the_same_grades_and_keeps_manual_grades(tmp_path):
    subs = _write_class(tmp_path / "subs", CLASS)
    baseline_out = tmp_path / "baseline"
    assert _grade(subs, baseline_out).wait(timeout=900) == 0
    baseline = _rows(baseline_out)
    # Independent expectation (points: softmax 3, sdpa 3, sdpa masks 2, additive 3). eli's softmax
    # normalizes over every element, and both attention functions call it: nothing passes.
    assert baseline == {"ada": (11, "graded"), "ben": (3, "graded"), "cy": (8, "graded"), "dan": (11, "graded"),
                        "eli": (0, "graded"), "fay": (0, "graded")}

    # The instructor graded ben once and gave partial credit by hand.
    out = tmp_path / "out"
    assert _grade(_write_class(tmp_path / "first", ["ben"]), out).wait(timeout=600) == 0
    with Gradebook(f"sqlite:///{out / 'course' / 'gradebook.db'}") as gb:
        grade = gb.find_grade("test_scaled_dot_product_attention", "attention", "attention", "ben")
        grade.manual_score = 1.5
        gb.db.commit()

    # A full run, killed once two more students have verdicts.
    run = _grade(subs, out, start_new_session=True)
    verdicts = out / "course" / "verdicts"
    deadline = time.monotonic() + 600
    while len(list(verdicts.glob("*.json"))) < 3 and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.2)
    assert run.poll() is None, "the run finished before it could be killed; the test proves nothing"
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()

    rerun = _grade(subs, out)
    assert rerun.wait(timeout=900) == 0, rerun.stderr.read()[-3000:]
    final = _rows(out)
    assert final == {**baseline, "ben": (3 + 1.5, "graded")}
    with Gradebook(f"sqlite:///{out / 'course' / 'gradebook.db'}") as gb:
        assert gb.find_grade("test_scaled_dot_product_attention", "attention", "attention", "ben").manual_score == 1.5
        assert gb.find_submission("attention", "ada").score == 11
