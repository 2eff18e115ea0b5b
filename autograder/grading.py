"""Grade a class: submissions folder in, gradebook + grades.csv + feedback out.

The run owns an nbgrader course directory under ``OUT/course`` (source copied
from ``solutions/``, the gradebook, autograded notebooks); reruns reuse it, so a
rerun is idempotent and manual grades in the gradebook survive.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import nbformat
from nbgrader.api import Gradebook, MissingEntry
from nbgrader.apps import NbGraderAPI
from tqdm import tqdm

from autograder.course import SOLUTIONS, nbgrader_config, solution_notebook
from autograder.submissions import Submission, discover


@dataclass
class Result:
    """One row of grades.csv."""

    student_id: str
    assignment: str
    score: float
    max_score: float
    status: str  # "graded" or "error"
    message: str = ""


CSV_FIELDS = [f.name for f in fields(Result)]


class GradingSetupError(RuntimeError):
    """The run cannot start (unknown assignment, broken reference notebook); nothing was graded."""


def grade_class(assignment: str, submissions: Path, out: Path, *, solutions: Path = SOLUTIONS,
                show_progress: bool = True, echo=print) -> list[Result]:
    """Grade every submission of ``assignment`` and write ``out/grades.csv`` and ``out/feedback/``.

    One student's failure (bad JSON, no notebook, a crash) becomes an ``error`` row
    with a message; the others are graded normally.
    """
    out = Path(out).resolve()
    course = out / "course"
    _prepare_course(assignment, course, solutions)
    api = NbGraderAPI(config=nbgrader_config(course))
    max_score = _max_score(course, assignment)

    unpacked = out / ".unpacked"
    shutil.rmtree(unpacked, ignore_errors=True)
    entries = discover(Path(submissions), assignment, unpacked)
    results = []
    bar = tqdm(entries, desc=f"grading {assignment}", unit="nb", disable=not show_progress, leave=True)
    for sub in bar:
        bar.set_postfix_str(sub.student_id)
        result = _grade_one(api, course, assignment, sub, max_score, out / "feedback")
        results.append(result)
        if result.status == "error":
            tqdm.write(f"error: {result.student_id}: {result.message}") if show_progress else echo(
                f"error: {result.student_id}: {result.message}")
    shutil.rmtree(unpacked, ignore_errors=True)
    write_csv(results, out / "grades.csv")
    return results


def _prepare_course(assignment: str, course: Path, solutions: Path) -> None:
    try:
        reference = solution_notebook(assignment, solutions)
    except FileNotFoundError as exc:
        raise GradingSetupError(str(exc)) from None
    source = course / "source" / assignment
    course.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(reference.parent, source, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    api = NbGraderAPI(config=nbgrader_config(course))
    result = api.generate_assignment(assignment, force=True, create=True)
    if not result["success"]:
        raise GradingSetupError(f"nbgrader could not prepare {assignment!r} from {reference}:\n"
                                f"{result.get('error') or result.get('log')}")


def _max_score(course: Path, assignment: str) -> float:
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        return float(gb.find_assignment(assignment).max_score)


def _grade_one(api, course: Path, assignment: str, sub: Submission, max_score: float, feedback_root: Path) -> Result:
    def error(message: str) -> Result:
        return Result(sub.student_id, assignment, 0.0, max_score, "error", message)

    if sub.problem:
        return error(sub.problem)
    problem = _notebook_problem(sub.notebook)
    if problem:
        return error(problem)

    submitted = course / "submitted" / sub.student_id / assignment
    shutil.rmtree(submitted, ignore_errors=True)
    submitted.mkdir(parents=True)
    shutil.copyfile(sub.notebook, submitted / f"{assignment}.ipynb")

    graded = api.autograde(assignment, sub.student_id, force=True, create=True)
    if not graded["success"]:
        return error("the notebook could not be graded: " + _last_line(graded.get("error") or graded.get("log")))
    score = _score(course, assignment, sub.student_id)

    feedback = api.generate_feedback(assignment, sub.student_id, force=True)
    target = feedback_root / sub.student_id
    shutil.rmtree(target, ignore_errors=True)
    if feedback["success"]:
        shutil.copytree(course / "feedback" / sub.student_id / assignment, target)
    message = sub.note or ""
    if not feedback["success"]:
        message = "; ".join(filter(None, [message, "feedback could not be generated"]))
    return Result(sub.student_id, assignment, score, max_score, "graded", message)


def _notebook_problem(path: Path) -> str | None:
    """Why ``path`` is not a gradable notebook, or None."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return f"{path.name} is not UTF-8 text; save it again from Jupyter"
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return f"{path.name} is not valid notebook JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); " \
               "open it in Jupyter, save it again and resubmit"
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


def _last_line(text: str | None) -> str:
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown error"


def write_csv(results: list[Result], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in results:
            row = asdict(r)
            row["score"], row["max_score"] = f"{r.score:g}", f"{r.max_score:g}"
            writer.writerow(row)
    tmp.replace(path)  # never leave a half-written grades.csv
