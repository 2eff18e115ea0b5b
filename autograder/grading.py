"""Grade a class: submissions folder in; gradebook, grades.csv, feedback and a report out.

Before anyone is graded, the arguments are checked and the reference solution goes
through the whole path below in a scratch course (the canary): it must score full marks,
or the run stops and writes nothing.

Pipeline per student:
1. ``submissions.discover`` finds, unpacks and vets the notebook (or says why there is none);
2. a worker process computes trusted verdicts (``verify.verify``): the learner's
   code runs only in a sandbox, the reference's tests run in the worker;
3. the main process records them with nbgrader's own autograde (execution step
   replaced by ``ApplyTrustedVerdicts``): every gradebook write happens here, one student
   after another;
4. a worker process renders the feedback with nbgrader's own generate_feedback, which only
   reads the gradebook: hidden tests removed, learner cells made inert, no script or network
   in any page (``feedback.py``). Rendering pages is most of nbgrader's cost per student and
   each page is independent, so it runs next to the verifications instead of after them.

Any exception in any of these steps becomes that student's ``error`` row; the run and
its output files always complete.

Verdicts are cached under a key covering everything that decides them (the reference, the
submission, the limits, the checks' and the grader's code, the torch version: see
``verdicts.cache_key``), so a run killed at any point is simply run again: finished students
are not re-verified, a changed grader re-verifies everyone, and the gradebook (manual grades
included) is updated in place.
"""

from __future__ import annotations

import gc
import hashlib
import json
import multiprocessing
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor
from nbgrader.api import Gradebook, MissingEntry
from nbgrader.apps import NbGraderAPI
from nbgrader.preprocessors import (
    AssignLatePenalties,
    CheckCellMetadata,
    ClearHiddenTests,
    ClearOutput,
    DeduplicateIds,
    GetGrades,
    OverwriteCells,
    OverwriteKernelspec,
    SaveAutoGrades,
)
from sqlalchemy.exc import OperationalError, SAWarning
from tqdm import tqdm

from autograder import nbgrader_course, nbgrader_reuse
from autograder.course import SOLUTIONS, assignments, nbgrader_config, solution_notebook
from autograder.feedback import FeedbackExporter, FeedbackPageError, SanitizeLearnerCells, finish_page, install_mathjax
from autograder.learner_text import clean, one_line
from autograder.preprocessors import ApplyTrustedVerdicts, NormalizeGradeIds
from autograder.report import Result, plot_distribution, write_csv, write_report
from autograder.sandbox import InfrastructureError, Limits, SandboxUnavailable, platform_mode
from autograder.submissions import Submission, discover, remove_tree
from autograder.verdicts import Verdicts, cache_key
from qkv.book_links import EDITIONS

# nbgrader 0.9.6's gradebook triggers SQLAlchemy autoflush warnings on every autograde; they
# are upstream noise (the rows are written correctly) and would bury the progress bar.
warnings.filterwarnings("ignore", category=SAWarning)


# Seconds spent per phase, for benchmarks/grading.py: "verification" and "feedback" (nbgrader's
# feedback pages), both summed over the workers, and "recording" (nbgrader's autograde into the
# gradebook, in this process), and "setup" (starting the workers, preparing the course and the
# canary, once per run, before any student).
PHASES: Counter = Counter()

# Verifications queued in the pool per worker: enough to keep every worker busy, few enough that
# a recorded student's feedback job is not queued behind the whole class.
VERIFICATIONS_AHEAD = 2


class GradingSetupError(RuntimeError):
    """The run cannot start (bad arguments, no sandbox, broken reference); nothing was graded."""


class CanaryFailed(GradingSetupError):
    """The reference solution, graded as a submission, did not get full marks: the grader
    cannot be trusted on this machine, so no student is graded and nothing is written."""


CANARY_ID = "reference-canary"


