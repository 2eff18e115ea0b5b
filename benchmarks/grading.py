"""Grading throughput: stock nbgrader (serial, unsandboxed) vs qkv's grader (all protections on).

Both grade the same submissions of the attention assignment (correct, wrong and erroring,
mixed) in this one invocation, and both write nbgrader gradebook entries and feedback.
Prints notebooks per second for each, their ratio, and where qkv's time goes: verification
(sandboxed learner processes and the reference's tests, summed over the workers), recording
(nbgrader's autograde into the gradebook, in the main process, its one writer) and feedback
(nbgrader's feedback pages, summed over the workers).

With ``--scaling``: qkv's grader alone on the same submissions with 1, 2, ... up to the
machine's cores worker processes, each run from scratch (no verdict cache); prints
notebooks/s, the speed-up over one worker, notebooks/s per core, and what the best rate means
for a class of 1,000 learners x every graded chapter.

    .venv/bin/python benchmarks/grading.py [--students 40] [--workers N] [--scaling]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from autograder.course import SOLUTIONS, assignments, nbgrader_config  # noqa: E402
from autograder.grading import PHASES, grade_class  # noqa: E402
from notebook_tools import learner_notebook  # noqa: E402

RIGHT = {"softmax": "reference", "scaled_dot_product_attention": "reference", "additive_attention": "reference"}
KINDS = [
    RIGHT,
    {"softmax": "reference", "scaled_dot_product_attention":
        "def scaled_dot_product_attention(q, k, v, mask=None):\n"
        "    w = softmax(q @ k.transpose(-2, -1))\n    return w @ v, w"},
    {**RIGHT, "additive_attention": "def additive_attention(:\n    pass"},  # a syntax error
    {},  # not attempted: every test raises
]


def make_class(folder: Path, n: int) -> Path:
    for i in range(n):
        (folder / f"s{i:03d}").mkdir(parents=True)
        nbformat.write(learner_notebook("attention", KINDS[i % len(KINDS)]), folder / f"s{i:03d}" / "attention.ipynb")
    return folder


def stock(subs: Path, work: Path) -> float:
    """nbgrader's own autograde and feedback, one notebook after another, no sandbox."""
    from nbgrader.apps import NbGraderAPI

    course = work / "stock"
    shutil.copytree(SOLUTIONS / "attention", course / "source" / "attention")
    api = NbGraderAPI(config=nbgrader_config(course))
    assert api.generate_assignment("attention")["success"]
    students = sorted(p.name for p in subs.iterdir())
    for s in students:
        (course / "submitted" / s / "attention").mkdir(parents=True)
        shutil.copy(subs / s / "attention.ipynb", course / "submitted" / s / "attention" / "attention.ipynb")
    start = time.perf_counter()
    for s in students:
        assert api.autograde("attention", s)["success"]
        assert api.generate_feedback("attention", s)["success"]
    return time.perf_counter() - start


def ours(subs: Path, work: Path, workers: int | None) -> float:
    start = time.perf_counter()
    results = grade_class("attention", subs, work / "qkv", workers=workers, show_progress=False)
    elapsed = time.perf_counter() - start
    assert all(r.status == "graded" for r in results)
    # A run that skipped feedback would not be the same work as stock's: it must not count.
    assert not [r for r in results if "feedback could not" in r.message], [r.message for r in results]
    assert len(list((work / "qkv" / "feedback").glob("*/attention.html"))) == len(results)
    return elapsed


def scaling(subs: Path, work: Path, max_workers: int) -> list[tuple[int, float]]:
    """(workers, notebooks/s) for 1 .. max_workers workers, each grading every submission afresh."""
    n = sum(1 for _ in subs.iterdir())
    rates = []
    for workers in range(1, max_workers + 1):
        (work / f"scaling-{workers}").mkdir()  # grade refuses an --out whose parent does not exist
        rates.append((workers, n / ours(subs, work / f"scaling-{workers}", workers)))
    return rates


def print_scaling(rates: list[tuple[int, float]], n: int, learners: int = 1000) -> None:
    chapters = len(assignments())  # every graded chapter the course has
    base = rates[0][1]
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end (other work on the "
          f"machine slows every row alike); {n} attention submissions per run")
    print("workers  notebooks/s  speed-up  notebooks/s per core")
    for workers, rate in rates:
        print(f"{workers:>7}  {rate:>11.2f}  {rate / base:>7.2f}x  {rate / workers:>20.2f}")
    workers, best = max(rates, key=lambda r: r[1])
    total = learners * chapters
    print(f"{learners} learners x {chapters} chapters = {total} notebooks: {total / best / 3600:.1f} h on this machine "
          f"at {best:.2f} notebooks/s ({workers} workers), assuming every chapter grades like attention")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=40)
    parser.add_argument("--workers", type=int, default=None, help="qkv grader workers (default: cores)")
    parser.add_argument("--scaling", action="store_true",
                        help="throughput against the number of workers, 1 .. --workers (default: cores)")
    args = parser.parse_args()
    if args.scaling:
        with tempfile.TemporaryDirectory(prefix="qkv-bench-") as tmp:
            subs = make_class(Path(tmp) / "subs", args.students)
            print_scaling(scaling(subs, Path(tmp), args.workers or os.cpu_count() or 1), args.students)
        return
    with tempfile.TemporaryDirectory(prefix="qkv-bench-") as tmp:
        work = Path(tmp)
        subs = make_class(work / "subs", args.students)
        t_stock = stock(subs, work)
        t_ours = ours(subs, work, args.workers)
    n = args.students
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end "
          "(other work on the machine slows both graders)")
    print(f"stock nbgrader (serial, unsandboxed): {n / t_stock:.2f} notebooks/s ({t_stock:.1f} s for {n})")
    print(f"qkv grader (sandboxed, trusted verdicts, {args.workers or os.cpu_count()} workers): "
          f"{n / t_ours:.2f} notebooks/s ({t_ours:.1f} s for {n})")
    print(f"ratio qkv / stock: {t_stock / t_ours:.2f}x")
    workers = args.workers or os.cpu_count()
    print(f"qkv's time per notebook: verification {PHASES['verification'] / n:.2f} s and feedback "
          f"{PHASES['feedback'] / n:.2f} s (both in {workers} workers in parallel), recording "
          f"{PHASES['recording'] / n:.2f} s (in the main process)")


if __name__ == "__main__":
    main()
