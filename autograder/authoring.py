"""Helpers for writing nbgrader source notebooks (``solutions/<a>/<a>.ipynb``).

nbgrader reads its cell roles from ``cell.metadata.nbgrader``; writing that JSON
by hand is error-prone, so authors (and the tests that build sample submissions)
assemble notebooks from these constructors and save them once. The saved
notebook is the source of truth, edited afterwards in JupyterLab or with nbformat.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

_SCHEMA = 3


def _meta(grade_id: str, *, grade=False, solution=False, locked=False, points=None) -> dict:
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": _SCHEMA,
            "solution": solution, "task": False}
    if points is not None:
        meta["points"] = points
    return {"nbgrader": meta}


def markdown(text: str, grade_id: str):
    """A locked instruction cell."""
    return new_markdown_cell(text.strip(), metadata=_meta(grade_id, locked=True))


def readonly(source: str, grade_id: str):
    """A locked code cell (imports, helpers) that learners run but cannot edit."""
    return new_code_cell(source.strip(), metadata=_meta(grade_id, locked=True))


def solution(source: str, grade_id: str):
    """An answer cell: code between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` is removed on release."""
    return new_code_cell(source.strip(), metadata=_meta(grade_id, solution=True))


def tests(source: str, grade_id: str, points: float):
    """A locked, graded test cell; ``### BEGIN/END HIDDEN TESTS`` blocks are removed on release."""
    return new_code_cell(source.strip(), metadata=_meta(grade_id, grade=True, locked=True, points=points))


def notebook(cells) -> nbformat.NotebookNode:
    nb = new_notebook(cells=list(cells))
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def save(nb: nbformat.NotebookNode, path: Path) -> Path:
    """Validate and write ``nb`` to ``path`` (parents created)."""
    nbformat.validate(nb)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path