def grade_class(assignment: str, submissions: Path | None, out: Path, *, solutions: Path = SOLUTIONS,
                workers: int | None = None, limits: Limits = Limits(), show_progress: bool = True,
                course: Path | None = None, intake: Callable[[Path], list[Submission]] | None = None,
                run_notes: Sequence[str] = (), machine_notes: Sequence[str] = (),
                book_edition: str = "en", announce: Callable[[], None] | None = None) -> list[Result]:
    """Grade every submission of ``assignment``; write ``out/grades.csv``, ``out/feedback/``,
    ``out/report.md`` and ``out/score-distribution.png``.

    Raises GradingSetupError, before anything is written to ``out``, for bad arguments, a
    missing sandbox, or a canary failure (the reference solution, sent through exactly the
    path a submission takes, must score full marks). After that, one student's failure at
    any step becomes an ``error`` row with a message; the others are graded normally and
    the output files are always written.

    ``course``: an nbgrader course folder to grade in place (``COURSE/submitted/<student>/<assignment>/``,
    its gradebook and feedback folder; see ``nbgrader_course``) instead of ``out/course``.
    ``intake``: finds the submissions in another layout (an LMS download), given a scratch folder;
    ``submissions`` is then not read.
    ``run_notes``: lines for the report about the run as a whole (files that mapped to no student).
    ``machine_notes``: guarantees that hold only in a weaker form on this machine (``platform_caveats``).
    ``book_edition``: the edition of the book (``qkv.book_links.EDITIONS``) that the feedback's and
    the report's sections to reread are named and linked in.
    ``announce``: called once the arguments and the sandbox have passed their checks, before the
    canary: the CLI prints its notes about this run there, so that a refusal stays one line."""
    nbgrader_reuse.install()  # before the course is prepared: see the module
    out = Path(out).resolve()
    in_place = course is not None
    course = Path(course).resolve() if in_place else out / "course"
    if in_place:
        try:
            nbgrader_course.check_course(course, assignment, solution_notebook(assignment, solutions))
        except (nbgrader_course.CourseLayoutError, FileNotFoundError) as exc:
            raise GradingSetupError(str(exc)) from None
        submissions = course / "submitted"
    submissions = Path(submissions) if submissions is not None else None
    check_arguments(assignment, None if intake else submissions, out, solutions)
    if book_edition not in EDITIONS:
        raise GradingSetupError(f"no {book_edition!r} edition of the book; choose one of: {', '.join(EDITIONS)}")
    try:
        platform_mode()  # root, or an ordinary user with user namespaces; else one line naming the fix
    except SandboxUnavailable as exc:
        raise GradingSetupError(str(exc)) from None
    if announce is not None:
        announce()
    started = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")  # workers must not inherit the main process's state
    workers = max(1, workers or os.cpu_count() or 1)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_warm_worker,
                             initargs=(limits,)) as pool:
        # Start every worker now: their imports (torch, nbgrader: seconds) overlap the course's
        # preparation and the canary instead of delaying the class.
        for _ in range(workers):
            pool.submit(_ready)
        with tempfile.TemporaryDirectory(prefix="qkv-grade-") as tmp:  # gone before anyone is graded
            template = _course_template(assignment, solutions, course, Path(tmp))
            # This process mostly waits while the canary runs in a worker: load the plotting
            # library then, not after the last student.
            threading.Thread(target=_load_plotting, name="qkv-load-plotting", daemon=True).start()
            _canary(assignment, solutions, template, pool, limits, out)
            PHASES["setup"] += time.perf_counter() - started
            if not course.exists():  # first run: the prepared course is the one the canary passed in
                shutil.copytree(template, course)
        try:
            return _grade_students(assignment, submissions, out, solutions, pool, workers, limits, show_progress,
                                   course=course, in_place=in_place, intake=intake, run_notes=run_notes,
                                   machine_notes=machine_notes, book_edition=book_edition)
        finally:
            if in_place:  # run as root on the instructor's course: hand back what was written
                nbgrader_course.give_back_to_owner(course)


def _load_plotting() -> None:
    try:
        import matplotlib.backends.backend_agg  # noqa: F401
        import matplotlib.figure  # noqa: F401
    except Exception:  # noqa: BLE001 (the plot imports it again and reports what fails)
        pass


