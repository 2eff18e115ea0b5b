"""The verdict cache is keyed on everything that changes a verdict (#15 item 10).

A verdict stored by one run is reused by the next only if nothing it depends on changed: the
reference, the submission, the limits, the checks' code (their diagnoses and BANNED tables), the
notebook contract, the grader's own verification code, the torch version and the Python version.
Each test stores a verdict as the run does, changes one of them, and asks the run's own cache
look-up (``grading._cached_verdicts``) whether it would re-verify.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from autograder import verdicts as verdict_module
from autograder.grading import _cached_verdicts, _store_verdicts
from autograder.sandbox import Limits
from autograder.verdicts import CellVerdict, Verdicts, cache_key

ROOT = verdict_module._ROOT


@pytest.fixture
def stored(tmp_path, monkeypatch):
    """A reference, a submission, copies of the verdict code (so that a test may edit them) and a
    verdict stored for them under the default limits."""
    code = []
    for path in verdict_module.VERDICT_CODE:
        copy = tmp_path / "code" / path.relative_to(ROOT)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy)
        code.append(copy)
    monkeypatch.setattr(verdict_module, "VERDICT_CODE", tuple(code))
    reference, submission = tmp_path / "reference.ipynb", tmp_path / "submission.ipynb"
    reference.write_text('{"cells": ["reference"]}')
    submission.write_text('{"cells": ["submission"]}')
    path = tmp_path / "ada.json"
    verdicts = Verdicts({"test_softmax": CellVerdict("test_softmax", 3.0, True)},
                        key=cache_key(reference, submission, Limits()))
    _store_verdicts(verdicts, path)
    assert _cached_verdicts(path, reference, submission, Limits()) is not None  # unchanged: reused
    return {"path": path, "reference": reference, "submission": submission, "code": code}


def _reused(stored, limits: Limits = Limits()) -> bool:
    return _cached_verdicts(stored["path"], stored["reference"], stored["submission"], limits) is not None


def _edit(path: Path) -> None:
    path.write_text(path.read_text() + "\n# changed\n")


@pytest.mark.parametrize("which", ["reference", "submission"])
def test_a_changed_notebook_is_verified_again(stored, which):
    _edit(stored[which])
    assert not _reused(stored)


@pytest.mark.parametrize("field, value", [("call_seconds", 5.0), ("cell_seconds", 30.0), ("memory_bytes", 2**31),
                                          ("submission_seconds", 60.0), ("processes", 64)])
def test_other_limits_verify_again(stored, field, value):
    assert not _reused(stored, Limits(**{field: value}))
    assert _reused(stored, Limits())


@pytest.mark.parametrize("relative", [str(p.relative_to(ROOT)) for p in verdict_module.VERDICT_CODE])
def test_a_change_to_any_verdict_code_verifies_again(stored, relative):
    [path] = [p for p in stored["code"] if str(p).endswith(relative)]
    _edit(path)
    assert not _reused(stored)


def test_a_changed_banned_table_verifies_again(stored):
    """The BANNED table itself, not just any edit of its file: one more banned name."""
    [path] = [p for p in stored["code"] if p.name == "attention.py" and p.parent.name == "checks"]
    text = path.read_text()
    assert "BANNED = {" in text
    path.write_text(text.replace("BANNED = {", 'BANNED = {"*": ["torch.exp"],', 1))
    assert not _reused(stored)


def test_another_torch_or_python_verifies_again(stored, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(verdict_module, "_torch_version", lambda: "0.0.1")
        assert not _reused(stored)
    assert _reused(stored)
    with monkeypatch.context() as patch:
        patch.setattr(verdict_module.platform, "python_version", lambda: "3.0.0")
        assert not _reused(stored)


def test_a_cache_file_that_is_not_ours_is_verified_again(stored):
    stored["path"].write_text('{"tests": {}, "cell_errors": {}, "notes": []}')  # no key
    assert not _reused(stored)
    stored["path"].write_text("not json")
    assert not _reused(stored)


def _imported_files(path: Path) -> set[Path]:
    """The course's own modules ``path`` imports (``qkv.*``, ``autograder.*``, and the bare names the
    sandbox worker binds: ``wire``, ``notebook_contract``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        for name in names:
            parts = name.split(".")
            if parts[0] in ("qkv", "autograder"):
                candidate = ROOT.joinpath(*parts).with_suffix(".py")
            elif name == "wire":
                candidate = ROOT / "autograder" / "wire.py"
            elif name == "notebook_contract":
                candidate = ROOT / "qkv" / "notebook_contract.py"
            else:
                continue
            if candidate.is_file():
                found.add(candidate)
    return found


def test_the_key_covers_every_module_the_verdict_code_imports():
    """Independent of the list: follow the imports from the verification code and the checks."""
    listed = set(verdict_module.VERDICT_CODE)
    # Paths only (where the course lives), never what a verdict says.
    not_deciding = {ROOT / "autograder" / "course.py"}
    todo, seen = list(listed), set()
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo += _imported_files(path)
    assert seen - listed - not_deciding == set()
