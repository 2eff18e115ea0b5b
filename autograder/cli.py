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
from qkv import book_links


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
    import shutil
    import tempfile

    from autograder import lms
    from autograder.grading import GradingSetupError, grade_class
    from autograder.sandbox import Limits, SandboxUnavailable, platform_caveats

    if not (args.timeout > 0 and math.isfinite(args.timeout)):
        print(f"cannot grade: --timeout must be a positive number of seconds, not {args.timeout:g}", file=sys.stderr)
        return 2
    if (args.submissions is None) == (args.course is None):
        print("cannot grade: give either a SUBMISSIONS folder (or LMS zip) or --course, not both or neither",
              file=sys.stderr)
        return 2
    if args.out is None and args.course is None:
        print("cannot grade: --out is required (except with --course)", file=sys.stderr)
        return 2
    if args.lms and args.course:
        print("cannot grade: --lms reads an LMS download zip, --course an nbgrader course; use one", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(args.course) / "qkv-grades" / args.assignment
    if args.out is None and Path(args.course).is_dir():
        out.parent.mkdir(parents=True, exist_ok=True)  # the default --out lives in the course
    download, intake, run_notes = None, None, []
    # An LMS download is unpacked outside --out: a run that stops early leaves --out as it was.
    scratch = Path(tempfile.mkdtemp(prefix="qkv-lms-")) if args.lms else None
    try:
        if args.lms:
            download = lms.read_download(args.lms, Path(args.submissions), args.assignment, scratch,
                                         worksheet=Path(args.lms_worksheet) if args.lms_worksheet else None)
            intake, run_notes = (lambda _scratch: download.submissions(args.assignment)), download.unmapped
            for note in run_notes:
                print(f"not mapped: {one_line(note, 500)}", file=sys.stderr)
        limits = Limits(cell_seconds=args.timeout, call_seconds=args.timeout)
        try:  # where a guarantee is weaker on this machine, say so before anyone is graded
            caveats = platform_caveats()
        except SandboxUnavailable:
            caveats = []  # grade_class refuses with the fix
        edition = book_links.edition_of(args.lang)
        notes = [*caveats, book_links.unbuilt_edition_note(edition)]

        def announce() -> None:  # only once grading goes ahead: a refusal is one line
            for note in filter(None, notes):
                print(f"note: {note}", file=sys.stderr)

        results = grade_class(args.assignment, Path(args.submissions) if args.submissions else None, out,
                              workers=args.workers, limits=limits, show_progress=not args.quiet,
                              course=Path(args.course) if args.course else None, intake=intake, run_notes=run_notes,
                              machine_notes=caveats, book_edition=edition, announce=announce)
        if download is not None:
            imported = lms.write_import_csv(download, results, out / f"{args.lms}-import.csv",
                                            points=args.lms_points, column=args.lms_column, assignment=args.assignment)
            print(f"{args.lms} import: {imported}")
    except (GradingSetupError, lms.DownloadError) as exc:
        print(f"cannot grade: {one_line(exc, 2000)}", file=sys.stderr)
        return 2
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        if args.course and Path(args.course).is_dir():  # even after a failure: never leave root's files
            from autograder.nbgrader_course import give_back_to_owner

            give_back_to_owner(Path(args.course).resolve())
    graded = [r for r in results if r.status == "graded"]
    errors = len(results) - len(graded)
    cheats = sum(r.banned for r in results)
    print("reference solution checked first: full marks (the grader works on this machine)")
    print(f"{len(results)} submissions: {len(graded)} graded, {errors} errors, {cheats} rejected cheats (banned calls)")
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

    p = sub.add_parser("grade", help="grade a folder of submissions, an nbgrader course, or an LMS download")
    p.add_argument("assignment", help="assignment id, e.g. attention")
    p.add_argument("submissions", nargs="?",
                   help="folder with one subfolder (or .zip) per student; with --lms, the LMS's download zip")
    p.add_argument("--out", help="output folder: grades.csv, report.md, feedback/, course/ (the gradebook); "
                   "default with --course: COURSE/qkv-grades/ASSIGNMENT")
    p.add_argument("--course", help="an nbgrader course folder (after `nbgrader collect`): grade "
                   "COURSE/submitted/<student>/ASSIGNMENT in place, in the course's own gradebook and feedback/, "
                   "ready for formgrader and `nbgrader release_feedback`")
    p.add_argument("--lms", choices=["canvas", "moodle"],
                   help="SUBMISSIONS is Canvas's or Moodle's \"download all submissions\" zip; also writes "
                   "OUT/<lms>-import.csv for the LMS's grade import")
    p.add_argument("--lms-points", type=float, help="the assignment's points in the LMS (default: the notebook's)")
    p.add_argument("--lms-column", help="Canvas: the assignment's column as the gradebook export names it, "
                   "e.g. 'Attention (4567)' (default: the assignment id, which Canvas imports as a new assignment)")
    p.add_argument("--lms-worksheet", help="Moodle: its grading worksheet CSV, for names, e-mails and lateness")
    p.add_argument("--workers", type=_workers, default=None, help="parallel graders (default: the number of cores)")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds each learner cell and each call to a learner function may run (default 10)")
    p.add_argument("--lang", choices=book_links.EDITIONS,
                   help="the edition of the book that feedback and the report name and link the sections to "
                   "reread in (default: from the locale, LC_ALL/LC_MESSAGES/LANG, as `qkv check` does)")
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
