"""The learner's loop in a real JupyterLab, driven through headless Chromium.

1. A released exercise: Run All shows the untouched `softmax` as "not attempted"; the test then
   types a correct softmax into the answer cell, reruns it and its test cell, and sees them pass.
2. A chapter notebook: moving the softmax-temperature slider redraws its figure.

Screenshots go to test-artifacts/ (the `artifacts` fixture).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from myst_nb.core.read import read_myst_markdown_notebook
from playwright.sync_api import Browser, Page, expect, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from lab_server import (
    CHROMIUM,
    CHROMIUM_FLAGS,
    RUN_MS,
    JupyterLab,
    execution_count,
    jupyterlab,
    open_notebook,
    run_all,
    wait_executed,
    wait_kernel_idle,
)

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.xdist_group("jupyterlab")]

REPO = Path(__file__).resolve().parent.parent
EXERCISE = REPO / "exercises" / "attention" / "attention.ipynb"
CHAPTER = REPO / "book" / "chapters" / "attention.md"
STDOUT, STDERR = "application/vnd.jupyter.stdout", "application/vnd.jupyter.stderr"
STEPS = 3  # slider key presses each way in the widget test

# Written for this test, not taken from solutions/: shift by the max (exp cannot overflow),
# exponentiate, normalize. The first line is the released signature, kept as the learner would.
SOFTMAX_ANSWER = (
    "def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:\n"
    "    shifted = x - x.amax(dim=dim, keepdim=True)\n"
    "    e = shifted.exp()\n"
    "    return e / e.sum(dim=dim, keepdim=True)\n"
)


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def lab_root(tmp_path_factory) -> Path:
    """The folder JupyterLab serves: fresh copies only, so autosave never writes into the repository."""
    return tmp_path_factory.mktemp("lab-root")


@pytest.fixture(scope="module")
def lab(lab_root: Path, tmp_path_factory) -> Iterator[JupyterLab]:
    """One JupyterLab for this file; stopped at the end even if a test failed."""
    with jupyterlab(lab_root, tmp_path_factory.mktemp("lab-state")) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium (Playwright's own browser download cannot work here)."""
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Browser, lab: JupyterLab, artifacts: Path, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh browser context per test; its last view is kept as a screenshot (useful on failure)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.js_errors = errors
    try:
        yield pg
    finally:
        try:
            pg.screenshot(path=str(artifacts / f"jupyterlab-{request.node.name}-last.png"))
        except PlaywrightError:
            pass  # a crashed page cannot be photographed; the test's own error says what happened
        finally:
            context.close()


def grade_id_index(nb: nbformat.NotebookNode, grade_id: str) -> int:
    """Index of the cell whose nbgrader grade_id is ``grade_id`` (answer cells: the function name)."""
    for i, cell in enumerate(nb.cells):
        if cell.metadata.get("nbgrader", {}).get("grade_id") == grade_id:
            return i
    raise AssertionError(f"{EXERCISE}: no cell with grade_id {grade_id!r}; rerun `python -m autograder release`")


# ----------------------------------------------------------------------------- tests

def test_exercise_not_attempted_then_completed(page: Page, lab: JupyterLab, artifacts: Path) -> None:
    shutil.copy(EXERCISE, lab.root / "attention.ipynb")
    nb = nbformat.read(EXERCISE, as_version=4)
    answer, test = grade_id_index(nb, "softmax"), grade_id_index(nb, "test_softmax")
    assert test > answer, "the softmax test cell must come after the softmax answer cell"
    before_test = [i for i, c in enumerate(nb.cells[:test + 1]) if c.cell_type == "code"]

    cells = open_notebook(page, lab, "attention.ipynb", len(nb.cells))
    run_all(page)
    # Run All stops at the first cell that raises, and an untouched exercise's first test cell
    # raises "not attempted": every code cell up to it must have run.
    wait_executed(page, cells, before_test)
    wait_kernel_idle(page)
    # Outputs by kind: a traceback quotes the cell's source (including its final
    # print("softmax: visible tests passed")), so only the stdout stream may show a pass.
    test_out = cells.nth(test).locator(".jp-Cell-outputArea")
    test_stdout = test_out.locator(f'[data-mime-type="{STDOUT}"]')
    test_stderr = test_out.locator(f'[data-mime-type="{STDERR}"]')
    expect(test_stderr, "the untouched softmax should be reported as not attempted").to_contain_text(
        "NotAttempted: softmax: not attempted yet", timeout=RUN_MS)
    assert test_stdout.count() == 0, f"the not-attempted test cell printed: {test_stdout.all_inner_texts()}"
    page.screenshot(path=str(artifacts / "jupyterlab-exercise-before.png"))

    # Type the answer: select everything in the answer cell's editor and replace it. insert_text
    # sends the text as one input (like a paste), so the editor's auto-indent cannot double the
    # indentation the way per-key typing of a newline followed by spaces would.
    editor = cells.nth(answer).locator(".cm-content")
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(SOFTMAX_ANSWER.rstrip("\n"))
    expect(editor, "the editor does not hold what was typed").to_have_text(
        re.compile(r"def softmax\(x: torch\.Tensor, dim: int = -1\) -> torch\.Tensor:\s*"
                   r"shifted = x - x\.amax\(dim=dim, keepdim=True\)\s*e = shifted\.exp\(\)\s*"
                   r"return e / e\.sum\(dim=dim, keepdim=True\)"))
    assert "NotImplementedError" not in editor.inner_text()

    old_answer_count, old_test_count = execution_count(cells.nth(answer)), execution_count(cells.nth(test))
    page.keyboard.press("Shift+Enter")   # run the answer cell; the focus moves to the test cell
    expect(cells.nth(test), "Shift+Enter did not move to the softmax test cell").to_have_class(
        re.compile(r"\bjp-mod-active\b"))
    page.keyboard.press("Shift+Enter")   # run the test cell
    wait_executed(page, cells, [answer, test])
    expect(test_stdout, "the softmax test cell did not pass with a correct softmax").to_have_text(
        re.compile(r"^\s*softmax: visible tests passed\s*$"), timeout=RUN_MS)
    wait_kernel_idle(page)
    # Both cells really ran again (new counts), and the test cell shows no error of any kind.
    assert execution_count(cells.nth(answer)) != old_answer_count
    assert execution_count(cells.nth(test)) != old_test_count
    assert test_stderr.count() == 0, f"the softmax test cell reported an error:\n{test_out.inner_text()}"
    for word in ("not attempted", "Traceback", "CheckFailed", "Error"):
        assert word not in test_out.inner_text(), f"{word!r} in the test cell's output:\n{test_out.inner_text()}"
    page.screenshot(path=str(artifacts / "jupyterlab-exercise-after.png"))
    assert page.js_errors == [], f"JavaScript errors in JupyterLab: {page.js_errors}"


