"""The notebook contract: what an exercise notebook is, and how a learner's cell is run.

One home for what the learner's tools (``qkv check``) and the grader (``autograder``) both need to
know about an exercise notebook:

- cell roles: answer cells (nbgrader ``solution`` cells; their ``grade_id`` is the function they
  grade), test cells (nbgrader ``grade`` cells named ``test_<function>[_<aspect>]``), locked
  set-up cells, and the self-check cell (``{"qkv": {"role": "self-check"}}``, or a cell holding only
  ``qkv.check(...)``/``qkv.hint(...)`` calls);
- hidden tests: the ``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN TESTS`` block of a test cell;
- the learner-cell runner (:class:`CellRunner`): IPython's own input transformation, plus a
  minimal shell for the magics that make sense without a kernel, so that a cell behaves in the
  grader's sandbox and in ``qkv check`` as it does in JupyterLab.

It depends only on the standard library (and IPython, imported when a cell needs it), so the
grader binds this one file into its sandbox next to ``wire.py`` and imports it there as
``notebook_contract`` without importing the ``qkv`` package.
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
import time
import timeit
from collections.abc import Iterable
from typing import Any

SELF_CHECK_ROLE = "self-check"  # cell metadata {"qkv": {"role": "self-check"}}: the `qkv.check()` cell
HIDDEN_BEGIN = "### BEGIN HIDDEN TESTS"
HIDDEN_END = "### END HIDDEN TESTS"
HIDDEN = re.compile(rf"^[ \t]*{HIDDEN_BEGIN}[ \t]*\n(.*?)^[ \t]*{HIDDEN_END}[ \t]*\n?", re.S | re.M)


# ----------------------------------------------------------------------------- cell roles


def nbgrader(cell) -> dict:
    """The cell's nbgrader metadata ({} when it has none)."""
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def is_answer_cell(cell) -> bool:
    meta = nbgrader(cell)
    return cell.get("cell_type") == "code" and bool(meta.get("solution")) and bool(meta.get("grade_id"))


def graded_function(cell) -> str | None:
    """The function an answer cell grades: its ``grade_id`` (each answer cell defines exactly that
    function; tests/test_notebook_contract.py pins it for every assignment)."""
    return nbgrader(cell)["grade_id"] if is_answer_cell(cell) else None


def is_test_cell(cell) -> bool:
    meta = nbgrader(cell)
    return cell.get("cell_type") == "code" and bool(meta.get("grade")) and not meta.get("solution")


def is_locked_setup_cell(cell) -> bool:
    """A locked code cell that is neither an answer nor a test (the exercise's imports)."""
    meta = nbgrader(cell)
    return cell.get("cell_type") == "code" and bool(meta.get("locked")) and not meta.get("grade") \
        and not meta.get("solution")


def is_self_check_cell(cell) -> bool:
    """A learner-side helper cell: the exercise's ``qkv.check(...)`` cell (metadata
    ``{"qkv": {"role": "self-check"}}``) or a cell holding only ``import qkv`` and
    ``qkv.check(...)`` / ``qkv.hint(...)`` calls with literal arguments (what the README tells
    learners to type). The self-check never runs these (a check would check itself) and the
    grader skips them too: a skipped cell's code never runs, so this can only ever remove a
    learner's own code from what is loaded."""
    meta = cell.get("metadata", {}).get("qkv", {})
    if isinstance(meta, dict) and meta.get("role") == SELF_CHECK_ROLE:
        return True
    if cell.get("cell_type") != "code":
        return False
    try:
        body = ast.parse(cell.get("source", "")).body
    except SyntaxError:
        return False

    def helper(node) -> bool:
        if isinstance(node, ast.Import):
            return all(a.name == "qkv" and a.asname is None for a in node.names)
        call = node.value if isinstance(node, ast.Expr) else None
        return (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                and isinstance(call.func.value, ast.Name) and call.func.value.id == "qkv"
                and call.func.attr in ("check", "hint")
                and all(isinstance(a, ast.Constant) for a in [*call.args, *(k.value for k in call.keywords)]))

    return bool(body) and all(helper(n) for n in body) and any(not isinstance(n, ast.Import) for n in body)


def defined_names(source: str) -> list[str]:
    """Functions and classes defined at the top level of ``source`` (read as the cell runner runs
    it, IPython syntax included; [] when it does not parse)."""
    try:
        tree = ast.parse(transform(source))
    except Exception:  # noqa: BLE001 - IPython's transformer may raise anything on odd input
        return []
    return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]


