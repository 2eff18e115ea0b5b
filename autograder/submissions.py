"""Find, unpack and vet each student's notebook in a submissions folder.

Layout: ``SUBMISSIONS/<student_id>/`` holding the notebook, or
``SUBMISSIONS/<student_id>.zip`` holding such a folder (or the notebook at its top).
Archives are unpacked defensively: no absolute paths, no ``..``, no links, bounded
size, member count and nesting. A notebook is checked cheaply (size, nesting, number
sizes, cell count, encodable text) before nbformat or nbgrader ever parse it.

Every problem with one entry becomes that student's ``problem`` message, whatever
raised it: a hostile or broken upload never stops the run.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import nbformat

STUDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_UPLOAD_BYTES = 50 * 2**20  # one cap for a zip's unpacked size and for a notebook handed in as a file
MAX_UNPACKED_BYTES = MAX_UPLOAD_BYTES
MAX_MEMBERS = 200
MAX_PATH_PARTS = 32  # folders inside an upload; deeper trees are refused before they are created or walked
# The cheap checks run before json/nbformat/nbgrader see the notebook. A notebook Jupyter
# writes is far inside every one of them.
MAX_JSON_CONTAINERS = 1_000_000  # objects and arrays, counted as brackets before parsing
MAX_JSON_DEPTH = 100
MAX_NUMBER_CHARS = 100  # Python refuses int strings over 4300 digits; we stop far earlier
MAX_CELLS = 5000


@dataclass
class Submission:
    """One student's entry: the notebook to grade, or why there is none."""

    student_id: str
    notebook: Path | None = None
    problem: str | None = None  # set when the submission cannot be graded
    note: str | None = None  # set when it can, but something deserves a remark


def discover(submissions: Path, assignment: str, scratch: Path) -> list[Submission]:
    """One vetted Submission per entry of ``submissions``, sorted by student id.

    Zips are unpacked under ``scratch``. Duplicate ids (``ann/`` and ``ann.zip``) are both
    reported as problems rather than one silently winning. Raises FileNotFoundError only when
    ``submissions`` itself is not a folder; anything wrong with one entry is that entry's problem.
    """
    submissions = Path(submissions)
    if not submissions.is_dir():
        raise FileNotFoundError(f"submissions folder {submissions} does not exist or is not a folder")
    found: dict[str, list[Submission]] = {}
    for entry in sorted(submissions.iterdir()):
        if entry.name.startswith("."):
            continue
        try:
            sub = _from_entry(entry, assignment, scratch)
            if sub is not None and sub.problem is None and sub.notebook is not None:
                sub.problem = notebook_problem(sub.notebook)
        except Exception as exc:  # a hostile entry may raise anything; it is one error row
            sub = Submission(_safe_id(entry.stem if entry.suffix.lower() == ".zip" else entry.name),
                             problem=f"the grader could not read this submission ({type(exc).__name__}: {exc}); "
                                     "send the notebook again as a plain .ipynb or .zip")
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
            return Submission(_safe_id(sid), problem=_invalid_id(sid))
        return _find_notebook(Submission(sid), entry, assignment)
    if entry.suffix.lower() == ".zip":
        sid = entry.stem
        if not STUDENT_ID.match(sid):
            return Submission(_safe_id(sid), problem=_invalid_id(sid))
        target = scratch / sid
        problem = _safe_unzip(entry, target)
        if problem:
            remove_tree(target)
            return Submission(sid, problem=problem)
        return _find_notebook(Submission(sid), target, assignment)
    return None  # stray files (a README, a CSV) are not submissions


def _invalid_id(sid: str) -> str:
    return f"invalid student id {sid!r}: use letters, digits, '.', '_' or '-'"


def _safe_id(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64].lstrip("._-")
    return cleaned or "unnamed"


def remove_tree(path: Path) -> None:
    """Delete ``path`` if it exists; never raises (leftovers are removed on the next run)."""
    try:
        shutil.rmtree(path, ignore_errors=True)
    except Exception:  # noqa: BLE001 (rmtree recurses: a tree deeper than the recursion limit raises)
        pass


