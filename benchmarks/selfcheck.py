"""Self-check speed: `qkv check` per chapter against the same visible tests run in-process.

For every chapter, a learner notebook completed with the reference answers is checked the way
`qkv check CHAPTER NOTEBOOK` does it (a subprocess that loads the cells and runs the visible
tests), and the same visible tests are run in this process against the same functions. Prints,
per chapter, the check's time after its start-up imports, the in-process time, and their ratio.
Goal (issue #10): at most 1 s per chapter after imports on 2 cores.

    .venv/bin/python benchmarks/selfcheck.py [--chapters attention masking ...]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from notebook_tools import learner_notebook, solution_cell_ids  # noqa: E402
from qkv import selfcheck  # noqa: E402
from qkv.chapters import CHAPTERS  # noqa: E402


def check_seconds(chapter: str, notebook: Path) -> tuple[float, float, float]:
    """(wall seconds of the whole check, wall and CPU seconds from the first loaded cell to the
    last test: after the start-up imports)."""
    nb = nbformat.read(notebook, as_version=4)
    visible = selfcheck.visible_tests(chapter, nb)
    start = time.perf_counter()
    messages, hung, why = selfcheck._run_child(chapter, selfcheck.learner_code_cells(nb), list(visible.tests),
                                               notebook.parent, selfcheck.DEFAULT_STEP_TIMEOUT)
    total = time.perf_counter() - start
    assert hung is None, f"{chapter}: {hung} {why}"
    failing = [m for m in messages if m["kind"] == "test" and m["status"] != "passed"]
    assert not failing, failing
    return total, messages[-1]["t"] - messages[0]["t"], messages[-1]["cpu"] - messages[0]["cpu"]


def in_process_seconds(chapter: str, notebook: Path) -> float:
    """The same cells and visible tests, run in this process (imports already paid)."""
    import importlib

    importlib.import_module(f"qkv.checks.{chapter}")
    nb = nbformat.read(notebook, as_version=4)
    visible = selfcheck.visible_tests(chapter, nb)
    ns: dict = {"__name__": "__main__"}
    runner = selfcheck.CellRunner(ns)
    cwd = os.getcwd()
    os.chdir(notebook.parent)
    try:
        # One torch thread as in the check's process; the tests' prints are not the benchmark's output.
        with selfcheck.one_torch_thread(), contextlib.redirect_stdout(io.StringIO()):
            start = time.perf_counter()
            for cid, source in selfcheck.learner_code_cells(nb):
                runner.run(source, cid)
            results = list(selfcheck.run_tests(ns, visible.tests))
            elapsed = time.perf_counter() - start
    finally:
        os.chdir(cwd)
    assert all(v.status == "passed" for v in results), results
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chapters", nargs="*", default=[c.slug for c in CHAPTERS])
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, load average {_load()}")
    print(f"{'chapter':14} {'qkv check':>10} {'after imports':>14} {'(CPU)':>7} {'in-process':>11} {'ratio':>7}")
    with tempfile.TemporaryDirectory(prefix="qkv-bench-") as tmp:
        for chapter in args.chapters:
            folder = Path(tmp) / chapter
            folder.mkdir()
            notebook = folder / f"{chapter}.ipynb"
            nbformat.write(learner_notebook(chapter, {g: "reference" for g in solution_cell_ids(chapter)}), notebook)
            total, after_imports, cpu = check_seconds(chapter, notebook)
            inside = in_process_seconds(chapter, notebook)
            verdict = "ok" if after_imports <= 1.0 else "over the 1 s goal"
            print(f"{chapter:14} {total:9.2f}s {after_imports:13.2f}s {cpu:6.2f}s {inside:10.2f}s "
                  f"{after_imports / inside:6.1f}x  {verdict}", flush=True)
    print(f"load average at the end: {_load()} (a busy machine inflates wall times; CPU seconds less so)")


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
