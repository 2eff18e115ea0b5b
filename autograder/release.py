"""Generate ``exercises/`` from ``solutions/`` with nbgrader's generate_assignment.

Exercises are generated, never edited by hand: this is the one command that writes them.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from nbgrader.apps import NbGraderAPI

from autograder.course import EXERCISES, REPO_ROOT, SOLUTIONS, assignments, nbgrader_config, solution_notebook


class ReleaseError(RuntimeError):
    """nbgrader could not generate an assignment; the message carries its log."""


def generate(assignment: str, out_dir: Path, solutions: Path = SOLUTIONS) -> Path:
    """Write the student version of ``assignment`` to ``out_dir/<assignment>/`` and return that folder.

    Works in a scratch course directory, so the repository gets no gradebook
    and a failed generation never leaves a half-written exercise behind.
    """
    solution_notebook(assignment, solutions)  # clear error for an unknown assignment
    with tempfile.TemporaryDirectory(prefix="qkv-release-") as tmp:
        root = Path(tmp)
        shutil.copytree(solutions / assignment, root / "source" / assignment,
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
        api = NbGraderAPI(config=nbgrader_config(root))
        result = api.generate_assignment(assignment, force=True, create=True)
        if not result["success"]:
            log = result.get("log") or result.get("error")
            raise ReleaseError(f"nbgrader could not generate {assignment!r}:\n{log}")
        target = Path(out_dir) / assignment
        staged = Path(out_dir) / f".{assignment}.new"
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(root / "release" / assignment, staged)
        for nb_path in staged.glob("*.ipynb"):
            _normalize(nb_path)
        shutil.rmtree(target, ignore_errors=True)
        staged.rename(target)
    return target


def _normalize(nb_path: Path) -> None:
    """Rewrite with sorted keys and a final newline, so regenerating gives identical bytes."""
    nb = json.loads(nb_path.read_text())
    nb_path.write_text(json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n")




def stale_exercises(exercises: Path = EXERCISES, solutions: Path = SOLUTIONS) -> list[str]:
    """Assignments whose committed exercise differs from a fresh generation (empty when up to date)."""
    stale = []
    with tempfile.TemporaryDirectory(prefix="qkv-release-check-") as tmp:
        for a in assignments(solutions):
            fresh = generate(a, Path(tmp), solutions)
            committed = exercises / a
            fresh_files = {p.relative_to(fresh): p.read_bytes() for p in fresh.rglob("*") if p.is_file()}
            committed_files = ({p.relative_to(committed): p.read_bytes() for p in committed.rglob("*") if p.is_file()}
                               if committed.is_dir() else {})
            if fresh_files != committed_files:
                stale.append(a)
    return stale


def relative(path: Path) -> str:
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)
