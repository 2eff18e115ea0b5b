"""Canvas and Moodle: their "download all submissions" zips in, their grade-import CSVs out.

An LMS download is one zip for the whole class, each file named after its student by the
LMS's own rules. ``read_download`` unpacks it (defensively, as ``submissions`` does for a
student's zip) into one folder per student id, says for every file it could not map, and
keeps what the names tell: the student's name, Canvas's LATE marker, Canvas's renaming of a
re-uploaded file (``attention-1.ipynb``). The folders then go through the ordinary
``submissions.discover``, so a student with no notebook gets the usual clear error row.
``write_import_csv`` writes the file the LMS imports, with the identifiers from the download.

Naming rules, read from each LMS's source rather than remembered:

* **Canvas** (instructure/canvas-lms, ``lib/content_zipper.rb``: ``get_filename``,
  ``add_upload_submission``, ``sanitize_user_name``): a flat zip of
  ``<sortable name, lower-cased, non-word characters removed>[_LATE]_<user id>_<attachment id>_<file name>``,
  e.g. ``lovelaceada_LATE_48213_9912_attention.ipynb`` (older Canvas wrote ``late``);
  text and URL entries are ``<name>[_LATE]_<user id>_text.html`` / ``_link.html``; with
  anonymous grading the name and user id are replaced by ``anon_<anonymous id>``. Only the
  latest attempt's files are in the zip; a file uploaded again under the same name is renamed
  by Canvas with a ``-1``, ``-2`` suffix. The gradebook import is the gradebook export's shape
  (canvas-lms ``Course#gradebook_to_csv``): ``Student, ID, SIS User ID, SIS Login ID, Section,
  <assignment title> (<assignment id>)``, then a ``Points Possible`` row; rows are matched by
  ``ID`` (the Canvas user id). It takes no comments.
* **Moodle** (moodle/moodle, ``mod/assign/classes/downloader.php``, Moodle 4.x; ``locallib.php``
  before): the prefix is ``<full name with "_" replaced by " ">_<participant id>``; with
  "Download submissions in folders" (the default since 3.1) each student's files are under
  ``<prefix>_assignsubmission_file/`` (3.x wrote ``..._file_/``), otherwise flat as
  ``<prefix>_assignsubmission_file_<file name>``; online text is ``..._onlinetext/onlinetext.html``.
  The offline grading worksheet (``mod/assign/gradingtable.php``, imported by
  ``mod/assign/feedback/offline/importgradeslib.php``) is matched on ``Identifier``
  (``Participant <participant id>``) and needs ``Grade`` and ``Last modified (grade)``; the
  comments plugin's column is ``Feedback comments``. The download carries no lateness: give
  Moodle's own worksheet (``--lms-worksheet``) to take names, e-mails and lateness from it.
"""

from __future__ import annotations

import csv
import re
import stat
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath

from autograder.learner_text import csv_cell
from autograder.report import Result
from autograder.submissions import MAX_UNPACKED_BYTES, Submission, _find_notebook, _safe_unzip

LMS_KINDS = ("canvas", "moodle")
MAX_CLASS_MEMBERS = 20_000
MAX_CLASS_BYTES = 4 * 2**30

_CANVAS_FILE = re.compile(r"^(?P<name>.*?)_(?:(?P<late>LATE)_)?(?P<uid>\d+)_(?P<fid>\d+)_(?P<file>.+)$", re.I)
_CANVAS_ENTRY = re.compile(r"^(?P<name>.*?)_(?:(?P<late>LATE)_)?(?P<uid>\d+)_(?P<file>text\.html|link\.html)$", re.I)
_CANVAS_ANON = re.compile(r"^(?:LATE_)?anon_", re.I)
_CANVAS_RENAMED = re.compile(r"^(?P<stem>.+)-(?P<n>\d+)(?P<ext>\.ipynb)$")
_MOODLE_FOLDER = re.compile(r"^(?P<name>[^/_]*)_(?P<pid>\d+)_assignsubmission_(?P<plugin>[a-z]+)_?/(?P<file>.+)$")
_MOODLE_FLAT = re.compile(r"^(?P<name>[^/_]*)_(?P<pid>\d+)_assignsubmission_(?P<plugin>[a-z]+)_(?P<file>[^/]+)$")