def test_chapter_slider_redraws_figure(page: Page, lab: JupyterLab, artifacts: Path) -> None:
    # jupytext is not installed; myst_nb's reader is the parser the book build itself uses for
    # these MyST markdown notebooks, so the notebook is the one the book executes.
    nb = read_myst_markdown_notebook(CHAPTER.read_text())
    nbformat.write(nb, lab.root / "attention-chapter.ipynb")
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]

    cells = open_notebook(page, lab, "attention-chapter.ipynb", len(nb.cells))
    run_all(page)
    wait_executed(page, cells, code)
    wait_kernel_idle(page)
    errors = page.locator(f'.jp-Notebook .jp-OutputArea-output[data-mime-type="{STDERR}"]')
    assert errors.count() == 0, f"the chapter printed an error or warning:\n{errors.all_inner_texts()}"

    # The softmax-temperature widget: the cell whose slider is labelled "scale s".
    cell = cells.filter(has=page.locator(".widget-slider", has_text="scale s"))
    expect(cell, "no cell with the 'scale s' slider (attention_widgets.softmax_temperature)").to_have_count(1)
    img = cell.locator(".widget-output img")
    readout = cell.locator(".widget-slider .widget-readout")
    expect(img).to_have_count(1, timeout=RUN_MS)
    cell.scroll_into_view_if_needed()
    src_before, readout_before = img.get_attribute("src"), readout.inner_text().strip()
    assert src_before and src_before.startswith("data:image/png"), f"no figure under the slider: {src_before!r:.80}"
    assert float(readout_before) == pytest.approx(1.0), f"slider should start at s = 1, reads {readout_before}"
    cell.screenshot(path=str(artifacts / "jupyterlab-slider-before.png"))

    # One key press at a time: each moves the exponent by the slider's step and makes the kernel
    # redraw once, so waiting for a new image after each press ties every figure to one value
    # (pressing several keys at once would let the first redraw satisfy the wait while the
    # others are still queued).
    handle = cell.locator(".noUi-handle")
    srcs = [src_before]
    moves = ["ArrowRight"] * STEPS + ["ArrowLeft"] * STEPS
    exponents = [0.05 * k for k in range(1, STEPS + 1)] + [0.05 * k for k in range(STEPS - 1, -1, -1)]
    for i, (key, exponent) in enumerate(zip(moves, exponents)):
        handle.focus()
        page.keyboard.press(key)
        # The readout is the widget model's value: s = 10 ** exponent (FloatLogSlider, base 10, step 0.05).
        expect(readout, f"after {key}, the slider should read s = 10^{exponent:.2f}").to_have_text(
            f"{10 ** exponent:.2f}", timeout=RUN_MS)
        expect(img, f"the figure was not redrawn after {key} (move {i + 1})").not_to_have_attribute(
            "src", srcs[-1], timeout=RUN_MS)
        expect(img).to_have_count(1)
        srcs.append(img.get_attribute("src"))
        if i == STEPS - 1:
            assert img.evaluate("i => i.complete && i.naturalWidth > 100"), "the redrawn figure is not an image"
            cell.screenshot(path=str(artifacts / "jupyterlab-slider-after.png"))
    # Every value drew a different figure, and back at s = 1 the figure is the one first drawn:
    # the image follows the slider's value, not just "something changed".
    assert len(set(srcs[:STEPS + 1])) == STEPS + 1, "two slider values drew the same figure"
    assert srcs[-1] == src_before, "back at s = 1.00 the figure differs from the one drawn at s = 1.00"
    assert page.js_errors == [], f"JavaScript errors in JupyterLab: {page.js_errors}"
