"""Self-check: run a chapter's *visible* tests against a learner's functions and say,
for each graded function, whether it passes, what is wrong, and which section to reread.

Two ways in:

- ``qkv check CHAPTER [NOTEBOOK]`` (:func:`check_notebook`): loads the learner's notebook in a
  subprocess (so an infinite loop cannot hang the tool: each step has a timeout, and a step
  that hangs is skipped on a rerun), then runs the visible test cells there.
- ``qkv.check()`` inside an exercise notebook (:func:`check`): runs the visible test cells
  against the functions defined in the kernel right now and displays the table.

The visible tests are the test cells of the *released* exercise
(``exercises/<ch>/<ch>.ipynb``), whose hidden tests nbgrader has already removed; the
repository's copy is preferred (a learner may have edited the tests in their own copy),
and the learner's copy is used only where the repository's is absent. ``solutions/`` is
never read: a self-check sees only what a learner is allowed to see. These verdicts are
feedback; the grade is decided by the autograder, which also runs hidden tests.
"""

from __future__ import annotations

import contextlib
import html
import importlib
import inspect
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from qkv import book_links
from qkv.book_links import anchor  # noqa: F401 - the id Sphinx gives a section (tests and older callers)
from qkv.chapters import CHAPTERS
from qkv.chapters import chapter as chapter_info
from qkv.notebook_contract import (  # noqa: F401
    SELF_CHECK_ROLE,
    CellRunner,
    function_of,
    graded_function,
    is_self_check_cell,
    is_test_cell,
    nbgrader,
)

REPO = Path(__file__).resolve().parent.parent
STATUSES = ("passed", "failing", "not attempted")
DEFAULT_STEP_TIMEOUT = 60.0  # seconds one cell or one test may run; the slowest reference test takes ~2 s
MAX_RERUNS = 5


# ----------------------------------------------------------------------------- results


@dataclass
class FunctionResult:
    """The verdict on one graded function."""

    function: str
    status: str  # one of STATUSES
    diagnosis: str = ""  # the check's message for a failure ("" when passed)
    reread: str = ""  # the section to reread: “heading” (chapter N, title); the diagnosis's own or the function's
    link: str = ""  # file:// URL of that section in the built book ("" when the book is not built)


@dataclass
class Report:
    """A chapter's self-check: one row per graded function, plus notes about loading."""

    chapter: str
    results: list[FunctionResult]
    notes: list[str] = field(default_factory=list)
    book_note: str = ""  # how to get links to the sections to reread, when some are missing

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.status == "passed" for r in self.results)

    def status_of(self) -> dict[str, str]:
        return {r.function: r.status for r in self.results}

    def summary(self) -> str:
        n = sum(r.status == "passed" for r in self.results)
        return f"{self.chapter}: {n} of {len(self.results)} functions pass the visible checks."

    def to_text(self) -> str:
        """A plain-text table: function | status | diagnosis | reread."""
        rows = [("function", "status", "diagnosis", "", "")]
        for r in self.results:
            failed = r.status != "passed"
            rows.append((r.function, r.status, r.diagnosis if failed else "", r.reread if failed else "",
                         r.link if failed else ""))
        widths = [max(len(row[i]) for row in rows) for i in range(2)]
        lines = []
        for i, row in enumerate(rows):
            indent = f"{'':<{widths[0]}}  {'':<{widths[1]}}  "
            line = f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}"
            if row[3]:
                line += f"\n{indent}reread: {row[3]}"
            if row[4]:
                line += f"\n{indent}        {row[4]}"
            lines.append(line.rstrip())
            if i == 0:
                lines.append("-" * max(len(lines[0]), 40))
        out = [f"qkv check {self.chapter}", "", *lines, "", self.summary()]
        out += [f"note: {n}" for n in self.notes]
        if self.book_note:
            out.append(f"note: {self.book_note}")
        if not self.ok:
            out.append("These are the visible checks only; the grader also runs hidden tests.")
        return "\n".join(out)

    def _repr_html_(self) -> str:
        colours = {"passed": "#1a7f37", "failing": "#cf222e", "not attempted": "#6e7781"}
        cells = []
        for r in self.results:
            reread = ""
            if r.status != "passed" and r.reread:
                reread = (f"<a href='{html.escape(r.link)}' target='_blank'>{html.escape(r.reread)}</a>"
                          f"<br><code>{html.escape(r.link)}</code>" if r.link else html.escape(r.reread))
            cells.append(
                f"<tr><td><code>{html.escape(r.function)}</code></td>"
                f"<td style='color:{colours.get(r.status, '#000')};font-weight:bold'>{html.escape(r.status)}</td>"
                f"<td style='text-align:left'>{html.escape(r.diagnosis) if r.status != 'passed' else ''}</td>"
                f"<td style='text-align:left'>{reread}</td></tr>")
        shown = self.notes + ([self.book_note] if self.book_note else [])
        notes = "".join(f"<p>note: {html.escape(n)}</p>" for n in shown)
        return (f"<div class='qkv-check'><p><b>qkv check {html.escape(self.chapter)}</b></p>"
                "<table><thead><tr><th>function</th><th>status</th><th>diagnosis</th><th>reread</th></tr></thead>"
                f"<tbody>{''.join(cells)}</tbody></table><p>{html.escape(self.summary())}</p>{notes}</div>")


