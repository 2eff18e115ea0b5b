"""What the diagnosis machinery costs a correct answer.

Prints, for every chapter, the time of its visible tests run in-process on the reference answers
(the work ``qkv check`` does after its imports; the goal is at most about 1 s per chapter), and the
ratio of one ``call_learner`` call to a bare call of the same function, measured here in the same
process (the machine may be busy: compare the ratio, not the seconds).

    .venv/bin/python benchmarks/check_overhead.py [chapter ...]
"""

from __future__ import annotations

import contextlib
import importlib
import io
import sys
import time
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from notebook_tools import reference_namespace  # noqa: E402 - the test helper that loads a solution
from qkv.chapters import CHAPTERS  # noqa: E402
from qkv.checks.core import call_learner  # noqa: E402
from qkv.selfcheck import Visible, run_tests  # noqa: E402


def visible_seconds(slug: str, repeats: int = 3) -> tuple[float, bool]:
    importlib.import_module(f"qkv.checks.{slug}")
    ns = reference_namespace(slug)
    tests = [t for t in Visible.from_notebook(nbformat.read(REPO / "exercises" / slug / f"{slug}.ipynb",
                                                            as_version=4)).tests if "speed" not in t[0]]
    best, ok = float("inf"), True
    for _ in range(repeats):
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            verdicts = list(run_tests(dict(ns), tests))
        best = min(best, time.perf_counter() - start)
        ok = ok and all(v[2] == "passed" for v in verdicts)
    return best, ok


def call_overhead_ratio(n: int = 20_000) -> float:
    importlib.import_module("qkv.checks.transformer")   # declares noam_lr's argument names

    def noam_lr(step, d_model, warmup):
        return d_model ** -0.5 * min(step ** -0.5, step * warmup ** -1.5)

    start = time.perf_counter()
    for i in range(1, n + 1):
        noam_lr(i, 512, 4000)
    bare = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(1, n + 1):
        call_learner(noam_lr, i, 512, 4000, name="noam_lr")
    wrapped = time.perf_counter() - start
    return wrapped / bare


def main(argv: list[str]) -> None:
    slugs = argv or [c.slug for c in CHAPTERS if (REPO / "solutions" / c.slug).exists()]
    ratio = call_overhead_ratio()
    print(f"call_learner / bare call (noam_lr, scalars): {ratio:.1f}x")
    for slug in slugs:
        seconds, ok = visible_seconds(slug)
        print(f"{slug:14s} visible tests on the reference: {seconds:5.2f} s  {'all pass' if ok else 'SOME FAIL'}")


if __name__ == "__main__":
    main(sys.argv[1:])