def check_arguments(assignment: str, submissions: Path | None, out: Path, solutions: Path = SOLUTIONS) -> None:
    """Raise GradingSetupError with one line naming the problem and the fix; touch nothing.
    ``submissions`` None: they come from elsewhere (an LMS download, already read)."""
    known = assignments(solutions)
    if assignment not in known:
        raise GradingSetupError(f"no assignment {assignment!r}: {solutions / assignment / (assignment + '.ipynb')} "
                                f"does not exist (known: {', '.join(known) or 'none'})")
    if submissions is None:
        pass
    elif not submissions.is_dir():
        raise GradingSetupError(f"submissions folder {submissions} does not exist or is not a folder; "
                                "give the folder holding one subfolder or .zip per student")
    elif not os.access(submissions, os.R_OK | os.X_OK):
        raise GradingSetupError(f"submissions folder {submissions} cannot be read; check its permissions")
    elif out == submissions.resolve() or submissions.resolve() in out.parents:
        raise GradingSetupError(f"--out {out} is inside the submissions folder {submissions}; "
                                "choose an output folder outside it")
    if out.exists():
        if not out.is_dir():
            raise GradingSetupError(f"--out {out} exists and is not a folder; choose a folder")
        try:  # the only sure test of writability (root ignores permission bits; read-only mounts do not)
            tempfile.TemporaryFile(dir=out).close()
        except OSError as exc:
            raise GradingSetupError(f"--out {out} is not writable ({exc.strerror}); "
                                    "choose a folder you can write to") from None
    elif not out.parent.is_dir():
        raise GradingSetupError(f"the parent folder of --out {out} does not exist; create it first "
                                f"(mkdir -p {out.parent}) or choose another --out")
    elif not os.access(out.parent, os.W_OK | os.X_OK):
        raise GradingSetupError(f"cannot create --out {out}: {out.parent} is not writable; "
                                "choose a folder you can write to")


@dataclass
class _Recorded:
    """A student whose verdicts are in the gradebook; their feedback is still to be written."""

    sub: Submission
    verdicts: Verdicts
    score: float
    late: str | None  # nbgrader's lateness, from the gradebook


@dataclass
class _FeedbackOutcome:
    """What a feedback job reports: notes for the report (empty when the pages were written)."""

    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return any("could not be generated" in n and "withheld" not in n for n in self.notes)