# ----------------------------------------------------------------------------- the book's sections


def reread_for(chapter: str, function: str, section: tuple[str, str] | None = None,
               edition: str = "en") -> book_links.SectionLink | None:
    """The section to reread for a failure of ``function``: ``section`` ((chapter, heading), the
    failing diagnosis's own, ``CheckFailed.reread``) when given, else the function's section
    (``REREAD`` in ``qkv/checks/<chapter>.py``); None when there is neither."""
    if section is None:
        heading = checks_constant(chapter, "REREAD").get(function, "")
        section = (chapter, heading) if heading else None
    if section is None:
        return None
    return book_links.section_link(*section, edition)


def checks_constant(chapter: str, name: str) -> dict:
    """A literal constant (``REREAD``, ``HINTS``) of ``qkv/checks/<chapter>.py``, read without
    importing the module: importing it imports torch, which would make the CLI slow."""
    import ast

    path = Path(__file__).resolve().parent / "checks" / f"{chapter}.py"
    if not path.exists():
        return {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            try:
                return ast.literal_eval(node.value)
            except ValueError:  # not a literal: fall back to importing
                return getattr(importlib.import_module(f"qkv.checks.{chapter}"), name, {})
    return {}


def graded_functions(chapter: str) -> list[str]:
    """The chapter's graded functions in notebook order (answer cells of the released exercise);
    falls back to ``REREAD``'s keys when the exercise is absent."""
    path = REPO / "exercises" / chapter / f"{chapter}.ipynb"
    if path.exists():
        return Visible.from_notebook(read_notebook(path)).functions
    return list(checks_constant(chapter, "REREAD"))


def read_notebook(path: Path):
    """``nbformat.read(path, as_version=4)``. nbformat is imported here, not at the top: the
    checker's subprocess never reads a notebook, and importing nbformat costs seconds
    (its jsonschema imports a grammar-building module; see ``qkv.cli``)."""
    import nbformat

    return nbformat.read(path, as_version=4)


# ----------------------------------------------------------------------------- notebook parts
# Cell roles, test naming and self-check cells live in qkv/notebook_contract.py, shared with the grader.


@dataclass
class Visible:
    """The visible tests of an exercise: graded functions and (test id, function, source)."""

    functions: list[str]
    tests: list[tuple[str, str, str]]

    @classmethod
    def from_notebook(cls, nb) -> Visible:
        functions: list[str] = []
        tests: list[tuple[str, str, str]] = []
        for cell in nb.cells:
            if graded_function(cell):
                functions.append(graded_function(cell))
            elif is_test_cell(cell):
                tid = nbgrader(cell).get("grade_id", f"test-{len(tests)}")
                # Named test_<function>[_aspect]; a test named otherwise belongs to the answer above it.
                owner = function_of(tid, functions) or (functions[-1] if functions else None)
                if owner:
                    tests.append((tid, owner, cell.source))
        return cls(functions, tests)


def visible_tests(chapter: str, learner_nb=None) -> Visible:
    """The repository's released exercise's visible tests, else those of the learner's copy."""
    path = REPO / "exercises" / chapter / f"{chapter}.ipynb"
    if path.exists():
        return Visible.from_notebook(read_notebook(path))
    if learner_nb is not None:
        return Visible.from_notebook(learner_nb)
    raise FileNotFoundError(f"no released exercise for {chapter!r} at {path}; pass the notebook: "
                            f"qkv check {chapter} path/to/{chapter}.ipynb")


def learner_code_cells(nb) -> list[tuple[str, str]]:
    """(id, source) of the code cells to load: everything but test cells and the self-check cell."""
    out = []
    for i, cell in enumerate(nb.cells):
        if cell.get("cell_type") != "code" or is_test_cell(cell) or is_self_check_cell(cell):
            continue
        out.append((nbgrader(cell).get("grade_id") or f"cell {i + 1}", cell.source))
    return out


# ----------------------------------------------------------------------------- running tests


class StepTimeout(Exception):
    """A test ran longer than the self-check allows (an infinite loop?)."""


class TestVerdict(NamedTuple):
    """What one visible test said about one function."""

    test_id: str
    function: str
    status: str  # one of STATUSES
    diagnosis: str
    reread: tuple[str, str] | None = None  # (chapter, heading) of the failing diagnosis's section, if it named one


def classify(function: str, exc: BaseException | None) -> tuple[str, str, tuple[str, str] | None]:
    """(status, diagnosis, section) for a test of ``function`` that raised ``exc`` (None: it passed).
    ``section`` is (chapter, heading) of the section the failing diagnosis names
    (``CheckFailed.reread``), or None."""
    from qkv.checks.core import CheckFailed, NotAttempted

    if exc is None:
        return "passed", "", None
    reread = getattr(exc, "reread", None) if isinstance(exc, CheckFailed) else None
    section = (reread.chapter, reread.heading) if reread is not None else None
    if isinstance(exc, NotAttempted):
        msg = str(exc)
        other = msg.split(":", 1)[0].strip()
        if other and other != function and other.isidentifier():  # blocked by another unfinished function
            return "failing", f"uses {other}, which is not attempted yet: {msg}", section
        return "not attempted", msg, section
    if isinstance(exc, CheckFailed):
        return "failing", str(exc), section
    if isinstance(exc, NameError) and f"'{function}'" in str(exc):
        return "failing", f"{function} is not defined: run the cell that defines it (or fix its error).", None
    if isinstance(exc, AssertionError):
        return "failing", f"assertion failed: {exc}" if str(exc) else "an assertion in the test failed.", None
    if isinstance(exc, StepTimeout):
        return "failing", str(exc), None
    return "failing", f"the test raised {type(exc).__name__}: {exc}", None


def _exec(source: str, name: str, ns: dict) -> None:
    exec(compile(source, f"<{name}>", "exec"), ns)  # noqa: S102 - running the learner's own code is the point


def run_tests(ns: dict, tests: list[tuple[str, str, str]], step_timeout: float | None = None
              ) -> Iterator[TestVerdict]:
    """Run the test cells in ``ns``; yield a :class:`TestVerdict` for each."""
    for tid, function, source in tests:
        with _Alarm(step_timeout, f"{tid} did not finish within {step_timeout:g} s (an infinite loop?)"
                    if step_timeout else ""):
            try:
                _exec(source, tid, ns)
                exc = None
            except Exception as e:  # any failure of a test is a verdict on the learner's function
                exc = e
        yield TestVerdict(tid, function, *classify(function, exc))


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run the block with torch on one thread (restored after), if torch is imported.

    The visible tests are small: a second intra-op thread saves little, and on a busy machine it
    costs much (each parallel operation waits for a thread the OS has not scheduled): measured
    on the shared 2-core machine, the bert and transformer checks took 2–5 s with two threads and
    0.2–0.45 s with one (``benchmarks/selfcheck.py``). The grader's sandbox runs on one thread too.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class _Alarm:
    """Raise StepTimeout in the main thread after ``seconds`` (no-op elsewhere or when None)."""

    def __init__(self, seconds: float | None, message: str):
        self.seconds, self.message = seconds, message
        self.active = bool(seconds) and threading.current_thread() is threading.main_thread() \
            and hasattr(signal, "setitimer")

    def _fire(self, *_):
        raise StepTimeout(self.message)

    def __enter__(self):
        if self.active:
            self.previous = signal.signal(signal.SIGALRM, self._fire)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc):
        if self.active:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)
        return False