def _role(meta: dict) -> tuple:
    return bool(meta.get("grade")), bool(meta.get("solution")), bool(meta.get("locked"))


def normalize_grade_ids(cells, roles: dict[str, dict]) -> list[str]:
    """Give every nbgrader grade_id of a learner's notebook to one cell, with the role the released
    assignment gives it, in place; returns one note per cell that lost its id.

    ``roles``: grade_id -> the reference's nbgrader metadata for it. A learner may split or copy an
    answer cell in Jupyter, which copies its metadata: the answer is the last copy that defines the
    function of that name (the last definition run wins, as in Jupyter), else the first. A copied
    test or locked cell keeps its id on the first copy whose role and type match the release. Any
    other cell carrying an id (a copy, an id the release does not have, a role that does not match:
    metadata a learner cannot set by accident) becomes a plain cell of the learner's own; the cell
    that keeps an id gets the release's role for it (grade, solution, locked, points)."""
    by_id: dict[str, list[int]] = {}
    for i, cell in enumerate(cells):
        gid = nbgrader(cell).get("grade_id")
        if gid:
            by_id.setdefault(gid, []).append(i)
    notes = []
    for gid, indexes in by_id.items():
        role = roles.get(gid)
        keep = None
        if role is not None and role.get("solution") and not role.get("grade"):
            answers = [i for i in indexes if cells[i].get("cell_type") == "code" and nbgrader(cells[i]).get("solution")]
            defining = [i for i in answers if gid in defined_names(cells[i].get("source", ""))]
            keep = defining[-1] if defining else (answers[0] if answers else None)
        elif role is not None:
            matching = [i for i in indexes if _role(nbgrader(cells[i])) == _role(role)
                        and cells[i].get("cell_type") == role.get("cell_type", cells[i].get("cell_type"))]
            keep = matching[0] if matching else None
        for i in indexes:
            if i == keep:  # its role is the release's, whatever the copy claims (points included)
                meta = cells[i]["metadata"]["nbgrader"]
                meta.update({k: role[k] for k in ("grade", "solution", "locked", "task", "points") if k in role})
                if "points" not in role:
                    meta.pop("points", None)
                continue
            cells[i].get("metadata", {}).pop("nbgrader", None)
            if role is not None and not (role.get("solution") and not role.get("grade")):
                notes.append(f"cell {i + 1} repeats the id of a test or locked cell (a copy?): the grader ignored it")
                continue
            why = ("repeats the id of another cell (a split or copied cell?)" if role is not None and keep is not None
                   else "has nbgrader metadata that does not match the released exercise")
            notes.append(f"cell {i + 1} {why}: it was graded as a cell of your own")
    return notes


def answer_cells(cells) -> dict[str, int]:
    """grade_id -> index of the answer cell for it (after :func:`normalize_grade_ids`, one each)."""
    return {nbgrader(cell)["grade_id"]: i for i, cell in enumerate(cells) if is_answer_cell(cell)}


def function_of(test_id: str, functions: Iterable[str]) -> str | None:
    """The graded function a test cell tests, from its name ``test_<function>[_aspect]``."""
    for name in sorted(functions, key=len, reverse=True):  # longest first: test_merge_heads vs merge
        if test_id == f"test_{name}" or test_id.startswith(f"test_{name}_"):
            return name
    return None


def split_hidden(source: str) -> tuple[str, str]:
    """(the test cell without its hidden block, the hidden block's code)."""
    hidden = "\n".join(m.group(1) for m in HIDDEN.finditer(source))
    return HIDDEN.sub("", source), hidden


# ----------------------------------------------------------------------------- the learner-cell runner


class _Lines(list):
    """What ``x = !cmd`` gives in IPython: the output's lines (with IPython's ``.n``/``.s`` joins)."""

    @property
    def n(self) -> str:
        return "\n".join(self)

    @property
    def s(self) -> str:
        return " ".join(self)