class _Course:
    """The per-student path shared by the canary and the class: admit a notebook into an
    nbgrader course, verify it in a worker, record the verdicts with nbgrader in this process,
    write the feedback in a worker."""

    def __init__(self, assignment: str, course: Path, solutions: Path, feedback_root: Path, limits: Limits,
                 *, in_place: bool = False, book_edition: str):
        nbgrader_reuse.install()  # recording is serial in this process: let nbgrader keep what it built
        self.assignment, self.course, self.feedback_root, self.limits = assignment, course, feedback_root, limits
        self.in_place, self.book_edition = in_place, book_edition
        self.worker_feedback_failed = False
        self.source_nb = _prepare_course(assignment, course, solutions)
        self.verdict_dir = course / "verdicts"
        self.verdict_dir.mkdir(exist_ok=True)
        self.api = NbGraderAPI(config=_grading_config(course, self.verdict_dir, self.source_nb, book_edition))
        self.max_score = _max_score(course, assignment)
        install_mathjax(feedback_root)  # once, here: pages are finished in several processes

    def error(self, sub: Submission, message: str) -> Result:
        return _error(sub, self.assignment, self.max_score, message)

    def admit(self, sub: Submission) -> Path:
        """Copy the notebook to where nbgrader expects it (in place: leave it there); returns that path."""
        if self.in_place:
            return nbgrader_course.place_in_course(sub, self.course, self.assignment)
        submitted = self.course / "submitted" / sub.student_id / self.assignment
        remove_tree(submitted)
        submitted.mkdir(parents=True)
        shutil.copyfile(sub.notebook, submitted / f"{self.assignment}.ipynb")
        timestamp = sub.notebook.parent / nbgrader_course.TIMESTAMP  # nbgrader's layout: keep when it was submitted
        if timestamp.is_file() and not timestamp.is_symlink():
            shutil.copyfile(timestamp, submitted / nbgrader_course.TIMESTAMP)
        return submitted / f"{self.assignment}.ipynb"

    def _verdict_path(self, sub: Submission) -> Path:
        return self.verdict_dir / f"{sub.student_id}.json"

    def cached(self, sub: Submission, nb_path: Path) -> Verdicts | None:
        return _cached_verdicts(self._verdict_path(sub), self.source_nb, nb_path, self.limits)

    def submit(self, pool: ProcessPoolExecutor, sub: Submission, nb_path: Path) -> Future:
        return pool.submit(_verify_job, str(self.source_nb), str(nb_path), self.assignment, self.limits,
                           str(self._verdict_path(sub)))

    def record(self, sub: Submission, verdicts: Verdicts) -> _Recorded | Result:
        """nbgrader's autograde for ``sub``, in this process (the gradebook's one writer); any
        failure is that student's error row."""
        try:
            return _record(self.api, self.course, self.assignment, sub, verdicts, self.max_score)
        except Exception as exc:  # noqa: BLE001 (one student's recording never stops the run)
            return self.error(sub, f"the grader could not record this submission ({type(exc).__name__}: "
                                   f"{exc}); rerun the same command to retry")

    def submit_feedback(self, pool: ProcessPoolExecutor, recorded: _Recorded) -> Future:
        return pool.submit(_feedback_job, str(self.course), str(self.verdict_dir), str(self.source_nb),
                           self.assignment, recorded.sub.student_id, str(self.feedback_root))

    def feedback_here(self, recorded: _Recorded) -> _FeedbackOutcome:
        """The feedback job, in this process: when a worker could not do it (a broken pool, or the
        gradebook busy beyond SQLite's wait while this process wrote to it)."""
        try:
            return _write_feedback(self.api, self.course, self.assignment, recorded.sub.student_id,
                                   self.feedback_root)
        except Exception:  # noqa: BLE001 (the grade is recorded; missing feedback is a note, not an error)
            return _FeedbackOutcome(["feedback could not be generated"])

    def finish(self, recorded: _Recorded, feedback: _FeedbackOutcome) -> Result:
        sub, verdicts = recorded.sub, recorded.verdicts
        notes = sub.note.split("; ") if sub.note else []
        if recorded.late:
            notes.insert(0, recorded.late)
        late = "; ".join(n for n in notes if n.startswith("late:"))
        notes += feedback.notes
        banned = sorted({v.message for v in verdicts.tests.values() if v.banned})
        notes += [f"{gid}: {v.message}" for gid, v in verdicts.tests.items() if v.banned]
        notes += [f"{cell}: {err}" for cell, err in verdicts.cell_errors.items()
                  if "grader skipped" in err or "did not finish" in err or "not valid Python" in err]
        notes += verdicts.notes
        questions = {gid: (v.points if v.passed else 0.0, v.points, "" if v.passed else v.message)
                     for gid, v in verdicts.tests.items()}
        return Result(sub.student_id, self.assignment, recorded.score, self.max_score, "graded", "; ".join(notes),
                      questions=questions, banned=bool(banned), late=late,
                      rereads=_rereads(verdicts, self.book_edition))

    def grade_one(self, pool: ProcessPoolExecutor, sub: Submission, nb_path: Path) -> Result:
        """The whole path for one admitted submission, waiting for each step (the canary)."""
        recorded = self.record(sub, self.submit(pool, sub, nb_path).result())
        if isinstance(recorded, Result):
            return recorded
        return self.feedback_result(recorded, self.submit_feedback(pool, recorded))

    def feedback_result(self, recorded: _Recorded, future: Future) -> Result:
        """The student's row once their feedback job ended: retried here if the worker failed."""
        try:
            outcome = future.result()
        except (BrokenExecutor, OperationalError, sqlite3.OperationalError):
            outcome = None  # a worker died, or the gradebook stayed locked while this process wrote: write it here
        except Exception as exc:  # noqa: BLE001 (a grader bug: the page is still written, here, and said once)
            if not self.worker_feedback_failed:
                self.worker_feedback_failed = True
                print(one_line(f"warning: writing feedback in a worker failed ({type(exc).__name__}: {exc}); "
                               "writing it in the main process instead (slower). Please report this."),
                      file=sys.stderr)
            outcome = None
        if outcome is None or outcome.failed:
            outcome = self.feedback_here(recorded)
        PHASES["feedback"] += outcome.seconds
        return self.finish(recorded, outcome)


def _course_template(assignment: str, solutions: Path, course: Path, scratch: Path) -> Path:
    """An nbgrader course under ``scratch`` with the assignment prepared and no students.

    Copied from ``course`` when that one is already prepared from the current reference (its
    files are only read), otherwise generated: nbgrader's generate_assignment is the slow part
    of preparing a course, and a first run then reuses this one for the class."""
    template = scratch / "template"
    try:
        reference = solution_notebook(assignment, solutions)
    except FileNotFoundError as exc:
        raise GradingSetupError(str(exc)) from None
    stamp = course / f".{assignment}.source-sha256"
    parts = [f"source/{assignment}", f"release/{assignment}", "gradebook.db", stamp.name]
    current = (all((course / part).exists() for part in parts)
               and stamp.read_text() == hashlib.sha256(reference.read_bytes()).hexdigest())
    if current:
        for part in parts:
            if (course / part).is_dir():
                shutil.copytree(course / part, template / part)
            else:
                template.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(course / part, template / part)
    else:
        _prepare_course(assignment, template, solutions)
    return template