def aggregate(chapter: str, functions: list[str], verdicts: list[TestVerdict | tuple],
              notes: list[str] | None = None, function_notes: dict[str, str] | None = None,
              edition: str = "en") -> Report:
    """One row per function: failing if any of its tests fails (first diagnosis shown, with the
    section that diagnosis names, else the function's), else not attempted if any says so,
    else passed. ``verdicts`` are TestVerdicts (or their first four fields as a tuple)."""
    function_notes = function_notes or {}
    verdicts = [TestVerdict(*v) for v in verdicts]
    results, links = [], []
    for fn in functions:
        mine = [v for v in verdicts if v.function == fn]
        failing = [v for v in mine if v.status == "failing"]
        attempted = [v for v in mine if v.status == "not attempted"]
        first = failing[0] if failing else attempted[0] if attempted else None
        if first is not None:
            status, diagnosis = first.status, first.diagnosis
        elif mine:
            status, diagnosis = "passed", ""
        else:
            status, diagnosis = "not attempted", "no visible test ran for this function."
        if status != "passed" and fn in function_notes:
            diagnosis = f"{diagnosis} ({function_notes[fn]})"
        section = reread_for(chapter, fn, first.reread if first is not None else None, edition)
        if section is not None and status != "passed":
            links.append(section)
        results.append(FunctionResult(fn, status, diagnosis, section.title() if section else "",
                                      section.url if section else ""))
    return Report(chapter, results, list(notes or []), book_links.missing_edition_note(links, edition))