class DownloadError(ValueError):
    """The LMS zip as a whole cannot be read; nothing was graded."""


@dataclass
class LmsStudent:
    """One student as the download names them."""

    student_id: str  # the gradebook's id: Canvas user id, or Moodle participant id
    name: str  # as the LMS spelled it in the file names (Canvas: "lovelaceada"; Moodle: "Ada Lovelace")
    files: list[str] = field(default_factory=list)  # file names as the student uploaded them
    late: bool = False
    notes: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)  # file names that came twice (a hand-made zip)
    email: str = ""  # from a Moodle worksheet, when given
    status: str = ""  # idem


@dataclass
class Download:
    """What a download holds: the students it names, and the files it could not map."""

    lms: str
    folder: Path  # one sub-folder per student id, holding that student's files
    students: dict[str, LmsStudent]
    unmapped: list[str]  # one message per file that maps to no student

    def submissions(self, assignment: str) -> list[Submission]:
        """One Submission per student, sorted by id, with the download's notes attached."""
        result = []
        for sid, student in sorted(self.students.items()):
            folder = self.folder / sid
            sub = Submission(sid)
            if student.duplicates:
                sub.problem = (f"the download holds {', '.join(sorted(set(student.duplicates)))} more than once for "
                               "this student; keep one copy of each file and grade again")
            for archive in sorted(folder.glob("*.zip")):  # a notebook uploaded inside a zip
                problem = _safe_unzip(archive, folder / f"{archive.stem}.unzipped")
                if problem:
                    sub.problem = f"{archive.name}: {problem}"
            if not sub.problem:
                _find_notebook(sub, folder, assignment)
            if sub.problem and "no notebook" in sub.problem and student.files:
                sub.problem += f" (received: {', '.join(student.files)})"
            notes = list(student.notes)
            if student.late:
                notes.insert(0, f"late: {self.lms.capitalize()} marked the submission late")
            if sub.note:
                notes.append(sub.note)
            sub.note = "; ".join(notes) or None
            result.append(sub)
        return result


def read_download(lms: str, archive: Path, assignment: str, scratch: Path,
                  worksheet: Path | None = None) -> Download:
    """Unpack an LMS's "download all submissions" zip into ``scratch/<student id>/``.

    Raises DownloadError when the zip itself is unreadable or too large; a single odd file is
    an ``unmapped`` message, never an exception.
    """
    if lms not in LMS_KINDS:
        raise DownloadError(f"unknown LMS {lms!r}: use one of {', '.join(LMS_KINDS)}")
    archive = Path(archive)
    if not archive.is_file():
        raise DownloadError(f"{archive} is not a file: give the zip the LMS's \"download all submissions\" produced")
    folder = scratch / "by-student"
    students: dict[str, LmsStudent] = {}
    unmapped: list[str] = []
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            if len(members) > MAX_CLASS_MEMBERS:
                raise DownloadError(f"{archive.name} has {len(members)} files (limit {MAX_CLASS_MEMBERS})")
            if sum(m.file_size for m in members) > MAX_CLASS_BYTES:
                raise DownloadError(f"{archive.name} unpacks to more than {MAX_CLASS_BYTES // 2**30} GiB")
            for member in members:
                name = _member_name(member)
                mapped = (_map_canvas if lms == "canvas" else _map_moodle)(name)
                if isinstance(mapped, str):
                    unmapped.append(mapped)
                    continue
                sid, student_name, filename, late = mapped
                problem = _unsafe(member, filename)
                if problem:
                    unmapped.append(f"{name}: {problem}; it was not unpacked")
                    continue
                student = students.setdefault(sid, LmsStudent(sid, student_name))
                student.late = student.late or late
                student.files.append(filename)
                dest = folder / sid / PurePosixPath(filename)
                if dest.exists():
                    student.duplicates.append(filename)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                if not _copy_member(zf, member, dest):
                    unmapped.append(f"{name}: unpacks to more than its declared size; it was not unpacked")
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DownloadError(f"{archive.name} could not be read as a zip ({exc}); "
                            "download it again from the LMS") from None
    if lms == "canvas":
        for student in students.values():
            _resolve_canvas_renames(folder / student.student_id, assignment, student)
    if worksheet is not None:
        if lms != "moodle":
            raise DownloadError("--lms-worksheet is Moodle's grading worksheet; Canvas needs none")
        _merge_moodle_worksheet(worksheet, students)
    return Download(lms, folder, students, unmapped)


