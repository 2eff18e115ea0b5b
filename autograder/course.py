"""Where things live: the repository's solutions and exercises, and nbgrader configuration.

nbgrader is configured entirely from here (no nbgrader_config.py lying around), so
every command sees the same settings whatever directory it is started from.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from traitlets.config import Config

# nbgrader's Gradebook runs the `alembic` executable found on PATH to check its
# schema. When this package runs as `.venv/bin/python -m autograder` without the
# venv activated, that executable is not on PATH; put our interpreter's bin first.
_BIN = str(Path(sys.executable).parent)
if _BIN not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = _BIN + os.pathsep + os.environ.get("PATH", "")

REPO_ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = REPO_ROOT / "solutions"
EXERCISES = REPO_ROOT / "exercises"


def assignments(solutions: Path = SOLUTIONS) -> list[str]:
    """Assignment ids: every ``solutions/<a>/<a>.ipynb``, sorted."""
    return sorted(p.parent.name for p in solutions.glob("*/*.ipynb") if p.stem == p.parent.name)


def solution_notebook(assignment: str, solutions: Path = SOLUTIONS) -> Path:
    """Path of the reference notebook; raise FileNotFoundError naming the known assignments."""
    path = solutions / assignment / f"{assignment}.ipynb"
    if not path.is_file():
        known = ", ".join(assignments(solutions)) or "none"
        raise FileNotFoundError(f"no assignment {assignment!r}: {path} does not exist (known: {known})")
    return path


def nbgrader_config(root: Path, *, source: str = "source", release: str = "release",
                    db: Path | None = None, timeout: int = 60) -> Config:
    """nbgrader settings for a course directory at ``root``."""
    c = Config()
    c.CourseDirectory.root = str(root)
    c.CourseDirectory.source_directory = source
    c.CourseDirectory.release_directory = release
    c.CourseDirectory.db_url = f"sqlite:///{db or (root / 'gradebook.db')}"
    c.CourseDirectory.course_id = "qkv"
    c.Exchange.root = str(root / ".exchange")  # never touch the system-wide /srv/nbgrader/exchange
    c.ExecutePreprocessor.timeout = timeout
    c.ExecutePreprocessor.kernel_name = "python3"
    c.Execute.timeout = timeout
    c.Execute.kernel_name = "python3"
    # Released exercises keep no outputs and lock instruction and test cells.
    c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
    return c