# --------------------------------------------------------------------------- archives

def _safe_unzip(archive: Path, target: Path) -> str | None:
    """Unpack ``archive`` into ``target``; return a problem message instead of raising."""
    try:
        if archive.stat().st_size > MAX_UPLOAD_BYTES:
            return f"the zip is larger than {MAX_UPLOAD_BYTES // 2**20} MiB; submit the notebook alone"
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            if len(members) > MAX_MEMBERS:
                return f"the zip has {len(members)} entries (limit {MAX_MEMBERS})"
            if sum(m.file_size for m in members) > MAX_UNPACKED_BYTES:
                return f"the zip unpacks to more than {MAX_UNPACKED_BYTES // 2**20} MiB; submit the notebook alone"
            for m in members:  # every name is vetted before anything is written
                name = PurePosixPath(m.filename.replace("\\", "/"))
                if name.is_absolute() or ".." in name.parts:
                    return f"the zip contains an unsafe path {m.filename!r}; it was not unpacked"
                if stat.S_ISLNK(m.external_attr >> 16):
                    return f"the zip contains a symbolic link {m.filename!r}; it was not unpacked"
                if len(name.parts) > MAX_PATH_PARTS:
                    return (f"the zip contains a path nested more than {MAX_PATH_PARTS} folders deep; "
                            "it was not unpacked")
            target.mkdir(parents=True, exist_ok=True)
            written = 0
            for m in members:
                if m.is_dir():
                    continue
                dest = target.joinpath(*PurePosixPath(m.filename.replace("\\", "/")).parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as src, open(dest, "wb") as out:
                    while chunk := src.read(1 << 16):
                        written += len(chunk)
                        if written > MAX_UNPACKED_BYTES:  # sizes in the header can lie
                            return "the zip unpacks to more than its declared size; it was not unpacked"
                        out.write(chunk)
    except NotImplementedError as exc:  # (a RuntimeError: it must come first)
        if "encrypt" in str(exc):  # "strong encryption (flag bit 6)"
            return "the zip is password-protected; zip the notebook again without a password"
        return (f"the zip uses a compression method the grader cannot read ({exc}); "
                "zip the notebook again with the standard (deflate) method, or send the notebook alone")
    except RuntimeError as exc:
        if "encrypted" in str(exc) or "password" in str(exc):
            return "the zip is password-protected; zip the notebook again without a password"
        return _unreadable_zip(exc)
    except UnicodeDecodeError as exc:
        return (f"the zip has a file name that is not valid UTF-8 ({exc.reason}); "
                "zip the notebook again, or send the notebook alone")
    except Exception as exc:  # BadZipFile, zlib.error, EOFError, lzma/bz2 errors, OSError...
        return _unreadable_zip(exc)
    return None


def _unreadable_zip(exc: BaseException) -> str:
    kind = "damaged" if isinstance(exc, (zipfile.BadZipFile, zlib.error, EOFError)) else "unreadable"
    name = type(exc).__name__ if type(exc).__module__ == "builtins" else f"{type(exc).__module__}.{type(exc).__name__}"
    return f"the zip is {kind} and could not be unpacked ({name}: {exc}); send a valid .zip or the notebook alone"


# --------------------------------------------------------------------------- finding the notebook

def _notebooks_in(folder: Path) -> list[Path]:
    """Every regular ``*.ipynb`` under ``folder``, checkpoints and symbolic links excluded.

    An explicit stack rather than ``rglob``: it neither follows links nor recurses in Python,
    so a deep or looping tree costs a bounded walk, never a RecursionError."""
    found, stack = [], [(folder, 0)]
    while stack:
        here, depth = stack.pop()
        for entry in sorted(here.iterdir()):
            if entry.is_symlink():
                continue
            if entry.is_dir():
                if entry.name != ".ipynb_checkpoints" and depth < MAX_PATH_PARTS:
                    stack.append((entry, depth + 1))
            elif entry.suffix == ".ipynb" and entry.is_file():
                found.append(entry)
    return found


def _find_notebook(sub: Submission, folder: Path, assignment: str) -> Submission:
    wanted = f"{assignment}.ipynb"
    notebooks = _notebooks_in(folder)
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


# --------------------------------------------------------------------------- vetting the notebook

class _Refused(ValueError):
    """A cheap check refused the notebook; the message says why and what to do."""


def _number(kind: str, convert):
    def parse(text: str):
        if len(text) > MAX_NUMBER_CHARS:
            raise _Refused(f"it holds a number with {len(text)} characters (more than {MAX_NUMBER_CHARS})")
        value = convert(text)
        if kind == "float" and not math.isfinite(value):
            raise _Refused(f"it holds the number {text[:20]}, too large for a notebook")
        return value
    return parse


def _no_constant(name: str):
    raise _Refused(f"it holds {name}, which is not JSON")


def _walk(data) -> None:
    """Depth, cell count and encodable text, without recursion (the depth is what is checked)."""
    cells = data.get("cells") if isinstance(data, dict) else None
    if isinstance(cells, list) and len(cells) > MAX_CELLS:
        raise _Refused(f"it has {len(cells)} cells (limit {MAX_CELLS})")
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise _Refused(f"its JSON is nested more than {MAX_JSON_DEPTH} levels deep")
        if isinstance(value, dict):
            for key, item in value.items():
                _check_text(key)
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str):
            _check_text(value)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_text(text: str) -> None:
    if _SURROGATE.search(text):
        raise _Refused("it holds text that is not valid Unicode (an unpaired surrogate escape such as \\udcff)")


