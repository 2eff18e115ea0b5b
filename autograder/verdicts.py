"""The verdict model: what the grader decided about each test cell of one submission.

Plain data only (no torch), so that the main grading process, the nbgrader preprocessor and
the report can read cached verdicts without importing the verification machinery.
"""

from __future__ import annotations

import hashlib
import json
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


@dataclass
class Verdicts:
    tests: dict[str, CellVerdict] = field(default_factory=dict)
    cell_errors: dict[str, str] = field(default_factory=dict)  # answer/learner cell -> what went wrong loading it
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


VERIFIER_VERSION = "2"  # bump to invalidate cached verdicts when grading logic changes


def cache_key(source_nb: Path, submission_nb: Path) -> str:
    h = hashlib.sha256(VERIFIER_VERSION.encode())
    for p in (source_nb, submission_nb):
        h.update(Path(p).read_bytes())
    return h.hexdigest()
