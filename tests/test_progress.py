"""`qkv progress`: every chapter's functions as passed / failing / not attempted, table and figure.

The folder is built like a learner's: attention completed from the reference, scaling partly
done (one right, one wrong, one untouched), masking untouched, the other chapters missing.
The expected statuses follow from that construction, not from the tool.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import nbformat
import numpy as np
import pytest

from notebook_tools import REPO, learner_notebook, solution_cell_ids
from qkv.chapters import CHAPTERS
from qkv.progress import COLOURS

pytestmark = pytest.mark.slow  # three chapter checks, each a subprocess that imports torch

WRONG_JACOBIAN = '''def softmax_jacobian(p):
    """A deliberate mistake: forgets the diagonal term diag(p)."""
    return -p.unsqueeze(-1) * p.unsqueeze(-2)
'''


def expected() -> dict[str, dict[str, str]]:
    out = {c.slug: {f: "not attempted" for f in solution_cell_ids(c.slug)} for c in CHAPTERS}
    out["attention"] = {f: "passed" for f in solution_cell_ids("attention")}
    out["scaling"].update(attention_logits="passed", softmax_jacobian="failing")
    return out


@pytest.fixture(scope="module")
def learner_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("my-qkv")
    notebooks = {
        "attention": learner_notebook("attention", {g: "reference" for g in solution_cell_ids("attention")}),
        "scaling": learner_notebook("scaling", {"attention_logits": "reference", "softmax_jacobian": WRONG_JACOBIAN}),
        "masking": nbformat.read(REPO / "exercises/masking/masking.ipynb", as_version=4),
    }
    for slug, nb in notebooks.items():
        (folder / slug).mkdir()
        nbformat.write(nb, folder / slug / f"{slug}.ipynb")
    return folder


@pytest.fixture(scope="module")
def run(learner_folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qkv", "progress", str(learner_folder)], cwd=learner_folder,
                          capture_output=True, text=True, timeout=600)


def test_table_shows_expected_statuses(run: subprocess.CompletedProcess) -> None:
    assert run.returncode == 0, run.stdout + run.stderr
    table: dict[str, dict[str, str]] = {}
    chapter = None
    for line in run.stdout.splitlines():
        if m := re.match(r"^(\w+): \d+/\d+ passed", line):
            chapter = m.group(1)
            table[chapter] = {}
        elif m := re.match(r"^    (\w+)\s+(passed|failing|not attempted)$", line):
            table[chapter][m.group(1)] = m.group(2)
    assert table == expected(), run.stdout
    n = sum(len(v) for v in expected().values())
    assert f"total: 4 passed, 1 failing, {n - 5} not attempted, of {n} functions" in run.stdout
    assert "bert: 0/6 passed  (no notebook: not started)" in run.stdout


def test_figure_is_coloured_by_status(run: subprocess.CompletedProcess, learner_folder: Path) -> None:
    """Count pixels of each status colour: cells have equal size, so the areas must be in the
    ratio of the expected counts (text inside cells costs a little area: 10% tolerance)."""
    figure = learner_folder / "qkv-progress.png"
    assert f"figure: {figure}" in run.stdout and figure.exists()
    img = mpimg.imread(figure)[..., :3]

    def area(hex_colour: str) -> int:
        rgb = np.array([int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
        return int((np.abs(img - rgb).max(axis=-1) < 0.02).sum())

    counts = {s: sum(st == s for ch in expected().values() for st in ch.values()) for s in COLOURS}
    per_cell = {s: area(c) / counts[s] for s, c in COLOURS.items()}  # legend swatches add ~1%
    ref = per_cell["failing"]  # exactly one failing cell
    for status, value in per_cell.items():
        assert abs(value - ref) / ref < 0.1, (status, per_cell)
