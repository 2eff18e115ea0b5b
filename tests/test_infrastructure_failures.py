"""Our failure is never a learner's score (#10, threat model guarantee 9): a sandbox that dies under
a submission for a reason that is not the learner's code makes that student an ``error`` (no
score, no cached verdict), and the same command run again grades them."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest

from notebook_tools import learner_notebook

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("grading")]

RIGHT = {"softmax": "reference", "scaled_dot_product_attention": "reference", "additive_attention": "reference"}


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _parent(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
    except OSError:
        return "0"


def _descends_from(pid: str, ancestor: int) -> bool:
    while pid not in ("0", "1"):
        if pid == str(ancestor):
            return True
        pid = _parent(pid)
    return False


def _kill_sandbox_under_the_slow_student(stop: threading.Event, killed: list[str], run: list) -> None:
    """Like the machine's OOM killer or an administrator: while the slow student's cell runs (a
    learner process of this run asleep in ``time.sleep``; no other submission sleeps), kill that
    student's whole sandbox from outside. Learner code cannot rename its process (no ctypes, and
    /proc/self/comm is not writable there), so the sleeping process is found by where it waits."""
    asleep_since: dict[str, float] = {}
    while not stop.is_set() and not killed:
        for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
            try:
                if Path(f"/proc/{pid}/wchan").read_text().strip() != "hrtimer_nanosleep":
                    asleep_since.pop(pid, None)
                    continue
            except OSError:
                continue
            if "sandbox_worker.py" not in _cmdline(pid) or not run or not _descends_from(pid, run[0].pid):
                continue
            if time.monotonic() - asleep_since.setdefault(pid, time.monotonic()) < 1.5:
                continue  # a short pause of the grader's own machinery; the slow cell sleeps 8 s
            outer = pid
            while outer != "0" and not _cmdline(outer).startswith("bwrap"):
                outer = _parent(outer)
            while _cmdline(_parent(outer)).startswith("bwrap"):  # the bwrap the grader started
                outer = _parent(outer)
            os.killpg(int(outer), signal.SIGKILL)
            killed.append(pid)
            break
        time.sleep(0.05)


def _rows(out: Path) -> dict[str, dict]:
    return {r["student_id"]: r for r in csv.DictReader(open(out / "grades.csv"))}


def test_a_sandbox_killed_under_a_student_is_an_error_and_a_rerun_grades_them(tmp_path):
    subs = tmp_path / "subs"
    slow = learner_notebook("attention", RIGHT)
    slow.cells.insert(2, nbformat.v4.new_code_cell(
        "import time\ntime.sleep(8)"))
    for student, nb in {"ada": learner_notebook("attention", RIGHT), "bea": slow,
                        "cal": learner_notebook("attention", {"softmax": "reference"})}.items():
        (subs / student).mkdir(parents=True)
        nbformat.write(nb, subs / student / "attention.ipynb")
    argv = [sys.executable, "-m", "autograder", "grade", "attention", str(subs), "--out", str(tmp_path / "out"),
            "--quiet", "--workers", "1", "--timeout", "10"]

    stop, killed, run = threading.Event(), [], []
    watcher = threading.Thread(target=_kill_sandbox_under_the_slow_student, args=(stop, killed, run), daemon=True)
    watcher.start()
    try:
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
            run.append(proc)
            stdout, stderr = proc.communicate(timeout=900)
        first = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
    finally:
        stop.set()
        watcher.join()
    assert killed, "the sandbox was never killed: the test proves nothing"
    assert first.returncode == 0, first.stderr[-3000:]
    rows = _rows(tmp_path / "out")
    assert (rows["bea"]["status"], rows["bea"]["score"]) == ("error", "0")
    assert "sandbox failed" in rows["bea"]["message"] and "rerun" in rows["bea"]["message"]
    assert (rows["ada"]["status"], rows["ada"]["score"]) == ("graded", "11")  # before and after: unaffected
    assert (rows["cal"]["status"], rows["cal"]["score"]) == ("graded", "3")
    assert not (tmp_path / "out" / "course" / "verdicts" / "bea.json").exists()  # nothing cached for her

    second = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    rows = _rows(tmp_path / "out")
    assert (rows["bea"]["status"], rows["bea"]["score"]) == ("graded", "11")
    assert (rows["ada"]["score"], rows["cal"]["score"]) == ("11", "3")
