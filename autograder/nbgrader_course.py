"""Grade an nbgrader course directory in place: the layout a JupyterHub class produces.

On a hub, learners submit through nbgrader's exchange and the instructor runs
``nbgrader collect``, which leaves ``COURSE/submitted/<student>/<assignment>/`` holding the
notebook and nbgrader's ``timestamp.txt``. Grading *in place* means the grader uses that
course directory as its own: the gradebook is ``COURSE/gradebook.db`` (the one formgrader
opens), feedback goes to ``COURSE/feedback/`` (where ``nbgrader release_feedback`` looks),
and the submitted files are never rewritten (``fetch_feedback`` finds a learner's feedback
by a hash of the exact file they submitted).

Resubmissions need nothing here: ``nbgrader collect --update`` keeps the latest submission
of each learner by nbgrader's timestamps, and the verdict cache is keyed by the notebook's
content, so a regrade re-verifies exactly the students whose notebook changed. Lateness comes
from nbgrader's own gradebook after autograde: the submission's timestamp against the
assignment's due date (set in formgrader or with ``nbgrader db assignment add --duedate``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from datetime import timedelta
from pathlib import Path

from nbgrader.api import Gradebook, MissingEntry

from autograder.submissions import STUDENT_ID, Submission, _find_notebook

TIMESTAMP = "timestamp.txt"


class CourseLayoutError(RuntimeError):
    """The folder given as an nbgrader course cannot be graded in place; nothing was changed."""


def check_course(course: Path, assignment: str, reference: Path) -> None:
    """Refuse a course that is not an nbgrader course, or whose own source of ``assignment``
    is not qkv's reference (grading it against ours would silently replace the instructor's)."""
    if not course.is_dir():
        raise CourseLayoutError(f"course folder {course} does not exist")
    if not (course / "submitted").is_dir():
        raise CourseLayoutError(f"{course} has no submitted/ folder: run `nbgrader collect {assignment}` "
                                "in the course folder first")
    source = course / "source" / assignment / reference.name
    if source.is_file() and _digest(source) != _digest(reference):
        stamp = course / f".{assignment}.source-sha256"
        if not (stamp.exists() and stamp.read_text() == _digest(source)):
            raise CourseLayoutError(
                f"{source} differs from qkv's reference {reference}. The grader grades against the reference; "
                f"copy it over the course's source (or release from it) and grade again")


def discover_submitted(course: Path, assignment: str) -> list[Submission]:
    """One Submission per ``COURSE/submitted/<student>/<assignment>/``, sorted by student id.

    Students who submitted other assignments only are left out; a folder with no notebook, or
    a student id nbgrader would not accept, is a problem row like any other bad submission.
    """
    root = course / "submitted"
    found = []
    for student in sorted(root.iterdir()):
        folder = student / assignment
        if student.name.startswith(".") or not student.is_dir() or student.is_symlink():
            continue
        if not folder.is_dir():
            continue
        if not STUDENT_ID.match(student.name):
            found.append(Submission(student.name, problem=f"invalid student id {student.name!r}"))
            continue
        if folder.is_symlink():
            found.append(Submission(student.name, problem="the submission folder is a symbolic link; not followed"))
            continue
        found.append(_find_notebook(Submission(student.name), folder, assignment))
    return found


def place_in_course(sub: Submission, course: Path, assignment: str) -> Path:
    """Path of the notebook nbgrader will grade. In place: the submitted file itself, untouched.

    A notebook submitted under another name is copied next to it under the assignment's name
    (nbgrader grades notebooks by name); the learner's file stays as it was.
    """
    target = course / "submitted" / sub.student_id / assignment / f"{assignment}.ipynb"
    if sub.notebook.resolve() != target.resolve():
        shutil.copyfile(sub.notebook, target)
        sub.note = (f"{sub.note}; " if sub.note else "") + (
            f"copied to {assignment}.ipynb for grading; feedback through the exchange is matched to the file "
            f"the learner submitted, so ask them to fetch it from the formgrader or resubmit as {assignment}.ipynb")
    return target


def late_note(db: Path, assignment: str, student_id: str) -> str | None:
    """``late: submitted 2 h 5 min after the due date (…)`` from nbgrader's gradebook, or None
    when the submission is on time, has no timestamp, or the assignment has no due date."""
    with Gradebook(f"sqlite:///{db}") as gb:
        try:
            return lateness(gb.find_submission(assignment, student_id))
        except MissingEntry:
            return None


def lateness(submission) -> str | None:
    """:func:`late_note` for a submission already read from an open gradebook
    (an ``nbgrader.api.SubmittedAssignment``)."""
    seconds = submission.total_seconds_late or 0
    if seconds <= 0 or submission.timestamp is None or submission.duedate is None:
        return None
    return (f"late: submitted {_duration(seconds)} after the due date "
            f"({submission.timestamp:%Y-%m-%d %H:%M:%S} UTC, due {submission.duedate:%Y-%m-%d %H:%M:%S} UTC)")


def give_back_to_owner(course: Path) -> list[Path]:
    """Run as root on a course owned by someone else (the instructor's account on a hub), hand
    every root-owned path under it back to the course's owner, so that their formgrader can
    write the gradebook and ``nbgrader release_feedback`` can read the feedback. Returns the
    paths changed; does nothing when not root or when root owns the course."""
    owner = course.stat()
    if os.geteuid() != 0 or owner.st_uid == 0:
        return []
    changed = []
    for path in [course, *course.rglob("*")]:
        st = path.lstat()
        if st.st_uid == 0:
            os.lchown(path, owner.st_uid, owner.st_gid)
            changed.append(path)
    return changed


def _duration(seconds: float) -> str:
    left = timedelta(seconds=round(seconds))
    days, rest = left.days, left.seconds
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days} d"] if days else []
    if hours:
        parts.append(f"{hours} h")
    if minutes and not days:
        parts.append(f"{minutes} min")
    if not days and not hours and (secs or not minutes):
        parts.append(f"{secs} s")
    return " ".join(parts)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