# ----------------------------------------------------------------------------- the subprocess


def _worker() -> None:
    """Child process: read {"cwd", "cells", "tests"} as JSON on stdin, write one JSON line per step.

    The learner's prints go to /dev/null (fd 1 is redirected) so they cannot corrupt the protocol.
    """
    spec = json.loads(sys.stdin.read())
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process

    def send(**msg):
        msg["t"] = time.monotonic()  # for benchmarks/selfcheck.py: the time after start-up
        msg["cpu"] = time.process_time()  # the same in CPU seconds, which a busy machine inflates less
        proto.write(json.dumps(msg) + "\n")
        proto.flush()

    # Import the heavy modules before the first step, so their import time (seconds on a busy
    # machine) counts against the start-up allowance and not against a cell's timeout.
    import torch

    torch.set_num_threads(1)  # see one_torch_thread: small tests, and a busy machine must not make them slow
    importlib.import_module(f"qkv.checks.{spec['chapter']}")
    if spec.get("cwd"):
        os.chdir(spec["cwd"])
        sys.path.insert(0, spec["cwd"])
    ns: dict = {"__name__": "__main__"}
    runner = CellRunner(ns)  # magics behave as in JupyterLab and in the grader's sandbox
    for cid, source in spec["cells"]:
        send(kind="start", id=cid)
        try:
            notes = runner.run(source, f"<{cid}>")
            send(kind="cell", id=cid, error="", notes=notes)
        except BaseException as exc:  # noqa: BLE001 - a learner cell may raise anything, even SystemExit
            send(kind="cell", id=cid, error=f"{type(exc).__name__}: {exc}")
    for tid, function, source in spec["tests"]:
        send(kind="start", id=tid)
        for verdict in run_tests(ns, [(tid, function, source)]):
            send(kind="test", id=tid, function=verdict.function, status=verdict.status,
                 diagnosis=verdict.diagnosis, reread=verdict.reread)
    send(kind="done")


def _run_child(chapter: str, cells, tests, cwd: Path, step_timeout: float) -> tuple[list[dict], str | None, str]:
    """Run the worker; return its messages, the id of the step that hung or crashed the
    process (None when all finished) and what happened to it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("MPLBACKEND", "Agg")
    proc = subprocess.Popen([sys.executable, "-m", "qkv.selfcheck", "--worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=str(cwd))
    assert proc.stdin and proc.stdout
    proc.stdin.write(json.dumps({"chapter": chapter, "cwd": str(cwd), "cells": cells, "tests": tests}).encode())
    proc.stdin.close()
    messages: list[dict] = []
    buf = b""
    current: str | None = "start-up"
    deadline = time.monotonic() + max(step_timeout, 120)  # start-up imports torch: slow on a busy machine
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return messages, current, f"did not finish within {step_timeout:g} s (an infinite loop?)"
            ready, _, _ = select.select([proc.stdout], [], [], left)
            if not ready:
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:  # the child exited (or crashed: os._exit, segfault)
                proc.wait()
                finished = bool(messages) and messages[-1]["kind"] == "done"
                return messages, (None if finished else current), "ended the checker's process (exit() or a crash?)"
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                msg = json.loads(line)
                messages.append(msg)
                if msg["kind"] == "start":
                    current, deadline = msg["id"], time.monotonic() + step_timeout
                elif msg["kind"] == "done":
                    current = None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def find_notebook(chapter: str, path: Path) -> Path:
    """The learner's notebook for ``chapter`` at ``path``: the file itself, or in a folder
    ``<ch>.ipynb``, ``<ch>/<ch>.ipynb`` or ``exercises/<ch>/<ch>.ipynb``, else the folder's only
    notebook. Raises FileNotFoundError saying what was looked for and what to pass instead."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no notebook at {path}; pass the path of your copy: "
                                f"qkv check {chapter} path/to/{chapter}.ipynb")
    if not path.is_dir():
        return path
    name = f"{chapter}.ipynb"
    for candidate in (path / name, path / chapter / name, path / "exercises" / chapter / name):
        if candidate.is_file():
            return candidate
    others = sorted(p for p in path.glob("*.ipynb") if p.is_file())
    if len(others) == 1:
        return others[0]
    found = f" (it holds {', '.join(p.name for p in others)})" if others else ""
    raise FileNotFoundError(f"no {name} in the folder {path}{found}; pass the notebook itself: "
                            f"qkv check {chapter} {path / name}")