class MiniShell:
    """What ``get_ipython()`` returns outside a kernel: enough of IPython's shell for the code
    IPython's input transformation writes (``run_line_magic``, ``run_cell_magic``, ``system``,
    ``getoutput``). Magics that make sense without a kernel behave as in IPython; the others are
    skipped with a note for that cell (``notes``), and the rest of the cell still runs."""

    # Magics that only configure a front end or a kernel: nothing to do here, nothing to say.
    SILENT = {"matplotlib", "config", "load_ext", "reload_ext", "autoreload", "aimport", "xmode", "precision",
              "pdb", "colors", "autocall", "automagic", "doctest_mode", "pprint"}
    DISPLAY_ONLY = {"html", "HTML", "markdown", "latex", "javascript", "js", "svg"}

    def __init__(self, namespace: dict):
        self.user_ns = namespace
        self.notes: list[str] = []

    # -- shell escapes: run them, as Jupyter would; where no program may start (the grader's
    # sandbox), say so for the cell and go on, as a shell that cannot run the command would

    def _shell(self, cmd: str) -> subprocess.CompletedProcess | None:
        try:
            return subprocess.run(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  errors="replace")
        except PermissionError:
            self.notes.append(f"the shell command `{cmd.splitlines()[0] if cmd else cmd}` was not run: the "
                              "grader runs no programs (it runs in JupyterLab and in qkv check)")
            return None

    def system(self, cmd: str) -> int:
        sys.stdout.flush()
        proc = self._shell(cmd)
        if proc is not None:
            sys.stdout.write(proc.stdout)
        code = 126 if proc is None else proc.returncode  # 126: the shell's "cannot execute"
        self.user_ns["_exit_code"] = code
        return code

    def getoutput(self, cmd: str, split: bool = True, depth: int = 0):
        proc = self._shell(cmd)
        output = "" if proc is None else proc.stdout
        return _Lines(output.splitlines()) if split else output

    # -- magics

    def run_line_magic(self, name: str, line: str, _stack_depth: int = 1):
        if name in self.SILENT:
            return None
        if name == "time":
            return self._time(line, mode="eval_or_exec")
        if name == "timeit":
            return self._timeit(*_split_timeit(line, ""))
        if name in ("pinfo", "pinfo2"):
            return self._pinfo(line, detail=name == "pinfo2")
        if name == "env":
            return self._env(line)
        if name == "cd":
            os.chdir(os.path.expanduser(line.strip() or "~"))
            return None
        if name == "pwd":
            return os.getcwd()
        if name in ("pip", "conda"):
            return self.system(f"{shlex.quote(sys.executable)} -m pip {line}" if name == "pip" else f"conda {line}")
        self.notes.append(f"the %{name} magic only works in Jupyter: it was skipped here")
        return None

    def run_cell_magic(self, name: str, line: str, cell: str):
        if name in ("time", "prun"):
            return self._time(cell, mode="exec", report=name == "time")
        if name == "capture":
            return self._capture(line, cell)
        if name == "timeit":
            return self._timeit(*_split_timeit(line, cell))
        if name == "writefile":
            return self._writefile(line, cell)
        if name in ("bash", "sh", "script"):
            program = "bash" if name == "bash" else ("sh" if name == "sh" else line.strip() or "sh")
            return self.system(f"{program} <<'QKV_END_OF_CELL'\n{cell}\nQKV_END_OF_CELL")
        if name in self.DISPLAY_ONLY:
            return None
        self.notes.append(f"the %%{name} cell magic only works in Jupyter: this cell's body was not run")
        return None

    def _run(self, source: str, name: str):
        """Run ``source`` in the user namespace as a cell; the last expression's value is returned."""
        return run_source(source, name, self.user_ns, self)

    def _time(self, source: str, mode: str, report: bool = True):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        try:
            return self._run(source, "<timed>")
        finally:
            if report:
                wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
                print(f"CPU times: total: {_fmt(cpu)}\nWall time: {_fmt(wall)}")

    def _timeit(self, setup: str, stmt: str, number: int | None, repeat: int):
        # As IPython does, the statement runs inside a function: its assignments do not persist.
        timer = timeit.Timer(stmt=stmt or "pass", setup=setup or "pass", globals=self.user_ns)
        if number is None:
            number = 1
            while number < 10**6 and timer.timeit(number) < 0.05:  # shorter than IPython's 0.2 s: a grader waits
                number *= 10
        runs = [timer.timeit(number) / number for _ in range(max(1, repeat))]
        mean = sum(runs) / len(runs)
        print(f"{_fmt(mean)} per loop (mean of {len(runs)} runs, {number} loops each)")
        return None

    def _capture(self, line: str, cell: str):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            self._run(cell, "<captured>")
        target = line.split()[0] if line.split() else None
        if target and target.isidentifier():
            self.user_ns[target] = _Captured(out.getvalue(), err.getvalue())
        return None

    def _writefile(self, line: str, cell: str):
        args = shlex.split(line)
        append = "-a" in args or "--append" in args
        paths = [a for a in args if not a.startswith("-")]
        if not paths:
            raise ValueError("%%writefile needs a file name")
        with open(os.path.expanduser(paths[0]), "a" if append else "w") as fh:
            fh.write(cell)
        print(f"{'Appending to' if append else 'Writing'} {paths[0]}")
        return None

    def _pinfo(self, name: str, detail: bool):
        name = name.strip()
        try:
            obj = eval(name, self.user_ns)  # noqa: S307 - the learner's own expression, in the learner's namespace
        except Exception:
            print(f"Object `{name}` not found.")
            return None
        import inspect

        print(f"Type:      {type(obj).__name__}")
        doc = inspect.getdoc(obj)
        if doc:
            print(f"Docstring:\n{doc}")
        if detail:
            with contextlib.suppress(TypeError, OSError):
                print(f"Source:\n{inspect.getsource(obj)}")
        return None

    def _env(self, line: str):
        line = line.strip()
        if not line:
            return dict(os.environ)
        if "=" in line or " " in line:
            key, _, value = line.partition("=" if "=" in line else " ")
            os.environ[key.strip()] = value.strip()
            return None
        return os.environ.get(line)