def write_import_csv(download: Download, results: list[Result], path: Path, *, points: float | None = None,
                     column: str | None = None, assignment: str = "", graded_at: datetime | None = None) -> Path:
    """Write the grade-import CSV of ``download.lms`` for ``results``.

    ``points``: the assignment's points in the LMS (default: the notebook's maximum score);
    scores are scaled to it and rounded to 2 decimals. A student whose submission could not be
    graded gets an empty grade cell, which both LMSs import as "no change": a grader error is
    never uploaded as a zero. ``column`` is Canvas's assignment column, as its gradebook export
    names it (``Attention (4567)``); by default the assignment id, which Canvas imports as a new
    assignment.
    """
    by_id = {r.student_id: r for r in results}
    rows = [(s, by_id.get(s.student_id)) for s in sorted(download.students.values(), key=lambda s: s.student_id)]
    max_score = next((r.max_score for r in results if r.max_score), 0.0)
    points = max_score if points is None else points
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        if download.lms == "canvas":
            writer.writerow(["Student", "ID", "SIS User ID", "SIS Login ID", "Section", column or assignment])
            writer.writerow(["Points Possible", "", "", "", "", _number(points)])
            for student, result in rows:
                writer.writerow([_text(student.name), student.student_id, "", "", "", _grade(result, points)])
        else:
            when = _moodle_date(graded_at or datetime.now())
            writer.writerow(["Identifier", "Full name", "Email address", "Status", "Grade", "Maximum Grade",
                             "Grade can be changed", "Last modified (submission)", "Last modified (grade)",
                             "Feedback comments"])
            for student, result in rows:
                writer.writerow([f"Participant {student.student_id}", _text(student.name), _text(student.email),
                                 _text(student.status or "Submitted for grading"), _grade(result, points),
                                 _number(points), "Yes", "-", when, _text(summary_line(result)) if result else ""])
    tmp.replace(path)
    return path


def summary_line(result: Result) -> str:
    """The feedback's one-line summary: the score, then each question's outcome."""
    if result.status != "graded":
        return f"Not graded: {_flat(result.message)}"
    parts = [f"Score {result.score:g}/{result.max_score:g}"]
    for question, (earned, possible, message) in (result.questions or {}).items():
        if earned == possible:
            parts.append(f"{question}: passed")
        else:
            reread = (result.rereads or {}).get(question)
            parts.append(f"{question}: {earned:g}/{possible:g} ({_flat(message)[:160]}"
                         + (f"; reread {_flat(reread)}" if reread else "") + ")")
    return ". ".join(parts[:1]) + (". " + "; ".join(parts[1:]) if len(parts) > 1 else "") + "."


# --------------------------------------------------------------------------- mapping names

def _map_canvas(name: str):
    if "/" in name:
        return f"{name}: a Canvas download is flat; a file inside a folder maps to no student"
    if _CANVAS_ANON.match(name):
        return (f"{name}: an anonymous-grading download names no Canvas user id, so no grade could be imported; "
                "turn anonymous grading off (or grade in SpeedGrader)")
    match = _CANVAS_ENTRY.match(name) or _CANVAS_FILE.match(name)
    if not match:
        return f"{name}: not named <name>_<user id>_<file id>_<file> as Canvas names submissions"
    return match["uid"], match["name"], match["file"], bool(match["late"])


