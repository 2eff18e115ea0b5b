"""The instructor's grading command on a small class with known, independently reasoned scores."""

from __future__ import annotations

import csv
import secrets
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


# Markup in a learner's note that would run, or reach the network, if feedback rendered it.
HOSTILE_MARKDOWN = ('My note <script>window.__pwned = 1</script>'
                    '<img src="http://127.0.0.1:9/pixel.png" onerror="window.__pwned = 2">'
                    '<a href="javascript:window.__pwned = 3">click</a> and $\\alpha + \\beta$')


def _write(nb, folder: Path, name="attention.ipynb") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / name)
    return folder / name


@pytest.fixture(scope="module")
def graded_class(tmp_path_factory):
    root = tmp_path_factory.mktemp("class")
    subs = root / "submissions"
    _write(learner_notebook("attention", ALL_REFERENCE), subs / "ada")
    _write(learner_notebook("attention", {"softmax": "reference", "scaled_dot_product_attention": NO_SCALE_SDPA}),
           subs / "ben")
    _write(learner_notebook("attention", {**ALL_REFERENCE,
                                          "additive_attention": "def additive_attention(q, k, v,:\n    pass"}),
           subs / "cy")
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
    proc = subprocess.run([sys.executable, "-m", "autograder", "grade", "attention", str(subs), "--out", str(out),
                           "--lang", "en"], capture_output=True, text=True, timeout=900)
    rows = []
    if (out / "grades.csv").exists():
        with open(out / "grades.csv") as f:
            rows = list(csv.DictReader(f))
    return proc, {r["student_id"]: r for r in rows}, out


def test_run_completes_with_exit_code_zero(graded_class):
    proc, _, _ = graded_class
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_feedback_is_written_by_the_workers(graded_class, tmp_path):
    """The workers write feedback pages; the main process does so only when a worker fails, and
    then says so. (A wrong call signature once sent every page back to the main process, silently.)"""
    proc, _, out = graded_class
    assert "writing feedback in a worker failed" not in proc.stderr
    from autograder.grading import _feedback_job

    course = out / "course"
    outcome = _feedback_job(str(course), str(course / "verdicts"),
                            str(course / "source" / "attention" / "attention.ipynb"),
                            "attention", "ada", str(tmp_path / "feedback"))
    assert outcome.notes == []
    assert "softmax" in (tmp_path / "feedback" / "ada" / "attention.html").read_text(encoding="utf-8")


def test_csv_has_the_documented_header(graded_class):
    _, _, out = graded_class
    with open(out / "grades.csv") as f:
        assert f.readline().strip() == "student_id,assignment,score,max_score,status,message"


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


def _rereads(page: Path) -> list:
    from bs4 import BeautifulSoup

    outputs = BeautifulSoup(page.read_text(), "html.parser").select("div.output_html")
    return [o for o in outputs if o.get_text().strip().startswith("Reread")]


def test_feedback_names_the_section_to_reread_with_a_link_to_the_built_page(graded_class):
    """ben forgot the 1/√d_k scale: his feedback sends him to the scaling chapter's section on
    why attention divides by √d_k (the diagnosis's own section, not the function's default in
    the attention chapter); gus left additive_attention untouched: its own section. The link is
    the built page with the section's anchor, opened from the feedback file; when the book is not
    built the title is there with the command that builds it."""
    from qkv.book_links import REPO

    _, _, out = graded_class
    cases = [("ben", "scaling", "Why does attention divide the logits by √d_k?", "chapter 2, Why divide by √d_k",
              "why-does-attention-divide-the-logits-by-d-k"),
             ("gus", "attention", "Dot-product or additive attention?", "chapter 1, Attention from first principles",
              "dot-product-or-additive-attention")]
    for student, chapter, heading, where, anchor in cases:
        rereads = _rereads(out / "feedback" / student / "attention.html")
        texts = [" ".join(p.get_text().split()) for p in rereads]
        assert any(f"“{heading}” ({where})" in t for t in texts), (student, texts)
        built = REPO / "book" / "_build" / "html" / "chapters" / f"{chapter}.html"
        hrefs = {a["href"] for p in rereads for a in p.find_all("a")}
        if built.is_file():
            assert f"{built.resolve().as_uri()}#{anchor}" in hrefs, hrefs
            assert f'id="{anchor}"' in built.read_text()
        else:
            assert not hrefs and any(f"“{heading}” ({where}) (the book is not built: run make book" in t
                                     for t in texts), texts
    # A passing cell gets no pointer: ada passed everything.
    assert not _rereads(out / "feedback" / "ada" / "attention.html")