def _canary(assignment: str, solutions: Path, template: Path, pool: ProcessPoolExecutor, limits: Limits,
            out: Path) -> Result:
    """Grade the reference solution, as a learner would hand it in, in a copy of ``template``.

    Raises CanaryFailed unless it scores full marks. Nothing under ``out`` is touched."""
    with tempfile.TemporaryDirectory(prefix="qkv-canary-") as tmp:
        scratch = Path(tmp)
        try:
            shutil.copytree(template, scratch / "course")
            # The reference scores full marks: its feedback has no section to reread, in any edition.
            course = _Course(assignment, scratch / "course", solutions, scratch / "feedback", limits,
                             book_edition="en")
            folder = scratch / "submissions" / CANARY_ID
            folder.mkdir(parents=True)
            nbformat.write(_perfect_submission(course.course, course.source_nb, assignment),
                           folder / f"{assignment}.ipynb")
            [sub] = discover(scratch / "submissions", assignment, scratch / "unpacked")
            if sub.problem:
                result = course.error(sub, sub.problem)
            else:
                nb_path = course.admit(sub)
                try:
                    result = course.grade_one(pool, sub, nb_path)
                except Exception as exc:  # noqa: BLE001
                    result = course.error(sub, f"{type(exc).__name__}: {exc}")
        except GradingSetupError:
            raise
        except Exception as exc:  # noqa: BLE001 (our own machinery failed: say so, grade nobody)
            raise CanaryFailed(_canary_message(assignment, f"the trial run failed ({type(exc).__name__}: {exc})",
                                               out)) from exc
    failed = [msg for _, (earned, possible, msg) in (result.questions or {}).items() if earned < possible]
    no_feedback = "feedback could not be generated" in result.message
    if result.status == "graded" and result.score == result.max_score and not failed and not no_feedback:
        return result
    if result.status != "graded":
        what = f"it could not be graded: {result.message}"
    elif no_feedback and not failed and result.score == result.max_score:
        what = f"it scored full marks but its feedback page could not be written ({result.message})"
    else:
        what = f"it scored {result.score:g}/{result.max_score:g}" + (f": {failed[0]}" if failed else "")
    raise CanaryFailed(_canary_message(assignment, what, out))


def _canary_message(assignment: str, what: str, out: Path) -> str:
    if any(s in what for s in ("could not start", "InfrastructureError", "sandbox", "bwrap", "killed by")):
        fix = ("the sandbox does not work on this machine: check that `bwrap --unshare-pid --unshare-net "
               "--ro-bind / / true` (add --unshare-user as an ordinary user) succeeds for this user, and that "
               "the limits leave room to import torch")
    elif "within" in what:
        fix = "the reference ran out of time: rerun with a larger --timeout, or on a less loaded machine"
    else:
        fix = "rerun with --debug for details, and check the reference solution with `make test`"
    return one_line(f"the reference solution of {assignment} did not get full marks when graded as a submission "
                    f"(canary): {what}. {fix}. No student was graded and nothing was written to {out}.", 1000)


def _perfect_submission(course: Path, source_nb: Path, assignment: str) -> nbformat.NotebookNode:
    """The released notebook with every answer cell holding the reference's answer: what a
    learner who got everything right hands in."""
    reference = {c.metadata.get("nbgrader", {}).get("grade_id"): c.source
                 for c in nbformat.read(source_nb, as_version=4).cells
                 if c.metadata.get("nbgrader", {}).get("solution")}
    released = nbformat.read(course / "release" / assignment / f"{assignment}.ipynb", as_version=4)
    for cell in released.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if cell.metadata.get("nbgrader", {}).get("solution") and gid in reference:
            cell.source = reference[gid]
    return released


