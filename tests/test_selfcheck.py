"""`qkv check` / `qkv.check()`: the learner's self-check against the visible tests.

Expected verdicts are reasoned from how each learner copy was built (reference body,
a deliberate mistake, or the untouched stub), never read back from the tool under test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from notebook_tools import REPO, execute, learner_notebook, solution_cell_ids
from qkv import selfcheck
from qkv.chapters import CHAPTERS

pytestmark = pytest.mark.slow  # each CLI run starts a subprocess that imports torch

# scaled_dot_product_attention that forgets the 1/sqrt(d_k) scale: a named misconception of the chapter.
UNSCALED_SDPA = '''def scaled_dot_product_attention(q, k, v, mask=None):
    """Attention without the scale (a deliberate mistake)."""
    logits = q @ k.transpose(-2, -1)
    if mask is not None:
        logits = logits.masked_fill(~mask.bool(), float("-inf"))
    w = torch.nan_to_num(torch.exp(logits - logits.amax(-1, keepdim=True)), nan=0.0)
    w = w / w.sum(-1, keepdim=True).clamp_min(1e-30)
    return w @ v, w
'''


def _qkv(*args: str, cwd: Path, env: dict | None = None, prefix: list[str] | None = None
         ) -> subprocess.CompletedProcess:
    return subprocess.run([*(prefix or []), sys.executable, "-m", "qkv", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _rows(text: str) -> dict[str, str]:
    """function -> status, parsed from the printed table."""
    rows = {}
    for line in text.splitlines():
        m = re.match(r"^(\w+)\s+(passed|failing|not attempted)\b", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def _write(nb, folder: Path, name: str = "attention.ipynb") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / name)
    return folder / name


def test_untouched_exercise_is_not_attempted(tmp_path: Path) -> None:
    nb = _write(nbformat.read(REPO / "exercises/attention/attention.ipynb", as_version=4), tmp_path)
    proc = _qkv("check", "attention", str(nb), cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert _rows(proc.stdout) == {f: "not attempted" for f in solution_cell_ids("attention")}, proc.stdout


def test_diagnosis_reread_and_exit_code(tmp_path: Path) -> None:
    """softmax from the reference passes, an unscaled attention is diagnosed, additive is untouched.
    The learner also replaced the attention test cells by `pass`: the repository's tests run anyway."""
    nb = learner_notebook("attention", {"softmax": "reference", "scaled_dot_product_attention": UNSCALED_SDPA})
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id", "").startswith(("test_scaled", "test_sdpa")):
            cell.source = "pass"
    path = _write(nb, tmp_path / "mine")
    proc = _qkv("check", "attention", str(path), cwd=tmp_path)
    assert proc.returncode == 1
    assert _rows(proc.stdout) == {"softmax": "passed", "scaled_dot_product_attention": "failing",
                                  "additive_attention": "not attempted"}, proc.stdout
    assert "without the 1/√d_k scale" in proc.stdout  # the chapter's diagnosis for this mistake
    # The section to reread is the diagnosis's own (the scaling chapter explains the missing
    # scale), as the file:// URL of the built page with the anchor Sphinx gives that heading.
    assert "reread: “Why does attention divide the logits by √d_k?” (chapter 2, Why divide by √d_k)" in proc.stdout
    built = REPO / "book/_build/html/chapters/scaling.html"
    if built.exists():
        assert f"{built.resolve().as_uri()}#why-does-attention-divide-the-logits-by-d-k" in proc.stdout
    else:
        assert "the book is not built" in proc.stdout and "`make book`" in proc.stdout


