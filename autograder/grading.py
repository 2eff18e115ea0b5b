"""Grade a class: submissions folder in; gradebook, grades.csv, feedback and a report out.

Pipeline per student:
1. ``submissions.discover`` finds the notebook (or says why there is none);
2. a worker process computes trusted verdicts (``verify.verify``): the learner's
   code runs only in a sandbox, the reference's tests run in the worker;
3. the main process records them with nbgrader's own autograde (execution step
   replaced by ``ApplyTrustedVerdicts``) and writes feedback with hidden tests removed.

Verdicts are cached by the hash of the reference and the submission, so a run
killed at any point is simply run again: finished students are not re-verified
and the gradebook (manual grades included) is updated in place.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import shutil
import time
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import nbformat
from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor
from nbgrader.api import Gradebook, MissingEntry
from nbgrader.apps import NbGraderAPI
from nbgrader.preprocessors import AssignLatePenalties, CheckCellMetadata, ClearHiddenTests, GetGrades, SaveAutoGrades
from sqlalchemy.exc import SAWarning
from tqdm import tqdm

from autograder.course import REPO_ROOT, SOLUTIONS, nbgrader_config, solution_notebook
from autograder.preprocessors import ApplyTrustedVerdicts
from autograder.report import Result, plot_distribution, write_csv, write_report
from autograder.sandbox import InfrastructureError, Limits, SandboxUnavailable, platform_mode
from autograder.submissions import Submission, discover
from autograder.verdicts import Verdicts, cache_key

# nbgrader 0.9.6's gradebook triggers SQLAlchemy autoflush warnings on every autograde; they
# are upstream noise (the rows are written correctly) and would bury the progress bar.
warnings.filterwarnings("ignore", category=SAWarning)


# Seconds spent per phase in this process, for benchmarks/grading.py: "verification" (summed over
# the workers), "recording" (nbgrader's autograde into the gradebook), "feedback" (nbgrader's feedback).
PHASES: Counter = Counter()


class GradingSetupError(RuntimeError):
    """The run cannot start (unknown assignment, no sandbox, broken reference); nothing was graded."""


def grade_class(assignment: str, submissions: Path, out: Path, *, solutions: Path = SOLUTIONS,
                workers: int | None = None, limits: Limits = Limits(), show_progress: bool = True) -> list[Result]:
    """Grade every submission of ``assignment``; write ``out/grades.csv``, ``out/feedback/``,
    ``out/report.md`` and ``out/score-distribution.png``. One student's failure becomes an
    ``error`` row with a message; the others are graded normally."""
    try:
        platform_mode()  # root, or an ordinary user with user namespaces; else one line naming the fix
    except SandboxUnavailable as exc:
        raise GradingSetupError(str(exc)) from None
    out = Path(out).resolve()
    course = out / "course"
    source_nb = _prepare_course(assignment, course, solutions)
    verdict_dir = course / "verdicts"
    verdict_dir.mkdir(exist_ok=True)
    api = NbGraderAPI(config=_grading_config(course, verdict_dir))
    max_score = _max_score(course, assignment)

    unpacked = out / ".unpacked"
    shutil.rmtree(unpacked, ignore_errors=True)
    entries = discover(Path(submissions), assignment, unpacked)
    results: list[Result] = []
    jobs: list[tuple[Submission, Path]] = []
    for sub in entries:
        problem = sub.problem or _notebook_problem(sub.notebook)
        if problem:
            results.append(Result(sub.student_id, assignment, 0.0, max_score, "error", problem))
            continue
        submitted = course / "submitted" / sub.student_id / assignment
        shutil.rmtree(submitted, ignore_errors=True)
        submitted.mkdir(parents=True)
        shutil.copyfile(sub.notebook, submitted / f"{assignment}.ipynb")
        jobs.append((sub, submitted / f"{assignment}.ipynb"))

    bar = tqdm(total=len(entries), desc=f"grading {assignment}", unit="nb", disable=not show_progress)
    for r in results:
        bar.update(1)
        bar.write(f"error: {r.student_id}: {r.message}")

    def record(sub: Submission, verdicts: Verdicts | None, failure: str | None) -> None:
        result = (_error(sub, assignment, max_score, failure) if failure
                  else _record(api, course, assignment, sub, verdicts, max_score, out / "feedback"))
        results.append(result)
        bar.update(1)
        bar.set_postfix_str(f"{result.student_id}: {result.status} {result.score:g}/{result.max_score:g}")
        if result.status == "error":
            bar.write(f"error: {result.student_id}: {result.message}")

    pending = []
    for sub, nb_path in jobs:
        cached = _cached_verdicts(verdict_dir / f"{sub.student_id}.json", source_nb, nb_path)
        if cached is not None:
            record(sub, cached, None)
        else:
            pending.append((sub, nb_path))
    if pending:
        n = max(1, min(workers or os.cpu_count() or 1, len(pending)))
        ctx = multiprocessing.get_context("spawn")  # workers must not inherit the main process's state
        with ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_warm_worker) as pool:
            futures = {pool.submit(_verify_job, str(source_nb), str(nb_path), assignment, limits,
                                   str(verdict_dir / f"{sub.student_id}.json")): sub for sub, nb_path in pending}
            for future in as_completed(futures):
                sub = futures[future]
                try:
                    (verdicts, seconds), failure = future.result(), None
                    PHASES["verification"] += seconds
                except InfrastructureError as exc:  # ours: no score, no cached verdict; a rerun grades them
                    verdicts, failure = None, (f"not graded: the grader's sandbox failed ({exc}); this is not the "
                                               "student's doing: rerun the same command to grade them")
                except Exception as exc:  # a grader bug or a broken pool must not stop the others
                    verdicts, failure = None, f"the grader failed on this submission ({type(exc).__name__}: {exc})"
                record(sub, verdicts, failure)
    bar.close()
    shutil.rmtree(unpacked, ignore_errors=True)

    write_csv(results, out / "grades.csv")
    plot = plot_distribution(results, out / "score-distribution.png")
    write_report(results, assignment, out / "report.md", plot)
    return sorted(results, key=lambda r: r.student_id)


# --------------------------------------------------------------------------- worker side

def _warm_worker() -> None:
    import torch

    import autograder.verify  # noqa: F401  (imports torch and the checks once per worker)

    torch.set_num_threads(1)


def _verify_job(source_nb: str, submission_nb: str, assignment: str, limits: Limits,
                verdict_path: str) -> tuple[Verdicts, float]:
    from autograder.verify import verify

    start = time.perf_counter()
    verdicts = verify(Path(source_nb), Path(submission_nb), assignment, limits)
    tmp = Path(verdict_path).with_suffix(".tmp")
    tmp.write_text(verdicts.to_json())
    tmp.replace(verdict_path)  # atomic: a killed run leaves either no verdict or a whole one
    return verdicts, time.perf_counter() - start


def _cached_verdicts(path: Path, source_nb: Path, submission_nb: Path) -> Verdicts | None:
    try:
        verdicts = Verdicts.from_json(path.read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return verdicts if verdicts.key == cache_key(source_nb, submission_nb) else None


# --------------------------------------------------------------------------- main-process side

def _grading_config(course: Path, verdict_dir: Path):
    c = nbgrader_config(course)
    c.Autograde.autograde_preprocessors = [ApplyTrustedVerdicts, SaveAutoGrades, AssignLatePenalties, CheckCellMetadata]
    c.ApplyTrustedVerdicts.verdicts_dir = str(verdict_dir)
    # Stock feedback shows hidden-test source; ours removes it first.
    c.GenerateFeedback.preprocessors = [ClearHiddenTests, GetGrades, CSSHTMLHeaderPreprocessor]
    c.ClearHiddenTests.enforce_metadata = False
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


def _record(api, course: Path, assignment: str, sub: Submission, verdicts: Verdicts, max_score: float,
            feedback_root: Path) -> Result:
    start = time.perf_counter()
    graded = api.autograde(assignment, sub.student_id, force=True, create=True)
    PHASES["recording"] += time.perf_counter() - start
    if not graded["success"]:
        reason = _nbgrader_error(graded.get("log") or graded.get("error"))
        if "metadata" in reason:
            reason += (" The notebook's nbgrader cells do not match the released assignment: was it made from an "
                       "older release, or were cells copied in from another notebook? Ask for a fresh copy of the "
                       "exercise with the answers pasted in.")
        return _error(sub, assignment, max_score, "nbgrader could not record the grades: " + reason)
    score = _score(course, assignment, sub.student_id)
    start = time.perf_counter()
    feedback = api.generate_feedback(assignment, sub.student_id, force=True)
    target = feedback_root / sub.student_id
    shutil.rmtree(target, ignore_errors=True)
    notes = [sub.note] if sub.note else []
    if feedback["success"]:
        shutil.copytree(course / "feedback" / sub.student_id / assignment, target)
        for page in target.glob("*.html"):
            _offline_mathjax(page, feedback_root)
    else:
        notes.append("feedback could not be generated")
    PHASES["feedback"] += time.perf_counter() - start
    banned = sorted({v.message for v in verdicts.tests.values() if v.banned})
    notes += [f"{gid}: {v.message}" for gid, v in verdicts.tests.items() if v.banned]
    notes += [f"{cell}: {err}" for cell, err in verdicts.cell_errors.items()
              if "grader skipped" in err or "did not finish" in err]
    questions = {gid: (v.points if v.passed else 0.0, v.points, "" if v.passed else v.message)
                 for gid, v in verdicts.tests.items()}
    return Result(sub.student_id, assignment, score, max_score, "graded", "; ".join(notes),
                  questions=questions, banned=bool(banned))


# nbgrader's feedback template hard-codes MathJax 2 from a CDN (not even configurable), so
# offline a learner sees raw TeX and the page reaches out to the network. Point it at the
# book's vendored MathJax 3 instead, copied once next to the feedback pages.
_MATHJAX_CDN = re.compile(r'<script src="https://cdnjs\.cloudflare\.com/ajax/libs/mathjax/[^"]*">\s*</script>')
_VENDORED_MATHJAX = REPO_ROOT / "book" / "_vendor" / "mathjax"


def _offline_mathjax(page: Path, feedback_root: Path) -> None:
    html = page.read_text(encoding="utf-8")
    if _VENDORED_MATHJAX.is_dir():
        local = feedback_root / "_mathjax"
        if not local.is_dir():
            shutil.copytree(_VENDORED_MATHJAX, local)
        tag = ('<script>window.MathJax = {tex: {inlineMath: [["$", "$"], ["\\\\(", "\\\\)"]]}};</script>\n'
               '<script src="../_mathjax/tex-mml-chtml.js"></script>')
    else:
        tag = "<!-- MathJax is not vendored yet (run `make book` once); formulas show as TeX -->"
    page.write_text(_MATHJAX_CDN.sub(lambda _: tag, html), encoding="utf-8")


def _notebook_problem(path: Path) -> str | None:
    """Why ``path`` is not a gradable notebook, or None."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return f"{path.name} is not UTF-8 text; save it again from Jupyter"
    except OSError as exc:
        return f"{path.name} could not be read ({exc.strerror})"
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return (f"{path.name} is not valid notebook JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
                "open it in Jupyter, save it again and resubmit")
    try:
        nb = nbformat.reads(text, as_version=4)
        nbformat.validate(nb)
    except Exception as exc:  # nbformat raises several unrelated types for malformed notebooks
        return f"{path.name} is JSON but not a valid notebook ({_last_line(str(exc))})"
    return None


def _score(course: Path, assignment: str, student_id: str) -> float:
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        try:
            return float(gb.find_submission(assignment, student_id).score)
        except MissingEntry:
            return 0.0


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