def _grade_students(assignment: str, submissions: Path | None, out: Path, solutions: Path,
                    pool: ProcessPoolExecutor, workers: int, limits: Limits, show_progress: bool, *, course: Path,
                    in_place: bool, intake: Callable[[Path], list[Submission]] | None,
                    run_notes: Sequence[str], machine_notes: Sequence[str] = (),
                    book_edition: str) -> list[Result]:
    course = _Course(assignment, course, solutions, out / "feedback", limits, in_place=in_place,
                     book_edition=book_edition)
    unpacked = out / ".unpacked"
    remove_tree(unpacked)
    if in_place:
        entries = nbgrader_course.discover_submitted(course.course, assignment)
    elif intake is not None:
        entries = intake(unpacked)
    else:
        entries = discover(submissions, assignment, unpacked)
    results: list[Result] = []
    bar = tqdm(total=len(entries), desc=f"grading {assignment}", unit="nb", disable=not show_progress)

    def finish(result: Result) -> None:
        results.append(result)
        bar.update(1)
        bar.set_postfix_str(one_line(f"{result.student_id}: {result.status} {result.score:g}/{result.max_score:g}"))
        if result.status == "error":
            bar.write(one_line(f"error: {result.student_id}: {result.message}", 1000))

    # Admit everyone first; keep a few verifications per worker queued; record cached verdicts
    # while they run. Each recorded student's feedback job joins the same queue, so feedback is
    # written as the class goes, not after it.
    to_verify: deque[tuple[Submission, Path]] = deque()
    cached: list[tuple[Submission, Verdicts]] = []
    for sub in entries:
        if sub.problem:
            finish(course.error(sub, sub.problem))
            continue
        try:
            nb_path = course.admit(sub)
            verdicts = course.cached(sub, nb_path)
        except Exception as exc:  # noqa: BLE001 (a disk error: this student, not the run)
            finish(course.error(sub, f"the grader could not take in this submission ({type(exc).__name__}: {exc}); "
                                     "rerun the same command to retry"))
            continue
        if verdicts is not None:
            cached.append((sub, verdicts))
        else:
            to_verify.append((sub, nb_path))

    verifying: dict[Future, Submission] = {}
    writing: dict[Future, _Recorded] = {}

    def start_verifications() -> None:
        while to_verify and len(verifying) < VERIFICATIONS_AHEAD * workers:
            sub, nb_path = to_verify.popleft()
            try:
                verifying[course.submit(pool, sub, nb_path)] = sub
            except Exception as exc:  # noqa: BLE001 (a broken pool: this student, not the run)
                finish(course.error(sub, f"the grader could not take in this submission ({type(exc).__name__}: "
                                         f"{exc}); rerun the same command to retry"))

    def record(sub: Submission, verdicts: Verdicts) -> None:
        recorded = course.record(sub, verdicts)
        if isinstance(recorded, Result):
            finish(recorded)
            return
        try:
            writing[course.submit_feedback(pool, recorded)] = recorded
        except Exception:  # noqa: BLE001 (a broken pool: write it here)
            finish(course.finish(recorded, course.feedback_here(recorded)))

    start_verifications()
    for sub, verdicts in cached:
        record(sub, verdicts)
    while verifying or writing:
        done, _ = wait([*verifying, *writing], return_when=FIRST_COMPLETED)
        for future in done:
            if future in writing:
                finish(course.feedback_result(writing.pop(future), future))
                continue
            sub = verifying.pop(future)
            try:
                verdicts = future.result()
                PHASES["verification"] += verdicts.seconds
            except InfrastructureError as exc:  # ours: no score, no cached verdict; a rerun grades them
                finish(course.error(sub, f"not graded: the grader's sandbox failed ({exc}); this is not the "
                                         "student's doing: rerun the same command to grade them"))
                continue
            except Exception as exc:  # noqa: BLE001 (a grader bug or a broken pool must not stop the others)
                finish(course.error(sub, f"the grader failed on this submission ({type(exc).__name__}: {exc}); "
                                         "rerun the same command to retry"))
                continue
            record(sub, verdicts)
        start_verifications()
    bar.close()
    # Every job has ended: let the workers exit (ending their sandboxes takes a moment) while
    # this process writes the outputs; leaving the pool's `with` block waits for them.
    pool.shutdown(wait=False)
    remove_tree(unpacked)

    write_csv(results, out / "grades.csv")
    try:
        plot = plot_distribution(results, out / "score-distribution.png")
    except Exception as exc:  # noqa: BLE001 (a missing plot must not cost the report)
        plot = None
        print(f"warning: the score plot could not be drawn ({type(exc).__name__}: {exc})", file=sys.stderr)
    write_report(results, assignment, out / "report.md", plot, run_notes=run_notes, machine_notes=machine_notes)
    return sorted(results, key=lambda r: r.student_id)


# --------------------------------------------------------------------------- worker side