def test_the_chinese_edition_names_and_links_the_sections_to_reread(tmp_path):
    """`grade --lang zh_CN`: ben's feedback and the report name the section by its heading in the
    Chinese edition (its message catalog) and link the Chinese edition's page, same anchor (Sphinx
    keeps a translated section's id); the English edition when only that one is built."""
    from qkv.book_links import REPO

    subs = tmp_path / "submissions"
    _write(learner_notebook("attention", {"softmax": "reference", "scaled_dot_product_attention": NO_SCALE_SDPA}),
           subs / "ben")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "autograder", "grade", "attention", str(subs), "--out", str(out),
                           "--lang", "zh_CN", "--workers", "1", "--quiet"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    chinese = "“注意力为什么要把 logits 除以 √d_k？” (chapter 2, Why divide by √d_k)"  # scaling.po's msgstr
    rereads = _rereads(out / "feedback" / "ben" / "attention.html")
    texts = [" ".join(p.get_text().split()) for p in rereads]
    assert any(chinese in t for t in texts), texts
    assert chinese.replace("(", "\\(").replace(")", "\\)") in (out / "report.md").read_text()  # Markdown-escaped
    anchor = "why-does-attention-divide-the-logits-by-d-k"
    hrefs = {a["href"] for p in rereads for a in p.find_all("a")}
    zh_page = REPO / "book" / "_build" / "zh_CN" / "_build" / "html" / "chapters" / "scaling.html"
    en_page = REPO / "book" / "_build" / "html" / "chapters" / "scaling.html"
    if zh_page.is_file():
        assert f"{zh_page.resolve().as_uri()}#{anchor}" in hrefs and all("/zh_CN/" in h for h in hrefs), hrefs
        assert f'id="{anchor}"' in zh_page.read_text()
    elif en_page.is_file():
        assert f"{en_page.resolve().as_uri()}#{anchor}" in hrefs and not any("/zh_CN/" in h for h in hrefs), hrefs
        assert "the Chinese edition of the book is not built" in proc.stderr
    else:
        assert not hrefs


def test_grade_takes_the_edition_from_lang_else_the_locale(tmp_path, monkeypatch, capsys):
    """--lang wins; without it a zh locale picks the Chinese edition, as `qkv check` does; an
    edition that is not built is named before grading, with the command that builds it."""
    from autograder import cli, grading
    from qkv import book_links

    asked = []
    def grade_class(*args, **kw):
        asked.append(kw["book_edition"])
        kw["announce"]()  # the checks passed: the CLI's notes go out
        return []

    monkeypatch.setattr(grading, "grade_class", grade_class)
    monkeypatch.setattr(book_links, "BOOK", tmp_path / "book")
    (tmp_path / "book" / "_build" / "html").mkdir(parents=True)
    (tmp_path / "book" / "_build" / "html" / "index.html").write_text("<html></html>")
    (tmp_path / "subs").mkdir()
    for var in ("LC_ALL", "LC_MESSAGES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LANG", "zh_CN.UTF-8")
    base = ["grade", "attention", str(tmp_path / "subs"), "--out", str(tmp_path / "out"), "--quiet"]
    for extra, want in (([], "zh_CN"), (["--lang", "en"], "en"), (["--lang", "zh_CN"], "zh_CN")):
        cli.main(base + extra)
        assert asked[-1] == want, extra
        note = "the Chinese edition of the book is not built, so the sections to reread are linked in the English one"
        assert (note in capsys.readouterr().err) == (want == "zh_CN")
    monkeypatch.setenv("LANG", "en_US.UTF-8")
    cli.main(base)
    assert asked[-1] == "en"


@pytest.mark.parametrize("refusal", ["sandbox", "out"])
def test_a_refusal_is_one_line_even_with_notes_to_give(tmp_path, monkeypatch, capsys, refusal):
    """The notes said before grading (a weaker guarantee on this machine, an edition that is not
    built) are said only when grading goes ahead: a refused run prints its one line, nothing else.
    (CI has no built book, and its refusal came with a second line.)"""
    from autograder import cli, grading, sandbox
    from qkv import book_links

    monkeypatch.setattr(book_links, "BOOK", tmp_path / "book")  # nothing built
    monkeypatch.setattr(sandbox, "platform_caveats", lambda: ["a weaker guarantee on this machine"])
    if refusal == "sandbox":
        def platform_mode():
            raise sandbox.SandboxUnavailable("cannot sandbox learner code: forced by the test")

        monkeypatch.setattr(grading, "platform_mode", platform_mode)
        out = tmp_path / "out"
    else:
        (tmp_path / "file").write_text("")
        out = tmp_path / "file" / "out"
    (tmp_path / "subs").mkdir()
    status = cli.main(["grade", "attention", str(tmp_path / "subs"), "--out", str(out), "--quiet", "--lang", "en"])
    err = capsys.readouterr().err
    assert status == 2 and len(err.splitlines()) == 1 and err.startswith("cannot grade: "), err
    assert "note:" not in err and not out.exists()