def check_notebook(chapter: str, notebook: Path, *, step_timeout: float = DEFAULT_STEP_TIMEOUT,
                   edition: str = "en") -> Report:
    """Load the learner's ``notebook`` (a file, or a folder holding it: :func:`find_notebook`) in a
    subprocess and run ``chapter``'s visible tests there. Sections to reread link into ``edition``."""
    chapter_info(chapter)  # KeyError listing the valid slugs
    notebook = find_notebook(chapter, Path(notebook))
    try:
        nb = read_notebook(notebook)
    except Exception as exc:  # a hand-edited notebook may not be valid JSON
        raise ValueError(f"cannot read {notebook} as a notebook ({exc}); restore it from a backup "
                         "or re-copy it from exercises/") from exc
    visible = visible_tests(chapter, nb)
    cells = learner_code_cells(nb)
    tests = list(visible.tests)
    notes: list[str] = []
    function_notes: dict[str, str] = {}
    hung_verdicts: list[TestVerdict] = []
    skip: set[str] = set()
    # Every attempt reruns all cells and tests but the ones that hung before: a later test may
    # need what an earlier one defined (`check` is imported in the first test cell).
    for _ in range(MAX_RERUNS + 1):
        verdicts = list(hung_verdicts)
        run_cells = [c for c in cells if c[0] not in skip]
        run_tests_ = [t for t in tests if t[0] not in skip]
        messages, hung, why = _run_child(chapter, run_cells, run_tests_, notebook.parent.resolve(), step_timeout)
        for m in messages:
            for text in m.get("notes", []) if m["kind"] == "cell" else []:
                if f"{m['id']}: {text}" not in notes:
                    notes.append(f"{m['id']}: {text}")
            if m["kind"] == "cell" and m["error"]:
                note = f"{m['id']} raised {m['error']}"
                if m["id"] in visible.functions:
                    function_notes[m["id"]] = f"its cell raised {m['error']}"
                if note not in notes:
                    notes.append(note)
            elif m["kind"] == "test":
                reread = m.get("reread")
                verdicts.append(TestVerdict(m["id"], m["function"], m["status"], m["diagnosis"],
                                            tuple(reread) if reread else None))
        if hung is None:
            break
        if hung == "start-up":
            notes.append("the checker's process failed to start (is torch installed in this Python?)")
            break
        skip.add(hung)
        test_owner = {t[0]: t[1] for t in tests}
        if hung in test_owner:
            hung_verdicts.append(TestVerdict(hung, test_owner[hung], "failing", f"{hung} {why}"))
        else:
            notes.append(f"{hung} {why}; it was skipped")
            if hung in visible.functions:
                function_notes[hung] = f"its cell {why}"
    hung_ids = {h[0] for h in hung_verdicts}
    verdicts = hung_verdicts + [v for v in verdicts if v[0] not in hung_ids]
    return aggregate(chapter, visible.functions, verdicts, notes, function_notes, edition)


def default_notebook(chapter: str, cwd: Path | None = None) -> Path:
    """The learner's notebook for ``chapter``: ``exercises/<ch>/<ch>.ipynb`` (or ``<ch>/<ch>.ipynb``,
    ``<ch>.ipynb``) under the current folder, else the repository's released exercise."""
    cwd = Path.cwd() if cwd is None else cwd
    name = f"{chapter}.ipynb"
    for candidate in (cwd / "exercises" / chapter / name, cwd / chapter / name, cwd / name):
        if candidate.exists():
            return candidate
    return REPO / "exercises" / chapter / name