def _warm_worker(limits: Limits | None = None) -> None:
    import torch

    import autograder.verify  # noqa: F401  (imports torch and the checks once per worker)
    from autograder.learner_process import warm_sandbox

    nbgrader_reuse.install()  # the feedback jobs read the gradebook with nbgrader

    torch.set_num_threads(1)
    # Everything imported so far lives as long as the worker: out of the collector's sight, full
    # collections do not walk it while grading, and the worker's exit does not either (with torch
    # and nbgrader loaded, the pool's shutdown took ~1 s per worker, ~0.2 s frozen).
    gc.freeze()
    if limits is not None:
        warm_sandbox(limits)  # its sandbox imports torch too: before the first submission, not during it


def _ready() -> None:
    """A job that only makes the pool start a worker (its initializer does the work)."""


def _verify_job(source_nb: str, submission_nb: str, assignment: str, limits: Limits, verdict_path: str) -> Verdicts:
    from autograder.verify import verify

    start = time.perf_counter()
    verdicts = verify(Path(source_nb), Path(submission_nb), assignment, limits)
    stored = _store_verdicts(verdicts, Path(verdict_path))
    stored.seconds = time.perf_counter() - start
    return stored


# One nbgrader API per course in each worker: its feedback converter reads the gradebook only.
_FEEDBACK_APIS: dict[tuple[str, str], NbGraderAPI] = {}


def _feedback_job(course: str, verdict_dir: str, source_nb: str, assignment: str, student_id: str,
                  feedback_root: str) -> _FeedbackOutcome:
    api = _FEEDBACK_APIS.get((course, verdict_dir))
    if api is None:
        config = _grading_config(Path(course), Path(verdict_dir), Path(source_nb))
        api = _FEEDBACK_APIS[course, verdict_dir] = NbGraderAPI(config=config)
    return _write_feedback(api, Path(course), assignment, student_id, Path(feedback_root))


def _store_verdicts(verdicts: Verdicts, path: Path) -> Verdicts:
    """Write ``verdicts`` with every text made clean (see ``learner_text.clean``): learner
    messages may hold lone surrogates or escape sequences, and nbgrader writes these texts
    into the graded notebook and the feedback page. Returns the clean verdicts."""
    text = json.dumps(_clean_json(json.loads(verdicts.to_json())), indent=1)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)  # atomic: a killed run leaves either no verdict or a whole one
    return Verdicts.from_json(text)


def _clean_json(value):
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, list):
        return [_clean_json(v) for v in value]
    if isinstance(value, dict):
        return {clean(k): _clean_json(v) for k, v in value.items()}
    return value