def notebook_problem(path: Path) -> str | None:
    """Why ``path`` is not a gradable notebook, or None. Never raises.

    The size is checked before the file is read; nesting, number sizes and the bracket
    count before or while the JSON is parsed, with hooks, so that nbformat, jsonschema and
    nbgrader only ever see a notebook of ordinary shape."""
    name = path.name
    try:
        size = path.stat().st_size
        if size > MAX_UPLOAD_BYTES:
            return (f"{name} is {size / 2**20:.0f} MiB, over the {MAX_UPLOAD_BYTES // 2**20} MiB limit; "
                    "clear its outputs (Edit > Clear Outputs of All Cells), save and resubmit")
        raw = path.read_bytes()
    except OSError as exc:
        return f"{name} could not be read ({exc.strerror or exc})"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return f"{name} is not UTF-8 text; save it again from Jupyter"
    containers = text.count("[") + text.count("{")  # an upper bound: brackets inside strings count too
    if containers > MAX_JSON_CONTAINERS:
        return (f"{name} is too large to grade ({containers} JSON brackets, limit {MAX_JSON_CONTAINERS}); "
                "clear its outputs (Edit > Clear Outputs of All Cells), save and resubmit")
    try:
        data = json.loads(text, parse_int=_number("int", int), parse_float=_number("float", float),
                          parse_constant=_no_constant)
        _walk(data)
    except json.JSONDecodeError as exc:
        return (f"{name} is not valid notebook JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
                "open it in Jupyter, save it again and resubmit")
    except RecursionError:
        return (f"{name} cannot be graded: its JSON is nested too deeply; "
                "open it in Jupyter, save it again and resubmit")
    except (_Refused, ValueError) as exc:
        return f"{name} cannot be graded: {exc}; open it in Jupyter, save it again and resubmit"
    if not isinstance(data, dict):
        return f"{name} is JSON but not a notebook (its top level is not an object)"
    try:
        nb = nbformat.reads(text, as_version=4)
        nbformat.validate(nb)
    except Exception as exc:  # nbformat raises several unrelated types for malformed notebooks
        return f"{name} is JSON but not a valid notebook ({_last_line(str(exc))})"
    return None


def _last_line(text: str | None) -> str:
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "unknown error"
