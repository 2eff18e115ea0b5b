"""The notebook contract (qkv/notebook_contract.py): one definition of an exercise notebook and one
cell runner, shared by `qkv check` and the grader; and the deliberate copies it pins."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from autograder.course import SOLUTIONS, assignments
from notebook_tools import REPO, learner_notebook
from qkv import notebook_contract as contract


@pytest.mark.parametrize("assignment", assignments())
def test_every_answer_cell_defines_exactly_its_grade_id(assignment):
    """Both tools read an answer cell's grade_id as the function it grades."""
    nb = nbformat.read(SOLUTIONS / assignment / f"{assignment}.ipynb", as_version=4)
    answers = [c for c in nb.cells if contract.is_answer_cell(c)]
    assert answers
    for cell in answers:
        assert contract.defined_names(cell.source) == [contract.graded_function(cell)]


def test_the_gpt2_split_patterns_are_equal():
    """GPT-2's pre-tokenization pattern is copied on purpose (the library, the checks, the exercise)."""
    from qkv import bpe
    from qkv.checks import tokenization

    library, checks = bpe.GPT2_SPLIT_PATTERN, tokenization.GPT2_SPLIT_PATTERN

    source = "".join(c.source for c in nbformat.read(SOLUTIONS / "tokenization" / "tokenization.ipynb",
                                                      as_version=4).cells)
    in_notebook = re.search(r'GPT2_SPLIT_PATTERN = r"""(.*?)"""', source)
    assert library == checks
    assert in_notebook is not None and in_notebook.group(1) == library


def test_the_grader_no_longer_imports_the_learner_tool():
    probe = "import sys, autograder.verify, autograder.grading; print('qkv.selfcheck' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "False", out.stderr


def test_the_contract_needs_only_the_standard_library():
    """The sandbox binds this one file next to wire.py: it may import nothing from qkv."""
    import ast

    tree = ast.parse((REPO / "qkv" / "notebook_contract.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= set(sys.stdlib_module_names) | {"__future__", "IPython"}, imported


def test_hidden_blocks_split_off():
    visible, hidden = contract.split_hidden("a = 1\n### BEGIN HIDDEN TESTS\nb = 2\n### END HIDDEN TESTS\nc = 3\n")
    assert visible == "a = 1\nc = 3\n" and hidden == "b = 2\n"
    assert contract.function_of("test_merge_heads_shape", ["merge", "merge_heads"]) == "merge_heads"


# ----------------------------------------------------------------------------- the cell runner


def _runner():
    ns: dict = {"__name__": "__main__"}
    return contract.CellRunner(ns), ns


def test_magics_behave_as_in_ipython(capsys):
    runner, ns = _runner()
    assert runner.run("%matplotlib inline\nimport math\nx = 1", "a") == []
    runner.run("%%time\ndef f(a):\n    '''Add one.'''\n    return a + 1", "b")
    assert ns["f"](1) == 2  # %%time runs its body in the namespace
    assert ns["x"] == 1
    runner.run("%time y = f(41)", "c")
    assert ns["y"] == 42
    runner.run("%%timeit -n 2\nz = f(0)", "d")
    assert "z" not in ns  # as in IPython: %%timeit's body runs inside a function
    runner.run("out = !echo hello\nf?", "e")
    assert ns["out"] == ["hello"]
    printed = capsys.readouterr().out
    assert "Wall time" in printed and "per loop" in printed and "Add one." in printed
    runner.run("%%capture cap\nprint('quiet')", "f")
    assert ns["cap"].stdout == "quiet\n" and "quiet" not in capsys.readouterr().out
    runner.run("display(f)\n!echo shell", "g")
    assert "shell" in capsys.readouterr().out


def test_other_magics_are_a_note_not_a_crash():
    runner, ns = _runner()
    notes = runner.run("%who\nafter = 1", "a")
    assert ns["after"] == 1 and notes == ["the %who magic only works in Jupyter: it was skipped here"]
    notes = runner.run("%%nosuchmagic\nnever = 1", "b")
    assert "never" not in ns and "%%nosuchmagic" in notes[0]
    with pytest.raises(ZeroDivisionError):  # a learner's own error still raises
        runner.run("%matplotlib inline\n1 / 0", "c")


# ----------------------------------------------------------------------------- the same everywhere

MAGIC_LADEN = {
    "softmax": "%matplotlib inline\n{body}",
    "scaled_dot_product_attention": "%%time\n{body}",
    "additive_attention": "{body}\n%timeit -n 1 additive_attention\nadditive_attention?\n!echo checked",
}


def _magic_notebook():
    nb = learner_notebook("attention", {k: "reference" for k in MAGIC_LADEN})
    for cell in nb.cells:
        gid = contract.nbgrader(cell).get("grade_id")
        if gid in MAGIC_LADEN:
            cell.source = MAGIC_LADEN[gid].format(body=cell.source)
    nb.cells.insert(3, nbformat.v4.new_code_cell("files = !ls /\ndisplay(files)\n%load_ext autoreload\n"
                                                 "%autoreload 2\n%config InlineBackend.figure_format = 'svg'"))
    return nb


@pytest.mark.slow
@pytest.mark.xdist_group("grading")
def test_a_magic_laden_notebook_gets_full_marks_from_check_and_grade(tmp_path):
    subs = tmp_path / "subs" / "ada"
    subs.mkdir(parents=True)
    nbformat.write(_magic_notebook(), subs / "attention.ipynb")
    check = subprocess.run([sys.executable, "-m", "qkv", "check", "attention", str(subs / "attention.ipynb")],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "3 of 3 functions pass" in check.stdout
    grade = subprocess.run([sys.executable, "-m", "autograder", "grade", "attention", str(tmp_path / "subs"),
                            "--out", str(tmp_path / "out"), "--quiet"], capture_output=True, text=True, timeout=900)
    assert grade.returncode == 0, grade.stderr[-3000:]
    with open(Path(tmp_path / "out" / "grades.csv")) as fh:
        row = next(csv.DictReader(fh))
    assert (row["student_id"], row["score"], row["status"]) == ("ada", "11", "graded"), row
    # The sandbox starts no program (a program would compute without the banned-operator refusals):
    # the shell commands were skipped, each with a note on its cell, and the rest of the cell ran.
    feedback = (tmp_path / "out" / "feedback" / "ada" / "attention.html").read_text()
    assert "the shell command `echo checked` was not run: the grader runs no programs" in feedback
    assert "the shell command `ls /` was not run" in feedback