def _cached_verdicts(path: Path, source_nb: Path, submission_nb: Path, limits: Limits) -> Verdicts | None:
    """The verdicts of an earlier run for this very submission, graded under the same limits by
    the same checks and grader code (``cache_key``), or None. A cache file written before its
    text was cleaned is cleaned and rewritten, so a rerun never trips on it."""
    try:
        text = path.read_text(encoding="utf-8")
        verdicts = Verdicts.from_json(text)
        if verdicts.key != cache_key(source_nb, submission_nb, limits):
            return None
        if json.dumps(_clean_json(json.loads(text)), indent=1) != text:
            verdicts = _store_verdicts(verdicts, path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return verdicts


# --------------------------------------------------------------------------- main-process side

def _grading_config(course: Path, verdict_dir: Path, source_nb: Path, book_edition: str = "en"):
    """nbgrader's configuration for recording and feedback. ``book_edition`` names the edition
    the reread links point into; they are written when recording (feedback pages copy them)."""
    c = nbgrader_config(course)
    # One cell per grade_id before nbgrader's own checks (a split or copied answer cell is not an error).
    c.Autograde.sanitize_preprocessors = [NormalizeGradeIds, ClearOutput, DeduplicateIds, OverwriteKernelspec,
                                          OverwriteCells, CheckCellMetadata]
    c.NormalizeGradeIds.source_notebook = str(source_nb)
    c.Autograde.autograde_preprocessors = [ApplyTrustedVerdicts, SaveAutoGrades, AssignLatePenalties, CheckCellMetadata]
    c.ApplyTrustedVerdicts.verdicts_dir = str(verdict_dir)
    c.ApplyTrustedVerdicts.book_edition = book_edition
    # Stock feedback shows hidden-test source; ours removes it first.
    # Learner Markdown and raw cells are made inert before nbgrader's template renders them.
    c.GenerateFeedback.preprocessors = [ClearHiddenTests, SanitizeLearnerCells, GetGrades, CSSHTMLHeaderPreprocessor]
    c.GenerateFeedback.exporter_class = FeedbackExporter  # offline pages, templates compiled once per process
    c.ClearHiddenTests.enforce_metadata = False
    c.HTMLExporter.sanitize_html = True  # outputs too (ours only: learner outputs are cleared when recording)
    return c


def _prepare_course(assignment: str, course: Path, solutions: Path) -> Path:
    try:
        reference = solution_notebook(assignment, solutions)
    except FileNotFoundError as exc:
        raise GradingSetupError(str(exc)) from None
    course.mkdir(parents=True, exist_ok=True)
    source = course / "source" / assignment
    digest = hashlib.sha256(reference.read_bytes()).hexdigest()
    stamp = course / f".{assignment}.source-sha256"
    if stamp.exists() and stamp.read_text() == digest and (source / reference.name).exists():
        return source / reference.name  # unchanged: keep the gradebook's assignment as it is
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(reference.parent, source, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    result = NbGraderAPI(config=nbgrader_config(course)).generate_assignment(assignment, force=True, create=True)
    if not result["success"]:
        raise GradingSetupError(f"nbgrader could not prepare {assignment!r} from {reference}:\n"
                                f"{result.get('log') or result.get('error')}")
    stamp.write_text(digest)
    return source / reference.name


def _max_score(course: Path, assignment: str) -> float:
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        return float(gb.find_assignment(assignment).max_score)


def _error(sub: Submission, assignment: str, max_score: float, message: str) -> Result:
    return Result(sub.student_id, assignment, 0.0, max_score, "error", message)


def _record(api, course: Path, assignment: str, sub: Submission, verdicts: Verdicts,
            max_score: float) -> _Recorded | Result:
    start = time.perf_counter()
    try:
        graded = api.autograde(assignment, sub.student_id, force=True, create=True)
        if not graded["success"]:
            reason = _nbgrader_error(graded.get("log") or graded.get("error"))
            if "metadata" in reason:
                reason += (" The notebook's nbgrader cells do not match the released assignment: was it made from an "
                           "older release, or were cells copied in from another notebook? Ask for a fresh copy of "
                           "the exercise with the answers pasted in.")
            return _error(sub, assignment, max_score, "nbgrader could not record the grades: " + reason)
        with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
            try:
                submission = gb.find_submission(assignment, sub.student_id)
            except MissingEntry:
                return _Recorded(sub, verdicts, 0.0, None)
            return _Recorded(sub, verdicts, float(submission.score), nbgrader_course.lateness(submission))
    finally:
        PHASES["recording"] += time.perf_counter() - start


def _write_feedback(api, course: Path, assignment: str, student_id: str, feedback_root: Path) -> _FeedbackOutcome:
    """nbgrader's feedback for one recorded student: the page it releases from
    ``course/feedback/`` (made offline by FeedbackExporter) and the instructor's copy in
    ``feedback_root/<student_id>/`` (typeset with local MathJax). Reads the gradebook only."""
    start = time.perf_counter()
    outcome = _FeedbackOutcome()
    feedback = api.generate_feedback(assignment, student_id, force=True)
    target = feedback_root / student_id
    remove_tree(target)
    if feedback["success"]:
        shutil.copytree(course / "feedback" / student_id / assignment, target)
        try:
            for page in target.glob("*.html"):
                finish_page(page, feedback_root)
        except FeedbackPageError:
            outcome.notes.append("feedback could not be generated safely and was withheld")
    else:
        outcome.notes.append("feedback could not be generated")
    outcome.seconds = time.perf_counter() - start
    return outcome


def _rereads(verdicts: Verdicts, book_edition: str) -> dict[str, str]:
    """Failed test grade_id -> the section to reread, as the feedback page names it."""
    from qkv.book_links import section_link

    return {gid: section_link(v.reread_chapter, v.reread_heading, book_edition).title()
            for gid, v in verdicts.tests.items() if not v.passed and v.reread_heading}


def _nbgrader_error(log: str | None) -> str:
    """The informative line of an nbgrader failure log (its last lines only say "see above")."""
    generic = ("There was an error processing", "Traceback", "Please see", "Removing existing", "Overwriting")
    for line in (log or "").splitlines():
        line = line.strip()
        if line.startswith("[ERROR]") and not any(g in line for g in generic):
            return line.removeprefix("[ERROR]").strip()
    return _last_line(log)


def _last_line(text: str | None) -> str:
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown error"
