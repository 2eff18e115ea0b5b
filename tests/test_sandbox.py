"""The zygote sandbox between two submissions: nothing of the first is left for the second."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from autograder.course import REPO_ROOT
from autograder.sandbox import Limits, Sandbox


def _mount_parents_in_tmp() -> set[str]:
    """Top-level /tmp entries that hold read-only mounts (a checkout or venv living under /tmp)."""
    names = set()
    for path in (Path(sys.prefix), Path(sys.base_prefix), REPO_ROOT):
        path = path.resolve()
        if path.parts[:2] == ("/", "tmp") and len(path.parts) > 2:
            names.add(path.parts[2])
    return names

pytestmark = [pytest.mark.slow]

LEAVE_TRACES = '''
import os, time
os.makedirs("/tmp/leftover/inner")
open("/tmp/leftover/inner/secret.txt", "w").write("answers")
os.chmod("/tmp/leftover/inner", 0)
os.chmod("/tmp/leftover", 0)
open("/tmp/flat.txt", "w").write("x")
if os.fork() == 0:
    os.setsid()
    time.sleep(300)
    os._exit(0)
'''

INSPECT = '''
import os
def traces():
    others = []
    for p in os.listdir("/proc"):
        if p.isdigit() and int(p) not in (1, os.getpid(), os.getppid()):
            others.append(int(p))
    return sorted(os.listdir("/tmp")), others, os.getuid()
'''


def test_second_submission_finds_a_clean_sandbox():
    with Sandbox(Limits(), zygote=True) as sandbox:
        sandbox.fork()
        errors, _ = sandbox.load([{"id": "first", "source": LEAVE_TRACES}])
        assert errors == [None]
        sandbox.end_child()
        sandbox.fork()
        errors, names = sandbox.load([{"id": "second", "source": INSPECT}])
        assert errors == [None] and "traces" in names
        tmp_entries, others, uid = sandbox.call("traces", (), {})[0]
        # only the second child's own log (and the folders holding read-only mounts, if any)
        assert set(tmp_entries) == {"learner-output.log"} | _mount_parents_in_tmp()
        assert others == []  # the first child's detached sleeper is gone
        assert uid != 0


def test_a_child_cannot_kill_the_zygote():
    with Sandbox(Limits(), zygote=True) as sandbox:
        sandbox.fork()
        errors, _ = sandbox.load([
            {"id": "parent", "source": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)"},
            {"id": "everyone", "source": "import os, signal\nos.kill(-1, signal.SIGKILL)"},
        ])
        assert "PermissionError" in errors[0]["type"]  # another uid, no capabilities
        sandbox.end_child()
        sandbox.fork()
        _, names = sandbox.load([{"id": "f", "source": "def f(x):\n    return x * 2"}])
        assert sandbox.call("f", (torch.ones(2),), {})[0].tolist() == [2.0, 2.0]
