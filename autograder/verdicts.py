"""The verdict model: what the grader decided about each test cell of one submission.

Plain data only (no torch), so that the main grading process, the nbgrader preprocessor and
the report can read cached verdicts without importing the verification machinery.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class CellVerdict:
    grade_id: str
    points: float
    passed: bool
    message: str = ""  # shown to the learner
    output: str = ""  # what the visible tests printed
    banned: bool = False
    # The book section to reread for a failure: the failing diagnosis's own (CheckFailed.reread),
    # else the function's (REREAD in qkv/checks/<chapter>.py); "" when passed or unknown.
    reread_chapter: str = ""
    reread_heading: str = ""


def learner_cell_id(index: int) -> str:
    """The id of a code cell the learner wrote that is not an answer (an added scratch cell, a copy
    of an answer cell): its place in the submission, counted from 1. The feedback finds the cell's
    note by the same id."""
    return f"cell-{index + 1}"


@dataclass
class Verdicts:
    tests: dict[str, CellVerdict] = field(default_factory=dict)
    # answer cell (grade_id) or learner's cell (learner_cell_id) -> what went wrong loading it, or a note
    cell_errors: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    key: str = ""
    seconds: float = 0.0  # how long verification took (not stored: benchmarks/grading.py reads it)

    def to_json(self) -> str:
        return json.dumps({"tests": {k: asdict(v) for k, v in self.tests.items()}, "cell_errors": self.cell_errors,
                           "notes": self.notes, "key": self.key}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Verdicts:
        data = json.loads(text)
        return cls({k: CellVerdict(**v) for k, v in data["tests"].items()}, data["cell_errors"], data["notes"],
                   data.get("key", ""))

    @property
    def banned(self) -> bool:
        return any(v.banned for v in self.tests.values())


VERIFIER_VERSION = "4"  # bump to invalidate cached verdicts when their format or meaning changes

_ROOT = Path(__file__).resolve().parent.parent
# Everything besides the two notebooks and the limits that decides a verdict: the checks (oracles,
# diagnoses, the BANNED tables), the notebook contract and cell runner, and the grader's own
# verification code (sandbox, protocol, run-time and static banned-call layers). A change to any
# of them re-verifies every submission on the next run.
VERDICT_CODE: tuple[Path, ...] = (
    *sorted((_ROOT / "qkv" / "checks").glob("*.py")),
    _ROOT / "qkv" / "notebook_contract.py",
    _ROOT / "qkv" / "corpora.py",  # the tokenization checks' training text
    _ROOT / "qkv" / "gpt_torch.py",  # the capstone checks' torch.nn oracle
    _ROOT / "qkv" / "chapters.py", _ROOT / "qkv" / "book_links.py", _ROOT / "qkv" / "i18n.py",  # sections named
    *(_ROOT / "autograder" / name for name in (
        "banned.py", "static_scan.py", "hidden.py", "verify.py", "learner_process.py", "sandbox.py",
        "sandbox_worker.py", "seccomp_filter.py", "wire.py", "verdicts.py")),
)


def _torch_version() -> str:
    """The installed torch's version, read from its metadata (this module does not import torch)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return "none"


def code_digest(files: tuple[Path, ...] | None = None) -> str:
    """A digest of the code a verdict depends on (``VERDICT_CODE``), of the torch version and of
    the Python that runs the checks."""
    h = hashlib.sha256(f"{_torch_version()} {platform.python_version()}".encode())
    for path in (VERDICT_CODE if files is None else files):
        h.update(str(path.relative_to(_ROOT) if path.is_relative_to(_ROOT) else path).encode())
        h.update(path.read_bytes() if path.is_file() else b"<missing>")
    return h.hexdigest()


def cache_key(source_nb: Path, submission_nb: Path, limits=None) -> str:
    """What a cached verdict is valid for: the reference, the submission, the limits it was
    computed under (``Limits``, compared by value), the code of the checks and of the grader
    (``code_digest``) and the torch version. Any change re-verifies."""
    h = hashlib.sha256(VERIFIER_VERSION.encode())
    h.update(code_digest().encode())
    h.update(repr(limits).encode())
    for p in (source_nb, submission_nb):
        h.update(hashlib.sha256(Path(p).read_bytes()).digest())
    return h.hexdigest()