def _map_moodle(name: str):
    match = _MOODLE_FOLDER.match(name) or _MOODLE_FLAT.match(name)
    if not match:
        return f"{name}: not named <Full Name>_<participant id>_assignsubmission_<plugin> as Moodle names submissions"
    return match["pid"], match["name"], match["file"], False


def _resolve_canvas_renames(folder: Path, assignment: str, student: LmsStudent) -> None:
    """Canvas renames a re-uploaded ``attention.ipynb`` to ``attention-1.ipynb``; grade the newest
    upload under the assignment's name, and say so."""
    wanted = f"{assignment}.ipynb"
    versions = {}
    for path in folder.glob("*.ipynb"):
        match = _CANVAS_RENAMED.match(path.name)
        if path.name == wanted:
            versions[0] = path
        elif match and f"{match['stem']}{match['ext']}" == wanted:
            versions[int(match["n"])] = path
    if not versions or max(versions) == 0:
        return
    newest = versions[max(versions)]
    for path in versions.values():
        if path != newest:
            path.unlink()
    newest.rename(folder / wanted)
    older = sorted(p.name for n, p in versions.items() if p != newest)
    student.notes.append(f"resubmission: graded {newest.name} (Canvas's name for a re-uploaded {wanted})"
                         + (f"; ignored the older {', '.join(older)}" if older else ""))


def _merge_moodle_worksheet(path: Path, students: dict[str, LmsStudent]) -> None:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DownloadError(f"the Moodle worksheet {path} could not be read ({exc}); download it again") from None
    if rows and "Identifier" not in rows[0]:
        raise DownloadError(f"{path} has no Identifier column: give Moodle's \"Download grading worksheet\" file")
    for row in rows:
        pid = (row.get("Identifier") or "").removeprefix("Participant ").strip()
        student = students.get(pid)
        if student is None:
            continue
        student.name = row.get("Full name") or student.name
        student.email = row.get("Email address") or ""
        student.status = row.get("Status") or ""
        if re.search(r"\blate\b", student.status, re.I):
            student.late = True


# --------------------------------------------------------------------------- zip members

def _member_name(member: zipfile.ZipInfo) -> str:
    """The member's name as the LMS meant it: zips without the UTF-8 flag are decoded as cp437
    by Python, which turns "Zoë" into "ZoÃ«"; both LMSs write UTF-8 names."""
    name = member.filename
    if not member.flag_bits & 0x800:
        try:
            name = name.encode("cp437").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
    return name.replace("\\", "/")


def _unsafe(member: zipfile.ZipInfo, filename: str) -> str | None:
    path = PurePosixPath(filename)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        return f"unsafe path {filename!r}"
    if stat.S_ISLNK(member.external_attr >> 16):
        return "a symbolic link"
    if member.file_size > MAX_UNPACKED_BYTES:
        return f"larger than {MAX_UNPACKED_BYTES // 2**20} MiB"
    return None


def _copy_member(zf: zipfile.ZipFile, member: zipfile.ZipInfo, dest: Path) -> bool:
    written = 0
    with zf.open(member) as src, open(dest, "wb") as out:
        while chunk := src.read(1 << 16):
            written += len(chunk)
            if written > MAX_UNPACKED_BYTES:  # sizes in the header can lie
                out.close()
                dest.unlink()
                return False
            out.write(chunk)
    return True


# --------------------------------------------------------------------------- formatting

def _grade(result: Result | None, points: float) -> str:
    if result is None or result.status != "graded" or not result.max_score:
        return ""
    return _number(round(result.score / result.max_score * points, 2))


def _number(x: float) -> str:
    return f"{x:g}"


def _moodle_date(when: datetime) -> str:
    # Moodle's own export writes userdate() with strftimedatetime, "%A, %d %B %Y, %I:%M %p",
    # and its importer reads the column back with PHP's strtotime.
    return when.strftime("%A, %d %B %Y, %I:%M %p")


def _text(text: str) -> str:
    """A text cell: one clean line, never read as a formula by a spreadsheet the instructor
    opens the CSV in (a name the learner chose can start with "=")."""
    return csv_cell(text, 1000)


def _flat(text: str) -> str:
    return " ".join((text or "").split())