# ----------------------------------------------------------------------------- inside a notebook


def _kernel_namespace() -> dict:
    """The learner's namespace: IPython's user namespace in a kernel, else the globals of the
    first caller outside the qkv package (``qkv.check`` is called through a wrapper)."""
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        shell = None
    if shell is not None:
        return shell.user_ns
    frame = inspect.currentframe()
    while frame is not None and str(frame.f_globals.get("__name__", "")).split(".")[0] == "qkv":
        frame = frame.f_back
    return frame.f_globals if frame is not None else {}


def infer_chapter(ns: dict) -> str:
    """The chapter of the running notebook: its path (``__session__``, set by ipykernel from
    JupyterLab), the working folder, or else the chapter whose graded functions are defined."""
    slugs = [c.slug for c in CHAPTERS]
    for hint in (ns.get("__session__"), os.environ.get("JPY_SESSION_NAME"), str(Path.cwd() / "_")):
        if hint:
            p = Path(str(hint))
            for part in (p.stem, p.parent.name):
                if part in slugs:
                    return part
    scores = {s: sum(callable(ns.get(f)) for f in checks_constant(s, "REREAD")) for s in slugs}
    best = max(scores, key=lambda s: scores[s])
    if scores[best] == 0:
        raise ValueError("cannot tell which chapter this is: pass it, for example qkv.check(\"attention\")")
    return best


def check_namespace(chapter: str, ns: dict, *, step_timeout: float | None = DEFAULT_STEP_TIMEOUT,
                    edition: str = "en") -> Report:
    """Run ``chapter``'s visible tests against the functions in ``ns`` (not modified: the tests
    run in a copy, so their variables do not overwrite the learner's)."""
    chapter_info(chapter)
    learner_nb = None
    session = ns.get("__session__") or os.environ.get("JPY_SESSION_NAME")
    if session and Path(session).suffix == ".ipynb" and Path(session).exists():
        learner_nb = read_notebook(Path(session))
    visible = visible_tests(chapter, learner_nb)
    with one_torch_thread():
        verdicts = list(run_tests(dict(ns), visible.tests, step_timeout))
    notes = []
    missing = [f for f in visible.functions if not callable(ns.get(f))]
    if missing:
        notes.append(f"not defined in this kernel: {', '.join(missing)} (run their cells first)")
    return aggregate(chapter, visible.functions, verdicts, notes, edition=edition)


def check(chapter: str | None = None, notebook: str | os.PathLike | None = None, *,
          step_timeout: float | None = DEFAULT_STEP_TIMEOUT, lang: str | None = None) -> Report:
    """Check your functions against the chapter's visible tests and show the table.

    In an exercise notebook, ``qkv.check()`` checks the functions defined in the kernel right
    now (the chapter is inferred, or pass it: ``qkv.check("attention")``). With ``notebook`` (the
    file, or the folder holding it), it checks that saved notebook in a subprocess instead, like
    ``qkv check CHAPTER NOTEBOOK``. The sections to reread link into the book's edition for
    ``lang`` (``"zh_CN"``, ``"en"``; default: from the locale, see :mod:`qkv.book_links`).
    Returns the :class:`Report` (displayed as HTML in Jupyter, as text elsewhere).
    """
    edition = book_links.edition_of(lang)
    if notebook is not None:
        if chapter is None:
            chapter = Path(notebook).stem
        return _show(check_notebook(chapter, Path(notebook), step_timeout=step_timeout or DEFAULT_STEP_TIMEOUT,
                                    edition=edition))
    ns = _kernel_namespace()
    return _show(check_namespace(chapter or infer_chapter(ns), ns, step_timeout=step_timeout, edition=edition))


class _Shown(Report):
    """A Report already displayed by :func:`check`: Jupyter must not show it a second time."""

    def __repr__(self) -> str:
        return f"<{self.summary()}>"

    def _ipython_display_(self) -> None:  # IPython calls this instead of any other repr
        pass


def _show(report: Report) -> Report:
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        shell = None
    if shell is not None and type(shell).__name__ == "ZMQInteractiveShell":
        from IPython.display import HTML, display

        display(HTML(report._repr_html_()))
    else:
        print(report.to_text())
    return _Shown(report.chapter, report.results, report.notes, report.book_note)


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    _worker()
