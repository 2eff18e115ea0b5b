"""What the grader does around the sandbox: learner text made inert in every writer, notebooks
vetted before nbformat sees them, clear one-line errors for bad arguments, the canary that
stops a run on a machine where the grader cannot work, and the fresh-machine checks.

The hostile-submission attacks themselves live in test_attacks.py (one graded run); these
tests pin each piece against an independent oracle: two Markdown renderers, the csv module,
BeautifulSoup, the notebooks we ship, a real subprocess and its exit status.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest
from bs4 import BeautifulSoup
from markdown_it import MarkdownIt
from nbconvert.filters.markdown_mistune import markdown2html_mistune

from autograder.feedback import ALLOWED_TAGS, sanitize_markdown, text_block
from autograder.learner_text import clean, csv_cell, markdown_inline, one_line
from autograder.report import Result, write_csv, write_report
from autograder.submissions import MAX_UPLOAD_BYTES, discover, notebook_problem
from notebook_tools import REPO, learner_notebook

RIGHT = {"softmax": "reference", "scaled_dot_product_attention": "reference", "additive_attention": "reference"}
ESC = "\x1b"
HOSTILE = [
    "x\n\n## Score set to 0 by the instructor\n\n---\n",
    "![pixel](http://127.0.0.1:1/p.png) <img src=x onerror=alert(1)>",
    "<script>alert(1)</script><!-- hidden --> <div class='panel-heading'>Score: 11/11</div>",
    "[appeal here](javascript:alert(1)) <http://evil.example> www.evil.example https://evil.example/x a@evil.example",
    "a | b | c `code` *em* _em_ **strong** ~~del~~ $x^2$ {role}`x` \\*not em\\* [ref]: http://x",
    ESC + "[31mred" + ESC + "[0m " + ESC + "]0;title\a bell\a \u202egnp.exe \udcff \ud800x",
    "&lt;script&gt; &amp; &#60;b&#62; &copy;",
    "line1\r\nline2\u2028line3\x85line4\x0bline5\x0c",
    "=cmd|' /C calc'!A0",
    "1. ordered\n- item\n> quote\n    indented code\n<details open>",
    "x" * 5000,
]


# ------------------------------------------------------------------ learner text in every writer

@pytest.mark.parametrize("text", HOSTILE)
def test_clean_text_is_encodable_and_has_no_control_characters(text):
    cleaned = clean(text)
    cleaned.encode("utf-8")  # strict: no lone surrogate survives
    assert ESC not in cleaned and "\a" not in cleaned and "\u202e" not in cleaned
    assert all(ch in "\n\t" or ch.isprintable() or ch.isspace() for ch in cleaned)


@pytest.mark.parametrize("text", HOSTILE)
def test_one_line_is_one_bounded_line(text):
    line = one_line(text, limit=200)
    assert len(line.splitlines()) <= 1 and len(line) <= 200 and line == line.strip()


@pytest.mark.parametrize("render", [lambda s: MarkdownIt("gfm-like").render(s), markdown2html_mistune],
                         ids=["markdown-it-gfm-linkify", "mistune-nbconvert"])
@pytest.mark.parametrize("text", HOSTILE)
def test_markdown_inline_renders_as_exactly_its_text(render, text):
    """Rendered by two independent Markdown engines (one with GitHub's bare-URL autolinks), the
    escaped text is one paragraph, a list item or a table cell holding exactly the flattened
    text: no heading, link, image, HTML, code span or table break."""
    escaped = markdown_inline(text, limit=300)
    for source, container in ((escaped, "p"), (f"- **student**: {escaped}", "li"),
                              (f"| q | failure |\n|---|---|\n| x | {escaped} |", "td")):
        soup = BeautifulSoup(render(source), "html.parser")
        tags = {t.name for t in soup.find_all(True)}
        assert tags <= {"p", "ul", "li", "strong", "table", "thead", "tbody", "tr", "th", "td"}, (source, tags)
        cells = soup.find_all(container)
        want = one_line(text, limit=300)
        assert cells[-1].get_text().removeprefix("student: ") == want


def test_csv_cells_are_single_lines_without_formulas():
    hostile = [Result(f"s{i}", "attention", 0.0, 11.0, "error", text) for i, text in enumerate(HOSTILE)]
    hostile += [Result("=cmd|' /C calc'!A0", "attention", 0.0, 11.0, "error", "+1"),
                Result("\udcffbad", "attention", 1.0, 11.0, "graded", "@SUM(A1)"),
                Result("dash", "attention", 0.0, 11.0, "error", "-2+3")]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "grades.csv"
        write_csv(hostile, path)
        text = path.read_bytes().decode("utf-8")  # strict
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == len(hostile) and len(text.splitlines()) == len(hostile) + 1
    for row in rows:
        for field in ("student_id", "assignment", "status", "message"):
            assert not row[field].startswith(("=", "+", "-", "@", "\t", "\r")), row
            assert ESC not in row[field] and "\n" not in row[field]
    assert {r["message"] for r in rows} >= {"'+1", "'@SUM(A1)", "'-2+3", "'=cmd|' /C calc'!A0"}
    assert "'=cmd|' /C calc'!A0" in {r["student_id"] for r in rows}


def test_csv_formula_guard_leaves_ordinary_text_alone():
    assert csv_cell("graded attention (1).ipynb (expected the name attention.ipynb)") == \
        "graded attention (1).ipynb (expected the name attention.ipynb)"
    assert csv_cell("  =1+1") == "'=1+1"  # leading blanks are trimmed first, as a spreadsheet would


def test_report_shows_hostile_messages_as_text(tmp_path):
    results = [Result(f"s{i}", "attention", 0.0, 11.0, "error", text) for i, text in enumerate(HOSTILE)]
    results.append(Result("ok", "attention", 11.0, 11.0, "graded", HOSTILE[0] + HOSTILE[1],
                          questions={"test_softmax": (0.0, 3.0, "softmax(x): " + HOSTILE[2] + HOSTILE[3])},
                          rereads={"test_softmax": HOSTILE[3] + HOSTILE[2]}))  # ours, but escaped all the same
    write_report(results, "attention", tmp_path / "report.md", None)
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    for i in range(len(HOSTILE)):
        assert len([ln for ln in text.splitlines() if f"**s{i}**" in ln]) == 1
    soup = BeautifulSoup(MarkdownIt("gfm-like").render(text), "html.parser")
    assert [h.get_text() for h in soup.find_all(["h1", "h2", "h3"])] == [
        "Grading report: attention", "Submissions that could not be graded", "Notes on graded submissions"]
    assert soup.find_all(["a", "img", "script", "hr", "div", "code", "em", "details", "blockquote"]) == []
    assert all(len(tr.find_all(["td", "th"])) == 5 for tr in soup.find_all("tr"))


# ------------------------------------------------------------------ feedback Markdown

def test_sanitized_markdown_keeps_our_instruction_cells_readable():
    """Every Markdown cell we ship renders to the same text as nbconvert's unsanitised renderer,
    keeps its headings, code and math, and needs no tag outside the allow-list."""
    for notebook in sorted((REPO / "exercises").glob("*/*.ipynb")):
        for cell in nbformat.read(notebook, as_version=4).cells:
            if cell.cell_type != "markdown":
                continue
            ours = BeautifulSoup(sanitize_markdown(cell.source), "html.parser")
            stock = BeautifulSoup(markdown2html_mistune(cell.source), "html.parser")
            for anchor in stock.select("a.anchor-link"):
                anchor.decompose()
            assert "".join(ours.get_text().split()) == "".join(stock.get_text().split()), notebook
            assert [a.get("href") for a in ours.find_all("a")] == [a.get("href") for a in stock.find_all("a")]
            assert ([h.name for h in ours.find_all(["h1", "h2", "h3"])]
                    == [h.name for h in stock.find_all(["h1", "h2", "h3"])])
            assert len(ours.find_all("code")) == len(stock.find_all("code"))


@pytest.mark.parametrize("text", HOSTILE + [
    '<img src="http://127.0.0.1:1/x.png"><a href="data:text/html,<script>alert(1)</script>">x</a>',
    "```mermaid\ngraph TD; A-->B\n```\n<svg><foreignObject><iframe src=x></iframe></foreignObject></svg>",
    '<span class="label label-success">Score: 11/11</span><p style="position:fixed;top:0">x</p>',
])
def test_sanitized_markdown_allows_no_markup_that_acts(text):
    soup = BeautifulSoup(sanitize_markdown(text), "html.parser")
    wrapper = soup.find("div", class_="qkv-learner-text")
    assert wrapper is not None and soup.find_all(True)[0] is wrapper
    for tag in wrapper.find_all(True):
        assert tag.name in ALLOWED_TAGS, tag.name
        for attr, value in tag.attrs.items():
            assert attr in ("href", "src", "alt", "title", "class", "start"), (tag.name, attr)
            if attr == "src":
                assert str(value).startswith("data:image/")
            if attr == "href":
                assert not str(value).lower().startswith(("javascript:", "data:", "vbscript:", "//")), value
            if attr == "class":
                assert tag.name in ("span", "div", "a") and "panel" not in value and "label" not in value
    assert "\n" not in sanitize_markdown(text)  # one HTML block for the template's second Markdown pass


def test_raw_cells_are_shown_as_text():
    block = text_block('<script>alert(1)</script>\n<div class="panel">fake</div>')
    soup = BeautifulSoup(block, "html.parser")
    assert [t.name for t in soup.find_all(True)] == ["div", "pre"]
    assert soup.get_text() == '<script>alert(1)</script>\n<div class="panel">fake</div>'


# ------------------------------------------------------------------ notebooks vetted before parsing

def test_every_notebook_we_ship_passes_the_cheap_checks():
    notebooks = sorted((REPO / "exercises").glob("*/*.ipynb")) + sorted((REPO / "solutions").glob("*/*.ipynb"))
    assert len(notebooks) >= 18
    for notebook in notebooks:
        assert notebook_problem(notebook) is None, notebook


def test_a_notebook_over_the_cap_is_refused_before_it_is_read(tmp_path, monkeypatch):
    (tmp_path / "subs" / "ada").mkdir(parents=True)
    big = tmp_path / "subs" / "ada" / "attention.ipynb"
    with open(big, "wb") as fh:
        fh.truncate(MAX_UPLOAD_BYTES + 1)  # sparse
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail(f"{self} was read"))
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: pytest.fail(f"{self} was read"))
    [sub] = discover(tmp_path / "subs", "attention", tmp_path / "unpacked")
    assert sub.problem and "over the 50 MiB limit" in sub.problem


def test_one_entry_that_makes_discovery_raise_is_that_entry_s_error(tmp_path, monkeypatch):
    """Whatever we did not foresee (here a bug simulated in the unpacking step) costs one row."""
    import autograder.submissions as submissions

    subs = tmp_path / "subs"
    for student in ("ada", "ben"):
        (subs / student).mkdir(parents=True)
        nbformat.write(learner_notebook("attention", RIGHT), subs / student / "attention.ipynb")
    real = submissions._find_notebook

    def flaky(sub, folder, assignment):
        if sub.student_id == "ben":
            raise RecursionError("maximum recursion depth exceeded")
        return real(sub, folder, assignment)

    monkeypatch.setattr(submissions, "_find_notebook", flaky)
    ada, ben = discover(subs, "attention", tmp_path / "unpacked")
    assert ada.problem is None and ada.notebook.name == "attention.ipynb"
    assert "could not read this submission (RecursionError" in ben.problem


# ------------------------------------------------------------------ clear errors from the command line

def _cli(*args: str, env: dict | None = None, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", "autograder", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def _one_line_exit_2(proc: subprocess.CompletedProcess, fragment: str) -> None:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in proc.stderr, proc.stderr


@pytest.fixture
def one_student(tmp_path) -> Path:
    (tmp_path / "subs" / "ada").mkdir(parents=True)
    nbformat.write(learner_notebook("attention", RIGHT), tmp_path / "subs" / "ada" / "attention.ipynb")
    return tmp_path / "subs"


@pytest.mark.slow
def test_bad_arguments_are_one_line_and_exit_2(tmp_path, one_student):
    _one_line_exit_2(_cli("grade", "nope", str(one_student), "--out", str(tmp_path / "o1")), "no assignment 'nope'")
    _one_line_exit_2(_cli("grade", "attention", str(tmp_path / "missing"), "--out", str(tmp_path / "o2")),
                     "does not exist or is not a folder")
    _one_line_exit_2(_cli("grade", "attention", str(one_student), "--out", str(tmp_path / "no" / "such" / "out")),
                     "the parent folder of --out")
    (tmp_path / "file").write_text("x")
    _one_line_exit_2(_cli("grade", "attention", str(one_student), "--out", str(tmp_path / "file")), "not a folder")
    _one_line_exit_2(_cli("grade", "attention", str(one_student), "--out", str(one_student / "out")),
                     "inside the submissions folder")
    _one_line_exit_2(_cli("grade", "attention", str(one_student), "--out", str(tmp_path / "o3"), "--timeout", "0"),
                     "--timeout must be a positive number")
    assert not [p for p in ("o1", "o2", "o3") if (tmp_path / p).exists()]
    assert not (tmp_path / "no").exists() and not (one_student / "out").exists()


@pytest.mark.slow
def test_unwritable_out_is_one_line_and_exit_2(tmp_path, one_student):
    """Root ignores permission bits, so the folder is made read-only the way a mount is."""
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    ro = ("bwrap", "--dev-bind", "/", "/", "--ro-bind", str(readonly), str(readonly), "--")
    _one_line_exit_2(_cli("grade", "attention", str(one_student), "--out", str(readonly / "out"), prefix=ro),
                     "is not writable")
    _one_line_exit_2(_cli("grade", "attention", str(one_student), "--out", str(readonly), prefix=ro),
                     "is not writable")
    assert list(readonly.iterdir()) == []


@pytest.mark.slow
def test_an_unexpected_error_is_one_line_with_a_debug_hint(tmp_path, one_student):
    crash = ("import sys, autograder.grading as g\n"
             "def boom(*a, **k):\n    raise KeyError('internal')\n"
             "g.grade_class = boom\n"
             "from autograder.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    args = ["grade", "attention", str(one_student), "--out", str(tmp_path / "out")]
    proc = subprocess.run([sys.executable, "-c", crash, *args], capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "KeyError" in lines[0] and "--debug" in lines[0]
    proc = subprocess.run([sys.executable, "-c", crash, "--debug", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "KeyError: 'internal'" in proc.stderr


# ------------------------------------------------------------------ the canary

def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.slow
def test_a_broken_sandbox_stops_the_run_before_anyone_is_graded(tmp_path, one_student):
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "bwrap").write_text("#!/bin/sh\nexit 1\n")
    (fake / "bwrap").chmod(0o755)
    out = tmp_path / "out"  # an earlier run's results: they must stay exactly as they were
    (out / "course").mkdir(parents=True)
    (out / "grades.csv").write_text("student_id,assignment,score,max_score,status,message\n"
                                    "ada,attention,11,11,graded,\n")
    before = _digest(out)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = _cli("grade", "attention", str(one_student), "--out", str(out), "--quiet",
                env={"PATH": f"{fake}{os.pathsep}{os.environ['PATH']}", "TMPDIR": str(scratch)})
    # Refused up front by the sandbox's own probe (autograder.sandbox.platform_mode), before the canary.
    _one_line_exit_2(proc, "cannot sandbox learner code")
    assert "bwrap" in proc.stderr and "Nothing was graded" in proc.stderr
    assert proc.stdout == ""
    assert _digest(out) == before and not (out / "course" / "gradebook.db").exists()
    assert list(scratch.iterdir()) == []  # the scratch course is gone too


@pytest.mark.slow
def test_limits_too_small_to_import_torch_stop_the_run(tmp_path, one_student):
    from autograder.grading import CanaryFailed, grade_class
    from autograder.sandbox import Limits

    out = tmp_path / "out"
    announced = []  # the CLI's notes: said once the checks pass, before the canary and any output
    with pytest.raises(CanaryFailed) as failure:
        grade_class("attention", one_student, out, workers=1, show_progress=False,
                    limits=Limits(memory_bytes=200 * 2**20, start_seconds=30),
                    announce=lambda: announced.append(out.exists()))
    message = str(failure.value)
    assert "\n" not in message and "did not get full marks" in message and "limits" in message
    assert not out.exists() and announced == [False]


# ------------------------------------------------------------------ reruns over cached state

@pytest.mark.slow
def test_a_rerun_over_unclean_cached_verdicts_completes(tmp_path):
    """A verdict cache written before learner text was cleaned (a lone surrogate and escape
    sequences in a message) must neither crash the rerun nor reach the outputs."""
    subs = tmp_path / "subs"
    for student, extra in (("ada", None), ("noisy", "raise RuntimeError('grader skipped: noisy')")):
        nb = learner_notebook("attention", RIGHT)
        if extra:
            nb.cells.append(nbformat.v4.new_code_cell(extra))
        (subs / student).mkdir(parents=True)
        nbformat.write(nb, subs / student / "attention.ipynb")
    out = tmp_path / "out"
    first = _cli("grade", "attention", str(subs), "--out", str(out), "--quiet", "--workers", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    cache = out / "course" / "verdicts" / "noisy.json"
    data = json.loads(cache.read_text())
    (cell,) = [k for k, v in data["cell_errors"].items() if "noisy" in v]
    data["cell_errors"][cell] += " \udcff " + ESC + "[2J\n## forged"
    cache.write_text(json.dumps(data))  # ASCII JSON: the escape \udcff is how it was stored
    (out / ".unpacked" / "left" / "over").mkdir(parents=True)  # debris of a killed run
    second = _cli("grade", "attention", str(subs), "--out", str(out), "--quiet", "--workers", "1")
    assert second.returncode == 0 and "Traceback" not in second.stderr, second.stderr[-3000:]
    rows = {r["student_id"]: r for r in csv.DictReader(io.StringIO((out / "grades.csv").read_bytes().decode("utf-8")))}
    assert (rows["ada"]["score"], rows["noisy"]["score"], rows["noisy"]["status"]) == ("11", "11", "graded")
    assert "\ufffd" in rows["noisy"]["message"] and ESC not in rows["noisy"]["message"]
    assert "\\udcff" not in cache.read_text() and not (out / ".unpacked").exists()
    assert "## forged" not in [ln[:9] for ln in (out / "report.md").read_text(encoding="utf-8").splitlines()]


# ------------------------------------------------------------------ a fresh machine

@pytest.fixture
def public_dir():
    """A folder any user can read (pytest's own temporary folders are root-only)."""
    folder = Path(tempfile.mkdtemp(prefix="qkv-intake-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _restricted_path(folder: Path, tools: list[str]) -> str:
    """A PATH holding only ``tools``: the system packages under test are not among them."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(mode=0o755)
    for tool in tools:
        os.symlink(shutil.which(tool), bin_dir / tool)
    return str(bin_dir)


def test_missing_system_packages_stop_make_with_one_line_for_a_non_root_user(public_dir):
    path = _restricted_path(public_dir, ["bash"])
    proc = subprocess.run([shutil.which("setpriv"), "--reuid=65534", "--regid=65534", "--clear-groups", "--",
                           shutil.which("bash"), str(REPO / ".ci" / "system-packages.sh"), "test"],
                          capture_output=True, text=True, timeout=60, env={"PATH": path})
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 1 and len(lines) == 1 and proc.stdout == "", proc.stderr
    assert "bubblewrap" in lines[0] and "util-linux" in lines[0] and "sudo apt-get install -y" in lines[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="the install branch runs only as root")
def test_as_root_the_missing_packages_are_installed_with_apt(tmp_path):
    """A stand-in apt-get records what it is asked for (installing for real is CI's job)."""
    path = _restricted_path(tmp_path, ["bash"])
    log = tmp_path / "apt.log"
    apt = Path(path) / "apt-get"
    apt.write_text(f"#!{shutil.which('bash')}\necho \"$*\" >> {log}\n")
    apt.chmod(0o755)
    proc = subprocess.run([shutil.which("bash"), str(REPO / ".ci" / "system-packages.sh"), "test"],
                          capture_output=True, text=True, timeout=60, env={"PATH": path})
    calls = log.read_text().splitlines()
    assert calls[0] == "update -qq" and calls[1].startswith("install -y -qq") and "bubblewrap" in calls[1]
    # The stand-in installed nothing, so the check that follows says so, in one line.
    assert proc.returncode == 1 and "still missing" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_make_checks_system_packages_before_anything_else():
    # Run as a top-level make even when the suite itself runs under `make test` (whose MAKELEVEL
    # would make the dry run print "Entering directory" first).
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    for goal in ("test", "book"):
        proc = subprocess.run(["make", "-n", "-W", "pyproject.toml", goal], cwd=REPO, capture_output=True,
                              text=True, timeout=60, env=env)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[0] == f"bash .ci/system-packages.sh {goal}"


def test_pytest_stops_with_one_line_when_bubblewrap_is_missing(tmp_path):
    path = _restricted_path(tmp_path, ["bash"])
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
                           str(REPO / "tests" / "test_sandbox.py")], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env={**os.environ, "PATH": path})
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]
    printed = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert len(printed) == 1 and "missing system packages: bubblewrap" in printed[0]
    assert "passed" not in proc.stdout and "failed" not in proc.stdout
