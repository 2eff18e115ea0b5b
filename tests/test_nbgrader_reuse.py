"""autograder.nbgrader_reuse: nbgrader records the same gradebook with and without it.

The module only lets nbgrader keep, within one process, what it rebuilt for every student (a
SQLAlchemy engine per database, a compiled metadata schema). The oracle is nbgrader itself
with the module switched off, in a separate process (the patch cannot be undone in-process).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from nbgrader.nbgraderformat.v3 import MetadataValidatorV3

REPO = Path(__file__).resolve().parent.parent

# Grades a small mixed class and prints the gradebook's content by names and scores (ids and
# timestamps differ between runs by construction).
GRADE_AND_DUMP = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import nbformat
from notebook_tools import learner_notebook
import autograder.nbgrader_reuse as reuse
if sys.argv[1] == "off":
    reuse.install = lambda: None
from autograder.grading import grade_class
from nbgrader.api import Gradebook

answers = {{
    "ada": {{"softmax": "reference", "scaled_dot_product_attention": "reference", "additive_attention": "reference"}},
    "ben": {{"softmax": "reference", "scaled_dot_product_attention":
             "def scaled_dot_product_attention(q, k, v, mask=None):\n"
             "    w = softmax(q @ k.transpose(-2, -1))\n    return w @ v, w"}},
    "cy": {{}},
}}
if __name__ == "__main__":  # the grader's workers are spawned: they re-import this file
    root = Path(sys.argv[2])
    for student, given in answers.items():
        (root / "subs" / student).mkdir(parents=True)
        nbformat.write(learner_notebook("attention", given), root / "subs" / student / "attention.ipynb")
    results = grade_class("attention", root / "subs", root / "out", workers=1, show_progress=False)
    dump = {{"results": sorted((r.student_id, r.status, r.score) for r in results), "gradebook": {{}}}}
    with Gradebook("sqlite:///" + str(root / "out" / "course" / "gradebook.db")) as gb:
        for student in sorted(s.id for s in gb.students):
            sub = gb.find_submission("attention", student)
            dump["gradebook"][student] = {{
                "score": sub.score, "max_score": sub.max_score,
                "grades": sorted((nb.name, g.name, g.auto_score, g.manual_score, g.max_score)
                                 for nb in sub.notebooks for g in nb.grades),
                "comments": sorted((nb.name, c.name, c.auto_comment) for nb in sub.notebooks for c in nb.comments),
            }}
    print("DUMP" + json.dumps(dump))
"""


def _grade(mode: str, folder: Path) -> dict:
    folder.mkdir(parents=True)
    script = folder / "grade_and_dump.py"
    script.write_text(GRADE_AND_DUMP.format(tests=str(REPO / "tests")))
    proc = subprocess.run([sys.executable, str(script), mode, str(folder)], capture_output=True, text=True,
                          cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [line] = [ln for ln in proc.stdout.splitlines() if ln.startswith("DUMP")]
    return json.loads(line.removeprefix("DUMP"))


@pytest.mark.slow
@pytest.mark.xdist_group("grading")
def test_recorded_gradebook_is_the_same_with_and_without_reuse(tmp_path):
    with_reuse = _grade("on", tmp_path / "on")
    without = _grade("off", tmp_path / "off")
    assert with_reuse == without
    # and it is a real class, not empty rows. Points per test in solutions/attention: softmax 3,
    # sdpa 3, sdpa with masks 2, additive 3. ben's softmax is right; his unscaled, maskless sdpa
    # fails both sdpa tests; cy handed in the untouched exercise.
    assert with_reuse["results"] == [["ada", "graded", 11.0], ["ben", "graded", 3.0],
                                     ["cy", "graded", 0.0]]


def _metadata_cases() -> list[dict]:
    good = {"schema_version": 3, "grade": True, "solution": False, "locked": True, "grade_id": "test_softmax",
            "points": 3, "task": False}
    return [
        good,
        {**good, "points": "three"},                 # wrong type
        {k: v for k, v in good.items() if k != "grade_id"},  # a required key missing
        {**good, "grade_id": 7},
        {**good, "surprise": 1},                     # an extra key
        {"schema_version": 3},
    ]


@pytest.mark.parametrize("metadata", _metadata_cases())
def test_compiled_schema_raises_what_jsonschema_validate_raises(metadata):
    from autograder.nbgrader_reuse import _CompiledSchemas

    schema = MetadataValidatorV3().schema
    try:
        jsonschema.validate(metadata, schema)
        expected = None
    except jsonschema.ValidationError as exc:
        expected = (type(exc), exc.message, list(exc.path))
    try:
        _CompiledSchemas().validate(metadata, schema)
        got = None
    except jsonschema.ValidationError as exc:
        got = (type(exc), exc.message, list(exc.path))
    assert got == expected


def test_a_gradebook_deleted_and_created_again_is_opened_afresh(tmp_path):
    """One engine per URL must not hand out a connection to a deleted database file."""
    from nbgrader.api import Gradebook

    from autograder.nbgrader_reuse import install

    install()
    db = tmp_path / "gradebook.db"
    with Gradebook(f"sqlite:///{db}") as gb:
        gb.add_student("ada")
    db.unlink()
    with Gradebook(f"sqlite:///{db}") as gb:
        assert [s.id for s in gb.students] == []
        gb.add_student("ben")
    with Gradebook(f"sqlite:///{db}") as gb:
        assert [s.id for s in gb.students] == ["ben"]


def test_alembic_head_read_in_process_is_what_nbgrader_reads_with_its_subprocess():
    import nbgrader.api

    import autograder.course  # noqa: F401  (puts the venv's `alembic` on PATH, as the grader does)
    from autograder.nbgrader_reuse import install

    install()
    original = nbgrader.api.get_alembic_version.nbgrader_original  # runs `alembic heads` in a subprocess
    head = nbgrader.api.get_alembic_version()
    assert head == original() and len(head) >= 8
