"""The one way learner code is run: a bubblewrap sandbox around sandbox_worker.py.

What the sandbox guarantees (each is tested by an attack in tests/test_attacks.py):

- no network: a new, empty network namespace;
- the course folder is invisible: the root is an empty tmpfs and only the system,
  the Python installation, the venv and the public ``qkv`` library are mounted,
  read-only; solutions, the gradebook and other submissions are simply not there;
- an empty scratch ``/tmp`` (tmpfs, size-capped) is the only writable place;
- an unprivileged user (a uid in SANDBOX_UIDS, no capabilities) with limits on address space,
  CPU seconds, file size (so output bytes) and processes;
- every descendant dies with it: a new pid namespace whose init is bubblewrap,
  and the whole process group is killed on close.

Speed: importing torch costs about a second, more than grading a notebook. In zygote
mode the sandboxed worker imports it once and forks a fresh child per submission. The
zygote keeps root inside the sandbox with only the setuid, setgid, kill, dac_override and
fowner capabilities (no mount, no network, read-only files all the same); each child
drops to the unprivileged uid before any learner code runs, so it can neither signal nor
ptrace the zygote. After each child the zygote kills every process left in the namespace
and wipes /tmp. A sandbox that hangs or leaves a survivor is discarded, not reused.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from autograder import wire
from autograder.course import REPO_ROOT

HEADER_SIZE = 8
WORKER = Path(__file__).with_name("sandbox_worker.py")
WIRE = Path(__file__).with_name("wire.py")
INSIDE = "/opt/qkv-sandbox"
# Sandboxes run as an unprivileged uid with no passwd entry. Each grading worker gets its own
# uid, because the process limit (RLIMIT_NPROC) counts per uid: a submission that forks up to
# the limit must not leave a sandbox running in parallel unable to start.
SANDBOX_UIDS = range(61000, 62000)


def sandbox_uid() -> int:
    return SANDBOX_UIDS.start + os.getpid() % len(SANDBOX_UIDS)


@dataclass(frozen=True)
class Limits:
    memory_bytes: int = 4 * 2**30  # address space; torch alone maps about 1.5 GiB
    cpu_seconds: int = 120  # the whole session
    output_bytes: int = 8 * 2**20  # the learner's stdout/stderr log file
    scratch_bytes: int = 64 * 2**20
    processes: int = 512  # counts threads too
    cell_seconds: float = 10.0
    call_seconds: float = 10.0
    start_seconds: float = 60.0


class SandboxError(RuntimeError):
    """The sandboxed process died, hung or spoke nonsense; the message says which."""


class ChildDied(SandboxError):
    """The forked child serving one submission ended; the sandbox itself is still usable."""


def bwrap_available() -> bool:
    return shutil.which("bwrap") is not None and shutil.which("setpriv") is not None


def _ro_binds(paths: list[Path]) -> list[str]:
    """--ro-bind arguments for ``paths``, creating each parent directory world-readable first."""
    args, made = [], set()
    for path in paths:
        path = Path(path)
        for parent in reversed(path.parents):
            p = str(parent)
            if p == "/" or p in made:
                continue
            made.add(p)
            args += ["--perms", "0755", "--dir", p]
        args += ["--ro-bind", str(path), str(path)]
        made.add(str(path))
    return args


def command(limits: Limits, zygote: bool = False) -> list[str]:
    """The full argv that starts sandbox_worker.py inside the sandbox."""
    python_home = Path(sys.base_prefix).resolve()
    venv = Path(sys.prefix).resolve()
    system = [Path(p) for p in ("/usr", "/etc") if Path(p).exists()]
    mounts = system + [python_home]
    if venv != python_home:
        mounts.append(venv)
    mounts.append(REPO_ROOT / "qkv")  # the public course library (importing it in an answer is banned, not hidden)
    uid = sandbox_uid()
    argv = ["bwrap"]
    for link in ("lib", "lib64", "bin", "sbin"):
        target = Path("/") / link
        if target.is_symlink():
            argv += ["--symlink", os.readlink(target), str(target)]
        elif target.exists():
            mounts.insert(0, target)
    # The scratch /tmp first: a checkout or venv that lives under /tmp is then mounted on top
    # of it (mounted after, it would be hidden by the tmpfs).
    argv += ["--size", str(limits.scratch_bytes), "--perms", "1777", "--tmpfs", "/tmp"]
    argv += _ro_binds(mounts)
    argv += ["--perms", "0755", "--dir", "/opt", "--perms", "0755", "--dir", INSIDE,
             "--ro-bind", str(WORKER), f"{INSIDE}/sandbox_worker.py",
             "--ro-bind", str(WIRE), f"{INSIDE}/wire.py",
             "--proc", "/proc", "--dev", "/dev",
             "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
             "--die-with-parent", "--new-session", "--chdir", "/tmp",
             "--setenv", "HOME", "/tmp", "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
             "--setenv", "MPLBACKEND", "Agg", "--setenv", "OMP_NUM_THREADS", "1",
             "--unsetenv", "JPY_PARENT_PID",
             "--"]
    if zygote:
        # The zygote stays root inside the sandbox, with only the capabilities it needs to drop
        # each child to the unprivileged uid and to kill what a child leaves behind. A child
        # therefore cannot signal or ptrace it (another uid), and has no capabilities at all.
        # (dac_override and fowner: to delete whatever a child left in /tmp, whatever its permissions.)
        argv += ["setpriv", "--inh-caps=-all", "--bounding-set=-all,+setuid,+setgid,+kill,+dac_override,+fowner",
                 "--no-new-privs"]
    else:
        argv += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                 "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
    argv += ["prlimit", f"--as={limits.memory_bytes}", f"--cpu={limits.cpu_seconds}",
             f"--fsize={limits.output_bytes}", f"--nproc={limits.processes}", "--core=0",
             "--",
             str(venv / "bin" / "python"), "-I", "-B", f"{INSIDE}/sandbox_worker.py"]
    if zygote:
        argv += ["--zygote", f"--uid={uid}"]
    return argv


class Sandbox:
    """A running sandboxed worker. Use as a context manager; every call has a deadline."""

    def __init__(self, limits: Limits = Limits(), zygote: bool = False):
        self.limits = limits
        self.zygote = zygote
        self.proc: subprocess.Popen | None = None
        self.dead_reason: str | None = None
        self.child_alive = False

    def __enter__(self) -> "Sandbox":
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ")}
        self.proc = subprocess.Popen(command(self.limits, self.zygote), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                                     start_new_session=True)
        self.child_alive = not self.zygote
        return self

    # ---------------------------------------------------------------- zygote mode

    def fork(self) -> None:
        """Zygote mode: start a fresh child (a fork of the warm process) for the next submission."""
        if self.child_alive:
            self.end_child()
        self._write({"op": "fork"})
        self.child_alive = True

    def end_child(self) -> None:
        """Zygote mode: end the current child and wait until the sandbox is clean again."""
        if not self.child_alive:
            return
        self._write({"op": "exit"})
        try:
            self.read(time.monotonic() + 10)
        except ChildDied:
            pass  # the expected "child_exited"

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                self._write({"op": "exit"})
                self.proc.wait(timeout=1)
        except (OSError, subprocess.TimeoutExpired, SandboxError):
            pass
        finally:
            try:  # the process group: bwrap and anything that escaped its session inside
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and self.dead_reason is None

    # ---------------------------------------------------------------- protocol

    def _write(self, message: dict) -> None:
        body = wire.dumps(message)
        try:
            self.proc.stdin.write(len(body).to_bytes(HEADER_SIZE, "big") + body)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._died("the sandboxed process ended unexpectedly") from None

    def _died(self, reason: str) -> SandboxError:
        self.dead_reason = reason
        return SandboxError(reason)

    def _read_exact(self, n: int, deadline: float) -> bytes:
        fd = self.proc.stdout.fileno()
        chunks, remaining = [], n
        while remaining:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._died("timeout")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                code = self.proc.poll()
                raise self._died(_exit_reason(code))
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def read(self, deadline: float) -> dict:
        length = int.from_bytes(self._read_exact(HEADER_SIZE, deadline), "big")
        if length > wire.MAX_MESSAGE_BYTES:
            raise self._died(f"the learner's code sent {length} bytes, over the {wire.MAX_MESSAGE_BYTES}-byte limit")
        try:
            message = wire.loads(self._read_exact(length, deadline))
        except (ValueError, wire.NotPlainData) as exc:
            raise self._died(f"unreadable reply from the sandbox ({exc})") from None
        if self.zygote and message.get("event") == "child_exited":
            self.child_alive = False
            status = message.get("status")
            if not message.get("clean", False):
                self.dead_reason = "a process survived the cleanup between submissions"
            raise ChildDied(_wait_status_reason(status if isinstance(status, int) else -1))
        return message

    def load(self, cells: list[dict], on_event=None) -> tuple[list[dict | None], list[str]]:
        """Execute ``cells`` in order. Returns (per-cell error or None, names of callables defined).

        A cell that hangs past its deadline kills the sandbox: SandboxError names the cell index.
        """
        self._write({"op": "load", "cells": cells, "cell_timeout": self.limits.cell_seconds})
        errors: list[dict | None] = [None] * len(cells)
        current = -1
        start_deadline = time.monotonic() + self.limits.start_seconds  # torch import happens before cell 0
        while True:
            grace = self.limits.cell_seconds + 5
            deadline = start_deadline if current < 0 else time.monotonic() + grace
            try:
                event = self.read(deadline)
            except SandboxError as exc:
                exc.cell_index = current
                raise
            kind = event.get("event")
            if kind == "cell_start":
                current = int(event.get("index", -1))
            elif kind == "cell_done":
                index = int(event.get("index", -1))
                if 0 <= index < len(cells):
                    errors[index] = event.get("error")
            elif kind == "loaded":
                names = [n for n in event.get("functions", []) if isinstance(n, str)]
                return errors, names

    def call(self, name: str, args: tuple, kwargs: dict):
        """Call the learner's ``name``; returns (value, mutated args, mutated kwargs) or raises.

        Raises SandboxError when the process dies or hangs, LearnerException when
        the learner's function raised, and wire.NotPlainData for a non-plain argument.
        """
        self._write({"op": "call", "name": name, "args": wire.encode(list(args)),
                     "kwargs": wire.encode(dict(kwargs)), "timeout": self.limits.call_seconds})
        reply = self.read(time.monotonic() + self.limits.call_seconds + 5)
        if reply.get("event") == "result":
            try:
                return (wire.decode(reply.get("value")), wire.decode(reply.get("args", {"__dict__": []})),
                        wire.decode(reply.get("kwargs", {"__dict__": []})))
            except (wire.NotPlainData, ValueError, TypeError) as exc:
                raise LearnerException("NotPlainData", f"returned data the grader cannot read ({exc})") from None
        bases = [b for b in reply.get("bases", []) if isinstance(b, str)] if isinstance(reply.get("bases"), list) else []
        raise LearnerException(str(reply.get("type", "Error")), str(reply.get("message", "")), bases)


class LearnerException(Exception):
    """The learner's function raised ``type_name``: ``message`` (inside the sandbox)."""

    def __init__(self, type_name: str, message: str, bases: list[str] | None = None):
        super().__init__(f"{type_name}: {message}")
        self.type_name, self.message = type_name, message
        self.bases = bases or [type_name]  # built-in classes in its hierarchy, nearest first


def _wait_status_reason(status: int) -> str:
    """Describe an os.waitpid status as _exit_reason does for a return code."""
    if status < 0:
        return "the process ended"
    if os.WIFSIGNALED(status):
        return _exit_reason(-os.WTERMSIG(status))
    return _exit_reason(os.WEXITSTATUS(status))


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "the sandboxed process closed its output"
    if code < 0:
        sig = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        return f"the process was killed by {sig}"
    if code == 128 + signal.SIGXCPU:
        return "the CPU-time limit was exceeded"
    return f"the process exited with status {code} (os._exit or a crash?)"
