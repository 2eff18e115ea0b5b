"""Grading as an ordinary user (#10): the sandbox then lives in a user namespace where only that
user's uid exists. Scores must be exactly those of a root run, the isolation of one submission
from the next must hold all the same, and where no sandbox is possible the grader refuses in one line."""

from __future__ import annotations

import csv
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest

import unprivileged
from notebook_tools import REPO, learner_notebook
from test_sandbox import _mount_parents_in_tmp

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("grading"),
              pytest.mark.skipif(os.geteuid() != 0, reason="creating a user needs root")]

RIGHT = {"softmax": "reference", "scaled_dot_product_attention": "reference", "additive_attention": "reference"}
NO_SCALE = ("def scaled_dot_product_attention(q, k, v, mask=None):\n"
            "    w = softmax(q @ k.transpose(-2, -1), dim=-1)\n    return w @ v, w")
CLASS = {
    "ada": RIGHT,                                                                          # 11
    "ben": {"softmax": "reference", "scaled_dot_product_attention": NO_SCALE},             # softmax only: 3
    "cy": {**RIGHT, "additive_attention": "def additive_attention(:\n    pass"},           # 11 - 3
    "gus": {},                                                                             # 0
}
EXPECTED = {"ada": (11.0, "graded"), "ben": (3.0, "graded"), "cy": (8.0, "graded"), "gus": (0.0, "graded")}


@pytest.fixture(scope="module")
def user():
    created = unprivileged.create_user()
    yield created
    unprivileged.delete_user(created)


def _class(folder: Path) -> Path:
    for student, answers in CLASS.items():
        (folder / student).mkdir(parents=True)
        nbformat.write(learner_notebook("attention", answers), folder / student / "attention.ipynb")
    return folder


def _rows(out: Path) -> dict[str, tuple[float, str]]:
    return {r["student_id"]: (float(r["score"]), r["status"]) for r in csv.DictReader(open(out / "grades.csv"))}


def _grade_argv(subs: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "autograder", "grade", "attention", str(subs), "--out", str(out), "--quiet",
            "--workers", "2"]


def test_an_ordinary_user_grades_exactly_as_root(user, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    subs = _class(home / "subs")
    unprivileged.give(user, home)
    as_user = unprivileged.run_as(user, _grade_argv(subs, home / "out"), home=home)
    assert as_user.returncode == 0, as_user.stderr[-3000:]
    as_root = subprocess.run(_grade_argv(subs, tmp_path / "root-out"), capture_output=True, text=True, timeout=900)
    assert as_root.returncode == 0, as_root.stderr[-3000:]
    assert _rows(home / "out") == EXPECTED
    assert _rows(tmp_path / "root-out") == EXPECTED
    assert (home / "out" / "course" / "gradebook.db").stat().st_uid == user.pw_uid  # it really ran as them


PROBE = textwrap.dedent('''
    import json, subprocess, sys, torch
    sys.path.insert(0, {tests!r})
    from autograder.sandbox import ChildDied, Limits, Sandbox, platform_mode
    import test_sandbox as t

    limits = Limits(cell_seconds=3, call_seconds=3)
    out = {{"mode": platform_mode()}}
    with Sandbox(limits) as sb:
        t._run(sb, t.LEAVE_TRACES)
        child = sb.fork()
        try:
            child.load([{{"id": "attack", "source": t.TAKEOVER}}], 3)
        except ChildDied:
            pass
        child.end()
        out["alive"] = sb.alive
        out["traces"] = t._run(sb, t.INSPECT, "traces")[1]
        # Learner code cannot make raw system calls (ctypes is refused in a learner process), so
        # the filter every learner process runs under (seccomp == "2" above) is probed as
        # test_sandbox does, in a plain process of this ordinary user, who could unshare otherwise.
        from autograder.seccomp_filter import program
        probe = subprocess.run([sys.executable, "-c", t.KERNEL, program().hex()], capture_output=True, text=True,
                               timeout=60)
        out["kernel"] = json.loads(probe.stdout) if probe.returncode == 0 else probe.stderr
        out["honest"] = t._run(sb, "def f(x):\\n    return x + 1", "f", (torch.zeros(2),))[1].tolist()
    print(json.dumps(out))
''')


def test_isolation_holds_for_an_ordinary_user(user, tmp_path):
    """The same attacks as tests/test_sandbox.py, in a sandbox where the learner process has the
    zygote's own uid: the pid namespace, no capabilities and the seccomp filter must hold."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "probe.py").write_text(PROBE.format(tests=str(REPO / "tests")))
    unprivileged.give(user, home)
    proc = unprivileged.run_as(user, [sys.executable, str(home / "probe.py")], home=home,
                               env={"PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["mode"] == "user" and out["alive"] and out["honest"] == [1.0, 1.0]
    tmp, shm, others, fds, uid, pid, ppid, cap_eff, no_new_privs, seccomp = out["traces"]
    # A checkout or venv under /tmp is mounted read-only in the learner's /tmp too (sandbox.command).
    assert set(tmp) == {"learner-output.log"} | _mount_parents_in_tmp()
    assert shm == [] and others == [] and (pid, ppid) == (1, 0)
    assert uid == user.pw_uid and cap_eff == "0000000000000000" and no_new_privs == "1" and seccomp == "2"
    kernel = out["kernel"]
    assert all(v == "EPERM" for k, v in kernel.items() if k not in ("threads", "fork", "clone3")), kernel
    assert kernel["clone3"] == "ENOSYS" and kernel["threads"] == kernel["fork"] == "ok"


FAKE_BWRAP = "#!/bin/sh\necho 'bwrap: No permissions to create a new namespace' >&2\nexit 1\n"


@pytest.mark.parametrize("as_root", [False, True])
def test_no_sandbox_possible_is_refused_in_one_line(user, tmp_path, as_root):
    """A machine where bubblewrap cannot make namespaces (a container with a default seccomp
    profile): nothing is graded, exit 2, one line that names the fix."""
    home = tmp_path / "home"
    (home / "bin").mkdir(parents=True)
    fake = home / "bin" / "bwrap"
    fake.write_text(FAKE_BWRAP)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    subs = _class(home / "subs")
    path = f"{home / 'bin'}:{Path(sys.prefix) / 'bin'}:/usr/bin:/bin"
    if as_root:
        proc = subprocess.run(_grade_argv(subs, home / "out"), capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PATH": path})
        fix = "give it CAP_SYS_ADMIN"
    else:
        unprivileged.give(user, home)
        proc = unprivileged.run_as(user, _grade_argv(subs, home / "out"), home=home, env={"PATH": path})
        fix = "grade as root, or allow them"
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "cannot sandbox learner code" in lines[0] and fix in lines[0], proc.stderr
    assert "No permissions to create a new namespace" in lines[0]
    assert not (home / "out" / "grades.csv").exists()