def test_an_edition_the_book_does_not_have_is_refused_before_grading(tmp_path):
    from autograder.grading import GradingSetupError, grade_class

    (tmp_path / "subs").mkdir()
    with pytest.raises(GradingSetupError, match="no 'fr' edition of the book; choose one of: en, zh_CN"):
        grade_class("attention", tmp_path / "subs", tmp_path / "out", book_edition="fr")
    assert not (tmp_path / "out").exists()


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


def test_feedback_nbgrader_releases_is_offline_and_sanitised(tmp_path):
    """``grade --course`` grades a hub's course in place, and ``nbgrader release_feedback``
    ships COURSE/feedback/ to learners, who open each page alone, wherever they fetched it. Such
    a page runs no script, loads nothing from anywhere (nbgrader's template points at MathJax
    on a CDN), and a learner's markup in it is text."""
    from bs4 import BeautifulSoup
    from nbgrader.apps import NbGraderAPI
    from playwright.sync_api import sync_playwright

    from autograder.course import nbgrader_config

    course = tmp_path / "course"
    ben = learner_notebook("attention", {"softmax": "reference", "scaled_dot_product_attention": NO_SCALE_SDPA})
    ben.cells.append(nbformat.v4.new_markdown_cell(HOSTILE_MARKDOWN))  # a note that tries to act in feedback
    for student, nb in (("ada", learner_notebook("attention", ALL_REFERENCE)), ("ben", ben)):
        folder = course / "submitted" / student / "attention"
        _write(nb, folder)
        # What `nbgrader submit` and `collect` leave next to the notebook.
        (folder / "timestamp.txt").write_text("2026-12-01 09:00:00.000000 UTC")
        (folder / "submission_secret.txt").write_text(secrets.token_hex(64))
    proc = subprocess.run([sys.executable, "-m", "autograder", "grade", "attention", "--course", str(course),
                           "--quiet"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    config = nbgrader_config(course)
    config.Exchange.root = str(tmp_path / "exchange")
    (tmp_path / "exchange").mkdir()
    released = NbGraderAPI(config=config).release_feedback("attention")
    assert released["success"], released
    pages = sorted((tmp_path / "exchange" / "qkv" / "feedback").glob("*.html"))
    assert len(pages) == 2
    for path in pages:
        soup = BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")
        first = soup.head.find(True)
        assert first.name == "meta" and first.get("http-equiv") == "Content-Security-Policy", path
        assert "default-src 'none'" in first["content"] and "script-src 'none'" in first["content"]
        assert soup.find_all("script") == [], path
        for tag in soup.find_all(True):
            assert not [a for a in tag.attrs if a.lower().startswith("on")], str(tag)[:200]
            for attr in ("src", "href", "data", "action"):
                assert not str(tag.get(attr, "")).startswith(("http:", "https:", "//", "javascript:")), str(tag)[:200]

    # Ben's page as he fetches it, alone in a folder, in a real browser.
    page_of_ben = next(p for p in pages if "without the 1/√d_k scale" in p.read_text(encoding="utf-8"))
    fetched = tmp_path / "ben" / "attention.html"
    fetched.parent.mkdir()
    fetched.write_bytes(page_of_ben.read_bytes())
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page()
        requested: list[str] = []
        page.on("request", lambda r: requested.append(r.url))
        page.goto(fetched.as_uri())
        page.wait_for_timeout(1000)
        text = page.inner_text("body")
        pwned = page.evaluate("window.__pwned")
        browser.close()
    assert pwned is None
    assert [u for u in requested if not u.startswith(("file:", "data:"))] == []
    assert "<script>window.__pwned = 1</script>" in text  # the learner's markup, shown as text
    assert "$\\alpha + \\beta$" in text and "$q_i$" in text  # formulas stay readable TeX, untypeset