def test_complete_copy_passes_with_exit_0_from_the_default_location(tmp_path: Path) -> None:
    """`qkv check attention` with no path finds exercises/attention/attention.ipynb under the cwd."""
    nb = learner_notebook("attention", {g: "reference" for g in solution_cell_ids("attention")})
    # Jupyter-only syntax a learner may add must not break loading: a line magic, a shell
    # escape, and %%time around an answer cell (whose body must still be defined).
    nb.cells.insert(2, nbformat.v4.new_code_cell("%matplotlib inline\n!echo hello"))
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == "softmax":
            cell.source = "%%time\n" + cell.source
    _write(nb, tmp_path / "exercises" / "attention")
    proc = _qkv("check", "attention", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert str(tmp_path / "exercises" / "attention" / "attention.ipynb") in proc.stdout
    assert set(_rows(proc.stdout).values()) == {"passed"}, proc.stdout
    assert "note:" not in proc.stdout  # every cell loaded without error


def test_works_without_solutions(tmp_path: Path) -> None:
    """Run on the real repository with solutions/ replaced by an empty folder (bubblewrap
    mounts a tmpfs over it), so nothing under solutions/ can be read."""
    nb = learner_notebook("attention", {"softmax": "reference"})
    path = _write(nb, tmp_path)
    hide = ["bwrap", "--dev-bind", "/", "/", "--tmpfs", str(REPO / "solutions")]
    probe = subprocess.run([*hide, "ls", "-A", str(REPO / "solutions")], capture_output=True, text=True)
    assert probe.returncode == 0 and probe.stdout == "", f"bubblewrap must hide solutions/: {probe}"
    proc = _qkv("check", "attention", str(path), cwd=tmp_path, prefix=hide)
    assert _rows(proc.stdout) == {"softmax": "passed", "scaled_dot_product_attention": "not attempted",
                                  "additive_attention": "not attempted"}, proc.stdout + proc.stderr


def test_learner_copy_tests_used_when_the_repository_has_no_exercise(tmp_path: Path) -> None:
    """A copy of the qkv package with no exercises/ and no solutions/ next to it: the visible
    tests come from the learner's own notebook."""
    layout = tmp_path / "layout"
    shutil.copytree(REPO / "qkv", layout / "qkv", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(layout)}
    where = subprocess.run([sys.executable, "-c", "import qkv.selfcheck as s; print(s.REPO)"], env=env,
                           capture_output=True, text=True, cwd=tmp_path)
    assert where.stdout.strip() == str(layout), where  # the copy, not the repository, is imported
    nb = learner_notebook("attention", {"softmax": "reference", "scaled_dot_product_attention": UNSCALED_SDPA})
    path = _write(nb, tmp_path / "work")
    proc = _qkv("check", "attention", str(path), cwd=tmp_path, env=env)
    assert _rows(proc.stdout) == {"softmax": "passed", "scaled_dot_product_attention": "failing",
                                  "additive_attention": "not attempted"}, proc.stdout + proc.stderr


def test_a_folder_outside_the_repository_and_links_into_the_readers_edition(tmp_path: Path) -> None:
    """`qkv check attention ~/my-qkv/attention` run from another folder: the notebook is found in
    the folder, and the section to reread is an absolute file:// URL into the edition that LANG
    (or --lang) picks, both built here in a copy of the package's layout."""
    layout = tmp_path / "layout"
    shutil.copytree(REPO / "qkv", layout / "qkv", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "exercises" / "attention", layout / "exercises" / "attention")
    pages = {}
    for edition, root in (("en", "book/_build/html"), ("zh_CN", "book/_build/zh_CN/_build/html")):
        pages[edition] = layout / root / "chapters" / "scaling.html"
        pages[edition].parent.mkdir(parents=True)
        for chapter in ("scaling", "attention"):  # additive_attention's section is in the attention chapter
            pages[edition].with_name(f"{chapter}.html").write_text("<html></html>")
    nb = learner_notebook("attention", {"softmax": "reference", "scaled_dot_product_attention": UNSCALED_SDPA})
    folder = tmp_path / "my-qkv" / "attention"
    _write(nb, folder)
    (tmp_path / "elsewhere").mkdir()
    env = {**os.environ, "PYTHONPATH": str(layout), "LANG": "zh_CN.UTF-8", "LC_ALL": "", "LC_MESSAGES": ""}
    anchor = "#why-does-attention-divide-the-logits-by-d-k"
    proc = _qkv("check", "attention", str(folder), cwd=tmp_path / "elsewhere", env=env)
    assert _rows(proc.stdout)["scaled_dot_product_attention"] == "failing", proc.stdout + proc.stderr
    assert f"file://{pages['zh_CN'].resolve()}{anchor}" in proc.stdout, proc.stdout
    assert f"file://{pages['en'].resolve()}" not in proc.stdout
    proc = _qkv("check", "attention", str(folder), "--lang", "en", cwd=tmp_path / "elsewhere", env=env)
    assert f"file://{pages['en'].resolve()}{anchor}" in proc.stdout, proc.stdout
    assert "not built" not in proc.stdout


def test_infinite_loops_time_out_and_the_rest_is_still_checked(tmp_path: Path) -> None:
    loop_sdpa = ('def scaled_dot_product_attention(q, k, v, mask=None):\n    """Never returns."""\n'
                 '    while True:\n        pass\n')
    nb = learner_notebook("attention", {"softmax": "reference", "scaled_dot_product_attention": loop_sdpa})
    nb.cells.insert(2, nbformat.v4.new_code_cell("while True:\n    pass  # a cell the learner added"))
    path = _write(nb, tmp_path)
    proc = _qkv("check", "attention", str(path), "--timeout", "4", cwd=tmp_path)
    # Each hung step is killed and skipped on a rerun, so softmax's verdict still arrives.
    assert _rows(proc.stdout) == {"softmax": "passed", "scaled_dot_product_attention": "failing",
                                  "additive_attention": "not attempted"}, proc.stdout + proc.stderr
    assert "test_scaled_dot_product_attention did not finish within 4 s" in proc.stdout
    assert "cell 3 did not finish within 4 s (an infinite loop?); it was skipped" in proc.stdout


def test_reread_anchors_match_the_book() -> None:
    """Every REREAD heading is a section of its page, and its anchor is the id Sphinx gives it
    (checked in the built HTML when there is one; the algorithm is also pinned on a known slug)."""
    assert selfcheck.anchor("How is attention computed, step by step?") == "how-is-attention-computed-step-by-step"
    assert selfcheck.anchor("Why divide by √d_k?") == "why-divide-by-d-k"
    for ch in CHAPTERS:
        page = (REPO / "book/chapters" / f"{ch.slug}.md").read_text()
        html_path = REPO / "book/_build/html/chapters" / f"{ch.slug}.html"
        ids = set(re.findall(r'id="([^"]+)"', html_path.read_text())) if html_path.exists() else None
        reread = selfcheck.checks_constant(ch.slug, "REREAD")
        assert set(reread) == set(solution_cell_ids(ch.slug)), ch.slug
        for heading in reread.values():
            assert re.search(rf"^#+ {re.escape(heading)}\s*$", page, re.M), f"{ch.slug}: no section {heading!r}"
            if ids is not None:
                assert selfcheck.anchor(heading) in ids, f"{ch.slug}: {heading!r} -> {selfcheck.anchor(heading)}"


def test_check_in_process_uses_the_callers_functions(tmp_path: Path) -> None:
    """`qkv.check("attention")` outside Jupyter checks the caller's globals and prints the table."""
    refs = learner_notebook("attention", {"softmax": "reference"})
    code = "\n\n".join(c.source for c in refs.cells if c.cell_type == "code"
                       and c.metadata.get("nbgrader", {}).get("grade_id") in ("imports", "softmax"))
    script = tmp_path / "mine.py"
    script.write_text(code + "\n\nimport qkv\nreport = qkv.check('attention')\n"
                      "print('OK' if report.status_of()['softmax'] == 'passed' else 'BAD')\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert _rows(proc.stdout) == {"softmax": "passed", "scaled_dot_product_attention": "failing",
                                  "additive_attention": "failing"}, proc.stdout + proc.stderr
    assert "scaled_dot_product_attention is not defined" in proc.stdout
    assert proc.stdout.strip().endswith("OK")


def test_chapter_inferred_from_defined_functions() -> None:
    def split_heads(): ...
    def merge_heads(): ...
    assert selfcheck.infer_chapter({"split_heads": split_heads, "merge_heads": merge_heads}) == "multihead"
    with pytest.raises(ValueError, match='qkv.check\\("attention"\\)'):
        selfcheck.infer_chapter({})


def test_self_check_cell_in_a_running_notebook(tmp_path: Path) -> None:
    """Run the completed exercise in a real kernel: the appended cell shows an all-passed HTML table."""
    nb = learner_notebook("attention", {"softmax": "reference", "additive_attention": "reference"})
    done = execute(nb, tmp_path, allow_errors=True)
    last = done.cells[-1]
    assert last.metadata.get("qkv", {}).get("role") == "self-check"
    html = "".join(o.get("data", {}).get("text/html", "") for o in last.outputs)
    statuses = re.findall(r"<td><code>(\w+)</code></td><td[^>]*>([a-z ]+)</td>", html)
    assert dict(statuses) == {"softmax": "passed", "scaled_dot_product_attention": "not attempted",
                              "additive_attention": "passed"}, last.outputs
    assert not any(o.get("output_type") == "error" for o in last.outputs)


def test_every_exercise_ends_with_the_self_check_cell() -> None:
    for ch in CHAPTERS:
        for folder in ("solutions", "exercises"):
            nb = nbformat.read(REPO / folder / ch.slug / f"{ch.slug}.ipynb", as_version=4)
            cell = nb.cells[-1]
            want = f'import qkv\n\nqkv.check("{ch.slug}")'
            assert cell.cell_type == "code" and cell.source == want, (folder, ch.slug)
            assert cell.metadata.get("qkv") == {"role": "self-check"} and "nbgrader" not in cell.metadata


def test_grader_skips_the_self_check_cell() -> None:
    from autograder.verify import Reference, learner_cells

    reference = Reference.load(REPO / "solutions/attention/attention.ipynb")
    submission = nbformat.read(REPO / "exercises/attention/attention.ipynb", as_version=4)
    assert not any("qkv.check" in c["source"] for c in learner_cells(reference, submission))
    # The metadata alone decides (any code in such a cell is never run); control: without it,
    # a cell that does more than call qkv's helpers is loaded like any cell a learner adds.
    submission.cells[-1].source += "\nx = 1"
    assert not any("x = 1" in c["source"] for c in learner_cells(reference, submission))
    del submission.cells[-1].metadata["qkv"]
    assert any("x = 1" in c["source"] for c in learner_cells(reference, submission))


def test_grader_skips_a_learners_own_hint_and_check_cells_only() -> None:
    """Cells holding only `import qkv` and qkv.check/qkv.hint calls (what the README tells learners
    to type) are skipped; a cell that does anything else is loaded as usual."""
    from autograder.verify import Reference, learner_cells

    reference = Reference.load(REPO / "solutions/attention/attention.ipynb")
    submission = nbformat.read(REPO / "exercises/attention/attention.ipynb", as_version=4)
    helpers = ['import qkv\nqkv.hint("softmax")', 'import qkv\n\nqkv.check("attention")',
               'qkv.hint("softmax", 2)\nqkv.check()', 'qkv.check("attention")']
    others = ['import qkv\nqkv.check("attention")\nx = 1', "qkv.hint(secret())", "import qkv", "import qkv as q"]
    for source in helpers + others:
        submission.cells.insert(3, nbformat.v4.new_code_cell(source))
    loaded = [c["source"] for c in learner_cells(reference, submission)]
    assert not any(h in loaded for h in helpers), loaded
    assert all(o in loaded for o in others), loaded