class _Captured:
    """``%%capture out``: ``out.stdout``, ``out.stderr``, ``out.show()``."""

    def __init__(self, stdout: str, stderr: str):
        self.stdout, self.stderr = stdout, stderr

    def show(self) -> None:
        sys.stdout.write(self.stdout)
        sys.stderr.write(self.stderr)

    def __str__(self) -> str:
        return self.stdout


def _fmt(seconds: float) -> str:
    for unit, scale in (("s", 1), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def _split_timeit(line: str, cell: str) -> tuple[str, str, int | None, int]:
    """(setup, statement, number, repeat) from ``%timeit [-n N] [-r R] [stmt]`` / ``%%timeit [...] setup``."""
    number, repeat, words = None, 3, shlex.split(line) if line.strip() else []
    rest: list[str] = []
    i = 0
    while i < len(words):
        if words[i] in ("-n", "-r") and i + 1 < len(words):
            if words[i] == "-n":
                number = int(words[i + 1])
            else:
                repeat = min(int(words[i + 1]), 3)
            i += 2
        elif words[i] in ("-q", "-o", "-c", "-t", "-p"):
            i += 1 if words[i] in ("-q", "-o", "-c", "-t") else 2
        else:
            rest = words[i:]
            break
    tail = " ".join(rest)
    return (tail, cell, number, repeat) if cell else ("", tail, number, repeat)


def display(*objs: Any, **kwargs: Any) -> None:
    """IPython's ``display`` outside a kernel: each object's text form, as a console would show it."""
    for obj in objs:
        print(repr(obj) if not isinstance(obj, str) else obj)


def transform(source: str) -> str:
    """IPython's own input transformation (magics, ``!``, ``?``); plain Python passes unchanged.
    The grader reads exactly this text for banned calls (autograder/static_scan.py) and sends it to
    the sandbox, where it passes through unchanged (it compiles)."""
    try:
        compile(source, "<cell>", "exec")
        return source
    except SyntaxError:
        pass
    try:
        from IPython.core.inputtransformer2 import TransformerManager
    except ImportError:  # no IPython: the syntax error stands, for that cell only
        return source
    return TransformerManager().transform_cell(source)


def run_source(source: str, name: str, namespace: dict, shell: MiniShell | None = None):
    """Run a cell's ``source`` in ``namespace`` the way IPython does: transformed, the last bare
    expression evaluated and returned. Raises whatever the learner's code raises."""
    code = transform(source)
    tree = ast.parse(code, filename=name)
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    if shell is not None:
        namespace.setdefault("get_ipython", lambda: shell)
        namespace.setdefault("display", display)
    exec(compile(tree, name, "exec"), namespace)  # noqa: S102 - running the learner's own code is the point
    if last is not None:
        return eval(compile(last, name, "eval"), namespace)  # noqa: S307
    return None


class CellRunner:
    """Runs learner cells in one namespace, as JupyterLab would: ``run(source, name)`` raises what
    the cell raises and returns the notes about magics that were skipped in that cell."""

    def __init__(self, namespace: dict):
        self.namespace = namespace
        self.shell = MiniShell(namespace)
        namespace.setdefault("get_ipython", lambda: self.shell)
        namespace.setdefault("display", display)

    def run(self, source: str, name: str) -> list[str]:
        self.shell.notes = []
        run_source(source, name, self.namespace, self.shell)
        return list(self.shell.notes)
