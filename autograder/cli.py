"""Command line: ``python -m autograder {release,check-release,grade}``. Thin: parse, call, print.

Bad input never shows a traceback: a problem with the arguments or the machine is one line
on stderr and exit status 2; anything unexpected is one line naming the error and the
``--debug`` flag that shows the traceback (exit status 1).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from autograder.course import EXERCISES, SOLUTIONS, assignments
from autograder.learner_text import one_line


def _release(args) -> int:
    from autograder.release import generate, relative

    names = args.assignments or assignments(SOLUTIONS)
    EXERCISES.mkdir(exist_ok=True)
    for name in names:
        print(f"released {name} -> {relative(generate(name, EXERCISES))}")
    return 0


def _check_release(args) -> int:
    from autograder.release import stale_exercises

    stale = stale_exercises()
    if stale:
        print(f"exercises out of date: {', '.join(stale)}. Run `make exercises` and commit the result.")
        return 1
    print("exercises are up to date")
    return 0


def _grade(args) -> int:
    from autograder.grading import GradingSetupError, grade_class
    from autograder.sandbox import Limits

    if not (args.timeout > 0 and math.isfinite(args.timeout)):
        print(f"cannot grade: --timeout must be a positive number of seconds, not {args.timeout:g}", file=sys.stderr)
        return 2
    try:
        limits = Limits(cell_seconds=args.timeout, call_seconds=args.timeout)
        results = grade_class(args.assignment, Path(args.submissions), Path(args.out), workers=args.workers,
                              limits=limits, show_progress=not args.quiet)
    except GradingSetupError as exc:
        print(f"cannot grade: {one_line(exc, 2000)}", file=sys.stderr)
        return 2
    graded = [r for r in results if r.status == "graded"]
    errors = len(results) - len(graded)
    cheats = sum(r.banned for r in results)
    print("reference solution checked first: full marks (the grader works on this machine)")
    print(f"{len(results)} submissions: {len(graded)} graded, {errors} errors, {cheats} rejected cheats (banned calls)")
    out = Path(args.out)
    print(f"grades: {out / 'grades.csv'}\nreport: {out / 'report.md'} (plot: {out / 'score-distribution.png'})")
    print(f"feedback: {out / 'feedback'}/<student_id>/{args.assignment}.html")
    return 0


def _workers(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m autograder", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("release", help="regenerate exercises/ from solutions/ with nbgrader")
    p.add_argument("assignments", nargs="*", help="assignment ids (default: all)")
    p.set_defaults(func=_release)

    p = sub.add_parser("check-release", help="exit 1 if exercises/ differs from a fresh release")
    p.set_defaults(func=_check_release)

    p = sub.add_parser("grade", help="grade a folder of submissions")
    p.add_argument("assignment", help="assignment id, e.g. attention")
    p.add_argument("submissions", help="folder with one subfolder (or .zip) per student")
    p.add_argument("--out", required=True, help="output folder: grades.csv, feedback/, course/ (the gradebook)")
    p.add_argument("--workers", type=_workers, default=None, help="parallel graders (default: the number of cores)")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds each learner cell and each call to a learner function may run (default 10)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the full traceback of an unexpected error")
    p.set_defaults(func=_grade)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Learner text is cleaned before it is printed; this keeps a terminal that cannot show
    # some character (LANG=C, a pipe) from turning it into a crash.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted; run the same command again to continue where it stopped", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 (the catch-all: one line, never a traceback, unless asked)
        if args.debug:
            raise
        print(f"error: {one_line(f'{type(exc).__name__}: {exc}', 1000)} "
              f"(rerun with `python -m autograder --debug {args.command} ...` for the traceback)", file=sys.stderr)
        return 1
