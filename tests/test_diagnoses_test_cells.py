"""Test cells do not depend on each other's state.

A learner whose function fails one test must not lose the points of another test because a
variable the second test reads was to be defined by the first one after its failing check
(issue 16, weak spot 6). So every test cell of every solution notebook may read only:

- names it defines itself, before the statement that reads them (or within that statement:
  a loop variable, a comprehension variable);
- names defined at module level by the locked setup cells (imports, helpers the notebook gives);
- the graded functions (the grader defines only those from the answer cells);
- Python's builtins.

The scan is static (an AST walk in statement order), so it also catches a name that a test
cell would read before defining it.
"""

from __future__ import annotations

import ast
import builtins

import nbformat
import pytest

from autograder.course import SOLUTIONS, assignments

BUILTINS = set(dir(builtins))


def _nbgrader(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def _stores(node: ast.AST) -> set[str]:
    """Every name a statement binds, at any depth (targets, loop and comprehension variables,
    imports, def/class names, except-as, walrus)."""
    names: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and isinstance(sub.ctx, (ast.Store, ast.Del)):
            names.add(sub.id)
        elif isinstance(sub, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in sub.names)
        elif (isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
              or (isinstance(sub, ast.ExceptHandler) and sub.name)):
            names.add(sub.name)
        elif isinstance(sub, ast.arg):
            names.add(sub.arg)  # parameters of a lambda or a def inside the cell
    return names


def _loads(node: ast.AST) -> set[str]:
    return {sub.id for sub in ast.walk(node) if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load)}


def module_level_names(source: str) -> set[str]:
    """Names a cell defines at module level (what later cells can see)."""
    names: set[str] = set()
    for stmt in ast.parse(source).body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(stmt.name)
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in stmt.names)
        else:
            names.update(n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store))
    return names


def borrowed_names(source: str, allowed: set[str]) -> list[tuple[int, str]]:
    """(line, name) for every name the cell reads that it has not defined by then and that
    ``allowed`` does not provide."""
    defined: set[str] = set()
    out = []
    for stmt in ast.parse(source).body:
        inside = _stores(stmt)
        for name in sorted(_loads(stmt) - defined - inside - allowed - BUILTINS):
            out.append((stmt.lineno, name))
        defined |= inside
    return out


def setup_and_graded_names(nb) -> set[str]:
    names: set[str] = set()
    for cell in nb.cells:
        meta = _nbgrader(cell)
        if cell.cell_type != "code" or (meta.get("grade") and not meta.get("solution")):
            continue
        if meta.get("solution"):  # the grader defines the answer cells' functions, nothing else of them
            tree = ast.parse(cell.source)
            names.update(n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)))
        elif meta.get("locked"):
            names |= module_level_names(cell.source)
    return names


@pytest.mark.parametrize("assignment", assignments())
def test_no_test_cell_reads_a_name_another_test_cell_defines(assignment):
    nb = nbformat.read(SOLUTIONS / assignment / f"{assignment}.ipynb", as_version=4)
    allowed = setup_and_graded_names(nb)
    problems = {}
    for cell in nb.cells:
        meta = _nbgrader(cell)
        if cell.cell_type == "code" and meta.get("grade") and not meta.get("solution"):
            borrowed = borrowed_names(cell.source, allowed)
            if borrowed:
                problems[meta["grade_id"]] = borrowed
    assert problems == {}, f"{assignment}: test cells read names they do not define: {problems}"


def test_the_scan_finds_a_borrowed_name_and_accepts_a_self_contained_cell():
    """The scanner itself: the norms bug of issue 16 (x3 defined by another cell) is found;
    loop variables, comprehension variables and names defined earlier in the cell are not."""
    allowed = {"check", "batch_norm", "torch"}
    assert borrowed_names("check.check_batch_norm(batch_norm, x3, w)\n", allowed) == [(1, "w"), (1, "x3")]
    ok = ("x3 = torch.ones(2)\nfor _s in range(3):\n    check.f(batch_norm, x3, _s)\n"
          "_ys = [_z * 2 for _z in range(3)]\nf = lambda a: a + 1\n")
    assert borrowed_names(ok, allowed) == []
    late = "check.f(batch_norm, y)\ny = 1\n"
    assert borrowed_names(late, allowed) == [(1, "y")]


def _cells(nb, *, kind: str) -> dict[str, str]:
    out = {}
    for cell in nb.cells:
        meta = _nbgrader(cell)
        if cell.cell_type != "code":
            continue
        is_test = bool(meta.get("grade")) and not meta.get("solution")
        if (kind == "test" and is_test) or (kind == "solution" and meta.get("solution")):
            out[meta["grade_id"]] = cell.source
    return out


def test_a_wrong_training_mode_does_not_cost_the_eval_point():
    """The norms case of issue 16: batch_norm wrong in training mode only. Each visible test
    cell runs alone (a fresh namespace holding only the setup and the answers, as when the
    other cell failed first): the training test fails, the eval test passes."""
    from qkv.checks import CheckFailed

    nb = nbformat.read(SOLUTIONS / "norms" / "norms.ipynb", as_version=4)
    tests = _cells(nb, kind="test")
    reference = _cells(nb, kind="solution")["batch_norm"]
    wrong = reference.replace("var = ((x - mean.reshape(shape)) ** 2).mean(dim=dims)",
                              "var = x.var(dim=dims)")  # unbiased variance in training: a training-only slip
    assert wrong != reference

    def run(test_id: str) -> None:
        ns: dict = {}
        for cell in nb.cells:  # the locked setup cells (imports)
            meta = _nbgrader(cell)
            if cell.cell_type == "code" and meta.get("locked") and not meta.get("grade"):
                exec(cell.source, ns)
        exec(wrong, ns)
        exec(tests[test_id].split("### BEGIN HIDDEN TESTS")[0], ns)

    with pytest.raises(CheckFailed, match="unbiased"):
        run("test_batch_norm_training")
    run("test_batch_norm_eval")
