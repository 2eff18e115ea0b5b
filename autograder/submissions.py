"""Find each student's notebook in a submissions folder.

Layout: ``SUBMISSIONS/<student_id>/`` holding the notebook, or
``SUBMISSIONS/<student_id>.zip`` holding such a folder (or the notebook at its top).
Archives are unpacked defensively: no absolute paths, no ``..``, no links, bounded
size and member count. Every problem becomes a message, never an exception that
stops the run.
"""

from __future__ import annotations

import re
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

STUDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_UNPACKED_BYTES = 50 * 2**20
MAX_MEMBERS = 200


@dataclass
class Submission:
    """One student's entry: the notebook to grade, or why there is none."""

    student_id: str
    notebook: Path | None = None
    problem: str | None = None  # set when the submission cannot be graded
    note: str | None = None  # set when it can, but something deserves a remark


def discover(submissions: Path, assignment: str, scratch: Path) -> list[Submission]:
    """One Submission per entry of ``submissions``, sorted by student id.

    Zips are unpacked under ``scratch``. Duplicate ids (``ann/`` and ``ann.zip``)
    are both reported as problems rather than one silently winning.
    """
    submissions = Path(submissions)
    if not submissions.is_dir():
        raise FileNotFoundError(f"submissions folder {submissions} does not exist or is not a folder")
    found: dict[str, list[Submission]] = {}
    for entry in sorted(submissions.iterdir()):
        if entry.name.startswith("."):
            continue
        sub = _from_entry(entry, assignment, scratch)
        if sub is not None:
            found.setdefault(sub.student_id, []).append(sub)
    result = []
    for student_id, subs in sorted(found.items()):
        if len(subs) > 1:
            result.append(Submission(student_id, problem=f"{len(subs)} submissions for this student "
                                     "(a folder and a zip?); keep exactly one and grade again"))
        else:
            result.append(subs[0])
    return result


def _from_entry(entry: Path, assignment: str, scratch: Path) -> Submission | None:
    if entry.is_symlink():
        return Submission(_safe_id(entry.name), problem="the submission is a symbolic link; it was not followed")
    if entry.is_dir():
        sid = entry.name
        if not STUDENT_ID.match(sid):
            return Submission(_safe_id(sid), problem=f"invalid student id {sid!r}: use letters, digits, '.', '_' or '-'")
        return _find_notebook(Submission(sid), entry, assignment)
    if entry.suffix.lower() == ".zip":
        sid = entry.stem
        if not STUDENT_ID.match(sid):
            return Submission(_safe_id(sid), problem=f"invalid student id {sid!r}: use letters, digits, '.', '_' or '-'")
        target = scratch / sid
        problem = _safe_unzip(entry, target)
        if problem:
            return Submission(sid, problem=problem)
        return _find_notebook(Submission(sid), target, assignment)
    return None  # stray files (a README, a CSV) are not submissions


def _safe_id(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64].lstrip("._-")
    return cleaned or "unnamed"


def _safe_unzip(archive: Path, target: Path) -> str | None:
    """Unpack ``archive`` into ``target``; return a problem message instead of raising."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            if len(members) > MAX_MEMBERS:
                return f"the zip has {len(members)} entries (limit {MAX_MEMBERS})"
            if sum(m.file_size for m in members) > MAX_UNPACKED_BYTES:
                return f"the zip unpacks to more than {MAX_UNPACKED_BYTES // 2**20} MiB; submit the notebook alone"
            target.mkdir(parents=True, exist_ok=True)
            for m in members:
                name = PurePosixPath(m.filename.replace("\\", "/"))
                if name.is_absolute() or ".." in name.parts:
                    return f"the zip contains an unsafe path {m.filename!r}; it was not unpacked"
                if stat.S_ISLNK(m.external_attr >> 16):
                    return f"the zip contains a symbolic link {m.filename!r}; it was not unpacked"
                if m.is_dir():
                    continue
                dest = target.joinpath(*name.parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as src, open(dest, "wb") as out:
                    written = 0
                    while chunk := src.read(1 << 16):
                        written += len(chunk)
                        if written > MAX_UNPACKED_BYTES:  # sizes in the header can lie
                            return "the zip unpacks to more than its declared size; it was not unpacked"
                        out.write(chunk)
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError) as exc:
        return f"the zip could not be read ({exc}); send a valid .zip or the notebook alone"
    return None


def _find_notebook(sub: Submission, folder: Path, assignment: str) -> Submission:
    wanted = f"{assignment}.ipynb"
    notebooks = [p for p in folder.rglob("*.ipynb")
                 if ".ipynb_checkpoints" not in p.parts and not p.is_symlink() and p.is_file()]
    exact = [p for p in notebooks if p.name == wanted]
    if len(exact) == 1:
        sub.notebook = exact[0]
    elif len(exact) > 1:
        sub.problem = f"{len(exact)} copies of {wanted} in the submission; keep exactly one"
    elif len(notebooks) == 1:
        sub.notebook = notebooks[0]
        sub.note = f"graded {notebooks[0].name} (expected the name {wanted})"
    elif not notebooks:
        sub.problem = f"no notebook in the submission: expected {wanted}"
    else:
        names = ", ".join(sorted(p.name for p in notebooks))
        sub.problem = f"no {wanted} in the submission, and several other notebooks ({names}); rename the one to grade"
    return sub
