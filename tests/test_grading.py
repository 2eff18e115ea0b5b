"""The instructor's grading command on a small class with known, independently reasoned scores."""

from __future__ import annotations

import csv
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest

from notebook_tools import learner_notebook

ALL_REFERENCE = {"softmax": "reference", "scaled_dot_product_attention": "reference", "additive_attention": "reference"}
# Points per test cell in solutions/attention: softmax 3, sdpa 3, sdpa masks 2, additive 3.
MAX = 11

NO_SCALE_SDPA = '''
def scaled_dot_product_attention(q, k, v, mask=None):
    logits = q @ k.transpose(-2, -1)          # forgot the 1/sqrt(d_k)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    weights = softmax(logits, dim=-1)
    return weights @ v, weights
'''


def _write(nb, folder: Path, name="attention.ipynb") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / name)
    return folder / name


@pytest.fixture(scope="module")
def graded_class(tmp_path_factory):
    root = tmp_path_factory.mktemp("class")
    subs = root / "submissions"
    _write(learner_notebook("attention", ALL_REFERENCE), subs / "ada")
    _write(learner_notebook("attention", {"softmax": "reference", "scaled_dot_product_attention": NO_SCALE_SDPA}), subs / "ben")
    _write(learner_notebook("attention", {**ALL_REFERENCE, "additive_attention": "def additive_attention(q, k, v,:\n    pass"}), subs / "cy")
    (subs / "dee").mkdir()
    (subs / "dee" / "attention.ipynb").write_text('{"cells": [ {"cell_type": "code", ')  # truncated upload
    (subs / "eve").mkdir()
    (subs / "eve" / "notes.txt").write_text("I could not finish")
    zipped = _write(learner_notebook("attention", ALL_REFERENCE), root / "zipsrc" / "fay")
    with zipfile.ZipFile(subs / "fay.zip", "w") as zf:
        zf.write(zipped, "fay/attention.ipynb")
    _write(learner_notebook("attention", {}), subs / "gus")  # the untouched exercise
    _write(learner_notebook("attention", ALL_REFERENCE), subs / "hal", name="attention (1).ipynb")

    out = root / "out"
    proc = subprocess.run([sys.executable, "-m", "autograder", "grade", "attention", str(subs), "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    rows = list(csv.DictReader(open(out / "grades.csv"))) if (out / "grades.csv").exists() else []
    return proc, {r["student_id"]: r for r in rows}, out


def test_run_completes_with_exit_code_zero(graded_class):
    proc, _, _ = graded_class
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_csv_has_the_documented_header(graded_class):
    _, _, out = graded_class
    assert open(out / "grades.csv").readline().strip() == "student_id,assignment,score,max_score,status,message"


@pytest.mark.parametrize("student, score, status", [
    ("ada", MAX, "graded"),     # every function correct
    ("ben", 3, "graded"),       # softmax right; attention unscaled fails both attention tests; additive not attempted
    ("cy", MAX - 3, "graded"),  # a syntax error in the additive cell loses that test only
    ("dee", 0, "error"),        # not JSON
    ("eve", 0, "error"),        # no notebook at all
    ("fay", MAX, "graded"),     # submitted as a zip
    ("gus", 0, "graded"),       # the untouched exercise
    ("hal", MAX, "graded"),     # the right notebook under another name
])
def test_expected_scores(graded_class, student, score, status):
    _, rows, _ = graded_class
    row = rows[student]
    assert (float(row["score"]), float(row["max_score"]), row["status"]) == (score, MAX, status)
    assert row["assignment"] == "attention"


def test_errors_are_explained(graded_class):
    proc, rows, _ = graded_class
    assert "not valid notebook JSON" in rows["dee"]["message"]
    assert "no notebook" in rows["eve"]["message"] and "attention.ipynb" in rows["eve"]["message"]
    assert "attention (1).ipynb" in rows["hal"]["message"]
    printed = proc.stdout + proc.stderr
    assert "error: dee:" in printed and "error: eve:" in printed
    assert "8 submissions: 6 graded, 2 errors, 0 rejected cheats" in proc.stdout


def test_feedback_written_for_each_graded_student(graded_class):
    _, rows, out = graded_class
    for student, row in rows.items():
        page = out / "feedback" / student / "attention.html"
        assert page.exists() == (row["status"] == "graded"), student
    ben = (out / "feedback" / "ben" / "attention.html").read_text()
    assert "without the 1/√d_k scale" in ben  # the diagnosis reaches the learner
    assert "not attempted" in (out / "feedback" / "gus" / "attention.html").read_text()


def test_unknown_assignment_is_a_clear_error(tmp_path):
    (tmp_path / "subs").mkdir()
    proc = subprocess.run([sys.executable, "-m", "autograder", "grade", "nope", str(tmp_path / "subs"), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no assignment 'nope'" in proc.stderr


def test_feedback_pages_work_offline_with_vendored_mathjax(graded_class):
    from bs4 import BeautifulSoup
    from playwright.sync_api import sync_playwright

    _, _, out = graded_class
    page_path = out / "feedback" / "ben" / "attention.html"
    soup = BeautifulSoup(page_path.read_text(), "html.parser")
    sources = [s.get("src") for s in soup.find_all("script") if s.get("src")]
    assert sources and not [s for s in sources if s.startswith(("http:", "https:", "//"))]
    assert (out / "feedback" / "_mathjax" / "tex-mml-chtml.js").is_file()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page()
        page.goto(page_path.as_uri())
        page.wait_for_selector("mjx-container", timeout=30_000)  # the learner sees typeset math
        assert page.locator("mjx-container").count() >= 3
        browser.close()


def test_the_canary_passes_silently_and_leaves_no_trace(graded_class):
    """A normal run checks the reference first (one summary line) and grades nobody else for it."""
    from nbgrader.api import Gradebook

    proc, rows, out = graded_class
    assert "reference solution checked first: full marks" in proc.stdout
    assert "canary" not in proc.stdout + proc.stderr
    assert not [s for s in rows if "canary" in s]
    with Gradebook(f"sqlite:///{out / 'course' / 'gradebook.db'}") as gb:
        assert sorted(s.id for s in gb.students) == sorted(s for s, r in rows.items() if r["status"] == "graded")
    assert not (out / "feedback" / "reference-canary").exists()
