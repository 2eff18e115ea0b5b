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

With ``--save``: the result, with the machine's cores, its load and the time of the run, is
also written to ``benchmarks/results/grading.json`` (``grading-scaling.json`` with
``--scaling``). The instructors page of the book prints those files and takes every number
it quotes from them, so a new measurement reaches the page by committing the file.

    .venv/bin/python benchmarks/grading.py [--students 40] [--workers N] [--scaling] [--save]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
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


def scaling_lines(result: dict) -> list[str]:
    rates = result["rates"]
    base = rates[0][1]
    lines = [f"machine: {result['cores']} cores, load average {result['load_end']:.1f} at the end (other work on the "
             f"machine slows every row alike); {result['students']} attention submissions per run",
             "workers  notebooks/s  speed-up  notebooks/s per core"]
    lines += [f"{workers:>7}  {rate:>11.2f}  {rate / base:>7.2f}x  {rate / workers:>20.2f}" for workers, rate in rates]
    workers, best = max(rates, key=lambda r: r[1])
    learners, chapters = result["learners"], result["chapters"]
    total = learners * chapters
    lines.append(f"{learners} learners x {chapters} chapters = {total} notebooks: {total / best / 3600:.1f} h on this "
                 f"machine at {best:.2f} notebooks/s ({workers} workers), assuming every chapter grades like attention")
    return lines


def speed_lines(result: dict) -> list[str]:
    n, t_stock, t_ours, workers = result["students"], result["stock_seconds"], result["qkv_seconds"], result["workers"]
    per = {phase: seconds / n for phase, seconds in result["phases"].items()}
    return [
        f"machine: {result['cores']} cores, load average {result['load_end']:.1f} at the end "
        "(other work on the machine slows both graders)",
        f"stock nbgrader (serial, unsandboxed): {n / t_stock:.2f} notebooks/s ({t_stock:.1f} s for {n})",
        f"qkv grader (sandboxed, trusted verdicts, {workers} workers): {n / t_ours:.2f} notebooks/s "
        f"({t_ours:.1f} s for {n})",
        f"ratio qkv / stock: {t_stock / t_ours:.2f}x",
        f"qkv's time per notebook: verification {per['verification']:.2f} s and feedback {per['feedback']:.2f} s "
        f"(both in {workers} workers in parallel), recording {per['recording']:.2f} s (in the main process); "
        f"once per run: {result['phases']['setup']:.1f} s to start the workers, prepare the course and grade "
        "the reference",
    ]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _finish(result: dict, lines: list[str], save: Path | None) -> None:
    print("\n".join(lines))
    if save is not None:
        save.parent.mkdir(exist_ok=True)
        save.write_text(json.dumps({**result, "printed": lines}, indent=1) + "\n")
        print(f"saved: {save.relative_to(REPO)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=40)
    parser.add_argument("--workers", type=int, default=None, help="qkv grader workers (default: cores)")
    parser.add_argument("--scaling", action="store_true",
                        help="throughput against the number of workers, 1 .. --workers (default: cores)")
    parser.add_argument("--save", action="store_true",
                        help="also write the result to benchmarks/results/ (the instructors page shows it)")
    args = parser.parse_args()
    workers = args.workers or os.cpu_count() or 1
    result = {"started": _now(), "cores": os.cpu_count(), "load_start": os.getloadavg()[0],
              "students": args.students}
    with tempfile.TemporaryDirectory(prefix="qkv-bench-") as tmp:
        work = Path(tmp)
        subs = make_class(work / "subs", args.students)
        if args.scaling:
            result["rates"] = scaling(subs, work, workers)
        else:
            result["stock_seconds"] = stock(subs, work)
            result["qkv_seconds"] = ours(subs, work, workers)
            result["workers"] = workers
            result["phases"] = {phase: PHASES[phase] for phase in ("verification", "feedback", "recording", "setup")}
    result.update(ended=_now(), load_end=os.getloadavg()[0])
    if args.scaling:
        result.update(learners=1000, chapters=len(assignments()))  # every graded chapter the course has
        _finish(result, scaling_lines(result), RESULTS / "grading-scaling.json" if args.save else None)
    else:
        _finish(result, speed_lines(result), RESULTS / "grading.json" if args.save else None)


if __name__ == "__main__":
    main()
