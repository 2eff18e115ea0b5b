"""The one way learner code is run: a bubblewrap sandbox around sandbox_worker.py.

What the sandbox guarantees (each is tested by an attack in tests/test_attacks.py and
tests/test_sandbox.py):

- no network: a new, empty network namespace;
- the course folder is invisible: the root is an empty, read-only tmpfs and only the system,
  the Python installation and the venv are mounted, read-only; solutions, the gradebook, other
  submissions and the course library ``qkv`` (whose functions answer the exercises) are simply
  not there;
- each submission runs in a **learner process** of its own, pid 1 of a fresh pid namespace, with
  its own empty size-capped ``/tmp`` and ``/dev/shm``, its own IPC namespace, no capabilities,
  no_new_privs and a seccomp filter (``seccomp_filter.py``) that refuses running programs,
  namespaces, mounts, ptrace, eBPF, io_uring, keyrings, System V IPC and the like; limits on
  address space, CPU seconds, file size (so output bytes) and processes; everything it starts
  dies with it;
- the learner process cannot reach the sandbox's control channel: it talks to the grader on a
  socket made for it alone (handed to the grader by the zygote), and whether the sandbox is
  reused is decided by the zygote's own checks, reported on a channel no learner process holds;
- deadlines are fixed when a request is sent; a per-submission budget bounds the learner's total time.

Two ways to run, chosen at start-up (``platform_mode``):

- **root**: bubblewrap runs as root; the zygote keeps only the capabilities it needs to set up
  each learner process (setuid, setgid, setpcap, kill, sys_admin) and each learner process becomes
  an unprivileged uid (one per grading worker, ``SANDBOX_UIDS``) before any learner code runs;
- **user** (an ordinary user, where unprivileged user namespaces work): bubblewrap makes a user
  namespace in which only the instructor's own uid is mapped, and forbids nested ones
  (``--disable-userns``); the zygote keeps CAP_SYS_ADMIN *inside that namespace* only. The learner
  process has the zygote's uid, so what keeps it from the zygote is the pid namespace (it cannot
  name the zygote to signal or ptrace it), PR_SET_DUMPABLE=0 on the zygote, no capabilities and
  the seccomp filter. Its processes count against the instructor's uid (see book/instructors.md).

Where neither works, ``platform_mode`` raises SandboxUnavailable with one line naming the fix.
"""

from __future__ import annotations

import base64
import functools
import getpass
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from autograder import seccomp_filter, wire
from autograder.course import REPO_ROOT

WORKER = Path(__file__).with_name("sandbox_worker.py")
WIRE = Path(__file__).with_name("wire.py")
CONTRACT = REPO_ROOT / "qkv" / "notebook_contract.py"
INSIDE = "/opt/qkv-sandbox"
# In root mode learner processes run as an unprivileged uid with no passwd entry. Each grading
# worker gets its own uid, because the process limit (RLIMIT_NPROC) counts per uid: a submission
# that forks up to the limit must not leave a sandbox running in parallel unable to start.
SANDBOX_UIDS = range(61000, 62000)
GRACE_SECONDS = 5.0  # beyond a learner's own deadline, for the reply to arrive on a busy machine
CONTROL_SECONDS = 30.0  # the zygote's answers (fork, reap) never take long; it runs only our code
ROOT_CAPS = "+setuid,+setgid,+setpcap,+kill,+sys_admin"


def sandbox_uid() -> int:
    return SANDBOX_UIDS.start + os.getpid() % len(SANDBOX_UIDS)


@dataclass(frozen=True)
class Limits:
    memory_bytes: int = 4 * 2**30  # address space; torch alone maps about 1.5 GiB
    cpu_seconds: int = 120  # per process
    output_bytes: int = 8 * 2**20  # the learner's stdout/stderr log file, and any file it writes
    scratch_bytes: int = 64 * 2**20  # its /tmp
    shm_bytes: int = 16 * 2**20  # its /dev/shm (POSIX shared memory, semaphores)
    processes: int = 512  # counts threads too
    cell_seconds: float = 10.0
    call_seconds: float = 10.0
    start_seconds: float = 60.0  # the sandbox's start (it imports torch once)
    submission_seconds: float = 120.0  # a learner's total wall-clock time, loads and calls together


# ----------------------------------------------------------------------------- errors


class InfrastructureError(RuntimeError):
    """Our failure, not the learner's: the sandbox could not start, or died or misbehaved on a
    channel no learner process holds. Never turned into a score: the student becomes an ``error``
    and is graded on a rerun."""


class SandboxUnavailable(InfrastructureError):
    """No sandbox can run on this machine at all; the message is one line naming the fix."""


class SandboxError(RuntimeError):
    """The learner's process died, hung or sent something unreadable (its own doing)."""

    def __init__(self, message: str, cell_index: int = -1):
        super().__init__(message)
        self.cell_index = cell_index  # the cell being loaded when it happened, -1 outside a load


class ChildDied(SandboxError):
    """The learner process ended (os._exit, a crash, a limit) or broke the protocol."""


class ChildTimeout(SandboxError):
    """The learner process did not answer before its deadline and was killed."""

    def __init__(self, message: str, seconds: float, cell_index: int = -1):
        super().__init__(message, cell_index)
        self.seconds = seconds


class BudgetExceeded(ChildTimeout):
    """The submission's whole time budget ran out."""


class BannedAtRunTime(Exception):
    """The learner's function reached a banned operator or module while the grader called it."""

    def __init__(self, reached: list[str]):
        super().__init__("; ".join(reached))
        self.reached = reached


# The run-time layer's reports, by kind (sandbox_worker.py sends [kind, key] pairs; the words are
# ours). A key the grader did not ask the sandbox to refuse is a forged report, and says so.
# Modules that reach native memory or call native code without an audit event (cffi: the call
# into torch's own CPU kernel, at::cpu::_softmax_out, skipped the refused operator; stop 21).
NATIVE_MODULES = ("_testcapi", "_testinternalcapi", "_ctypes_test", "_testbuffer", "_testmultiphase",
                  "_xxsubinterpreters", "_xxinterpchannels", "_xxtestfuzz", "cffi", "_cffi_backend")
INTROSPECTION_KEYS = frozenset({"gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys._current_frames",
                                "code.__new__", "sys.settrace", "sys.setprofile", "object.__setattr__", "ctypes",
                                "/proc/self/mem", "sys._getframe", "sys._getframemodulename", "object.__getattr__"})
FORGED_REPORT = "sent the grader a report of a banned operation that the grader never asked about (a forged reply?)"


def runtime_label(report, ops: dict[str, str], functions, modules) -> str:
    """The words for one [kind, key] report of the sandbox's run-time layer. ``ops``: aten packet ->
    banned name; ``functions``, ``modules``: what was refused. Learner text never gets through."""
    if not (isinstance(report, list) and len(report) == 2 and all(isinstance(x, str) for x in report)):
        return FORGED_REPORT
    kind, key = report
    if kind in ("op", "load-op") and key in ops:
        return (f"calls {ops[key]} (reached at run time as aten::{key}), which this exercise asks you to implement "
                "yourself")
    if kind == "function" and key in functions:
        return f"calls {key} (reached at run time), which this exercise asks you to implement yourself"
    if kind == "module" and key in modules:
        if key in NATIVE_MODULES:
            return f"imports {key}, which reaches the grader's memory or native code (not allowed)"
        return f"imports {key} at run time, which this exercise does not allow"
    if kind == "introspection" and key in INTROSPECTION_KEYS:
        return f"uses {key}, which is not allowed in the grader's process (it holds the grader's checks)"
    return FORGED_REPORT


class LearnerException(Exception):
    """The learner's function raised ``type_name``: ``message`` (inside the sandbox)."""

    def __init__(self, type_name: str, message: str, bases: list[str] | None = None):
        super().__init__(f"{type_name}: {message}")
        self.type_name, self.message = type_name, message
        self.bases = bases or [type_name]  # built-in classes in its hierarchy, nearest first


# ----------------------------------------------------------------------------- which sandbox


def _probe(argv: list[str]) -> str | None:
    """None when ``argv`` (a tiny bubblewrap run) works, else bubblewrap's complaint."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if proc.returncode == 0:
        return None
    last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
    return last if last.startswith("bwrap") else f"bwrap: {last}"


@functools.lru_cache(maxsize=1)
def platform_mode() -> str:
    """"root" or "user" (see the module docstring); SandboxUnavailable with the fix otherwise."""
    missing = [tool for tool in ("bwrap", "prlimit") + (("setpriv",) if os.geteuid() == 0 else ())
               if shutil.which(tool) is None]
    if missing:
        raise SandboxUnavailable(f"cannot sandbox learner code: {', '.join(missing)} not found; "
                                 "install them (as root: apt-get install bubblewrap util-linux)")
    try:
        seccomp_filter.program()
    except Exception as exc:  # pyseccomp raises OSError/RuntimeError/ImportError depending on what is missing
        raise SandboxUnavailable(f"cannot sandbox learner code: its seccomp filter cannot be built ({exc}); "
                                 "install libseccomp (apt-get install libseccomp2) and pyseccomp") from None
    namespaces = ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--ro-bind", "/", "/", "--proc", "/proc",
                  "--dev", "/dev", "--", "true"]
    if os.geteuid() == 0:
        problem = _probe(["bwrap", *namespaces])
        if problem is None:
            return "root"
        raise SandboxUnavailable(f"cannot sandbox learner code: bubblewrap cannot create namespaces even as root "
                                 f"({problem}); in a container, give it CAP_SYS_ADMIN (e.g. --privileged), "
                                 "or grade on the host. Nothing was graded")
    problem = _probe(["bwrap", "--unshare-user", "--disable-userns", "--cap-add", "CAP_SYS_ADMIN", *namespaces])
    if problem is None:
        return "user"
    raise SandboxUnavailable(f"cannot sandbox learner code: as {getpass.getuser()} (not root) the sandbox needs "
                             f"unprivileged user namespaces, and this machine refuses them ({problem}); grade as "
                             "root, or allow them (sysctl user.max_user_namespaces=10000 "
                             "kernel.unprivileged_userns_clone=1, or a container seccomp profile that permits them). "
                             "Nothing was graded")


def platform_caveats() -> list[str]:
    """One line for each guarantee of grading-threat-model.md that holds here only in a weaker form
    (the grader prints them when it starts, and the report repeats them). Raises SandboxUnavailable
    where no sandbox is possible at all."""
    lines = []
    if platform_mode() == "user":
        lines.append(f"grading as an ordinary user: learner code runs under your uid in a user namespace (kept "
                     "from the grader by namespaces, no capabilities and seccomp, not by another uid); its processes "
                     f"count against your process limit, up to {Limits().processes} per worker")
    if os.uname().machine not in ("x86_64", "aarch64"):
        lines.append(f"on {os.uname().machine}, learner processes drop capabilities by changing uid only (root "
                     "mode); as an ordinary user the sandbox refuses to start")
    return lines


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


def _mounts() -> list[Path]:
    python_home = Path(sys.base_prefix).resolve()
    venv = Path(sys.prefix).resolve()
    mounts = [Path(p) for p in ("/usr", "/etc") if Path(p).exists()] + [python_home]
    if venv != python_home:
        mounts.append(venv)
    # Not the course library (qkv/): the zygote needs only notebook_contract.py, bound alone, and an
    # answer could otherwise run its reference functions without importing it (exec of its source).
    return mounts


def _hidden_site_packages() -> list[str]:
    """The base interpreter's own package folders, when the grader runs from a venv: the venv is
    what learner code may import; the base's folders (a system or pyenv Python may hold scipy,
    whose softmax an answer could call) are covered by an empty, read-only folder."""
    import sysconfig

    if Path(sys.prefix).resolve() == Path(sys.base_prefix).resolve():
        return []
    base = {"base": sys.base_prefix, "platbase": sys.base_prefix}
    found = {sysconfig.get_path(key, vars=base) for key in ("purelib", "platlib")}
    for root in ("/usr/lib", "/usr/local/lib"):
        found.update(str(p) for p in Path(root).glob("python3*/*-packages"))
        found.update(str(p) for p in Path(root).glob("python3/dist-packages"))
    venv = Path(sys.prefix).resolve()
    # A folder the grader itself imports from (a venv made with --system-site-packages) stays.
    on_path = {Path(p).resolve() for p in sys.path if p}
    return sorted(p for p in found if Path(p).is_dir() and venv not in Path(p).resolve().parents
                  and Path(p).resolve() not in on_path)


def _under_tmp(paths: list[Path]) -> list[str]:
    """The mounted paths that live under /tmp: each learner process binds them again in its own /tmp."""
    return [str(p) for p in paths if Path(p).resolve().parts[:2] == ("/", "tmp") and len(Path(p).parts) > 2]


def command(limits: Limits, mode: str, control_fd: int) -> list[str]:
    """The full argv that starts the zygote inside the sandbox."""
    mounts = _mounts()
    argv = ["bwrap"]
    if mode == "user":
        argv += ["--unshare-user", "--disable-userns", "--cap-add", "CAP_SYS_ADMIN"]
    for link in ("lib", "lib64", "bin", "sbin"):
        target = Path("/") / link
        if target.is_symlink():
            argv += ["--symlink", os.readlink(target), str(target)]
        elif target.exists():
            mounts.insert(0, target)
    # The scratch /tmp first: a checkout or venv that lives under /tmp is then mounted on top of
    # it (mounted after, it would be hidden by the tmpfs). The zygote never writes to it.
    argv += ["--size", str(1 * 2**20), "--perms", "0755", "--tmpfs", "/tmp"]
    argv += _ro_binds(mounts)
    for folder in _hidden_site_packages():
        argv += ["--perms", "0555", "--size", "4096", "--tmpfs", folder, "--remount-ro", folder]
    argv += ["--perms", "0755", "--dir", "/opt", "--perms", "0755", "--dir", INSIDE,
             "--perms", "0755", "--dir", f"{INSIDE}/newtmp",
             "--ro-bind", str(WORKER), f"{INSIDE}/sandbox_worker.py",
             "--ro-bind", str(WIRE), f"{INSIDE}/wire.py",
             "--ro-bind", str(CONTRACT), f"{INSIDE}/notebook_contract.py",
             "--proc", "/proc", "--dev", "/dev",
             "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
             "--die-with-parent", "--new-session", "--chdir", "/tmp",
             "--setenv", "HOME", "/tmp", "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
             "--setenv", "MPLBACKEND", "Agg", "--setenv", "OMP_NUM_THREADS", "1",
             "--unsetenv", "JPY_PARENT_PID",
             "--remount-ro", "/", "--remount-ro", "/dev",
             "--"]
    if mode == "root":
        # The zygote stays root inside the sandbox with only what it needs to set up each learner
        # process: namespaces and mounts (sys_admin), becoming the unprivileged uid (setuid, setgid,
        # setpcap for the bounding set) and killing the learner process (kill).
        argv += ["setpriv", "--inh-caps=-all", f"--bounding-set=-all,{ROOT_CAPS}", "--no-new-privs"]
    argv += ["prlimit", f"--as={limits.memory_bytes}", f"--cpu={limits.cpu_seconds}",
             f"--fsize={limits.output_bytes}", f"--nproc={limits.processes}", "--core=0",
             "--",
             str(Path(sys.prefix).resolve() / "bin" / "python"), "-I", "-B", f"{INSIDE}/sandbox_worker.py",
             f"--control-fd={control_fd}"]
    return argv


# ----------------------------------------------------------------------------- framing with deadlines


class _Eof(Exception):
    pass


class _Late(Exception):
    pass


def _recv(sock: socket.socket, n: int, deadline: float, fds: list[int] | None = None) -> bytes:
    """Exactly ``n`` bytes before ``deadline``; descriptors sent along are appended to ``fds``."""
    chunks, remaining = [], n
    while remaining:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Late()
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            continue
        try:
            if fds is not None:
                data, got, _, _ = socket.recv_fds(sock, min(remaining, 1 << 20), 4)
                fds.extend(got)
            else:
                data = sock.recv(min(remaining, 1 << 20))
        except ConnectionError:
            raise _Eof() from None
        if not data:
            raise _Eof()
        chunks.append(data)
        remaining -= len(data)
    return b"".join(chunks)


def _read_frame(sock: socket.socket, deadline: float, fds: list[int] | None = None) -> dict:
    """One message; _Eof, _Late or wire.NotPlainData."""
    length = wire.body_length(_recv(sock, wire.HEADER.size, deadline, fds))
    return wire.loads(_recv(sock, length, deadline, fds))


def wait_status_reason(status: int | None) -> str:
    """Describe an os.waitpid status."""
    if status is None:
        return "the process ended"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU:
            return "the CPU-time limit was exceeded"
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        return f"the process was killed by {name}"
    code = os.WEXITSTATUS(status)
    return f"the process exited with status {code} (os._exit or a crash?)"


# ----------------------------------------------------------------------------- the zygote


class Sandbox:
    """A running zygote. ``fork()`` gives a :class:`Child` for one submission; use as a context manager."""

    def __init__(self, limits: Limits = Limits()):
        self.limits = limits
        self.proc: subprocess.Popen | None = None
        self.control: socket.socket | None = None
        self.broken: str | None = None  # why this sandbox may not be reused
        self.current: Child | None = None
        self._stderr = None

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> Sandbox:
        mode = platform_mode()
        ours, theirs = socket.socketpair()
        self.control = ours
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the sandbox; closed in close()
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ")}
        try:
            self.proc = subprocess.Popen(command(self.limits, mode, theirs.fileno()), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=self._stderr, env=env,
                                         pass_fds=[theirs.fileno()], start_new_session=True)
        except OSError as exc:
            theirs.close()
            raise InfrastructureError(f"the sandbox could not start ({exc})") from None
        theirs.close()
        try:
            paths = _mounts()
            self._send({"op": "init", "uid": sandbox_uid() if mode == "root" else None,
                        "tmp_bytes": self.limits.scratch_bytes, "shm_bytes": self.limits.shm_bytes,
                        "tmp_binds": _under_tmp(paths), "seccomp": base64.b64encode(seccomp_filter.program()).decode()})
            reply = self._receive(time.monotonic() + self.limits.start_seconds, "start")
            if reply.get("event") != "ready":
                raise self._broken(f"the sandbox did not start: {reply.get('message', reply.get('event'))}")
        except BaseException:
            self.close()  # a sandbox that did not start is not left running: its callers drop it
            raise
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and self.broken is None

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        try:
            self._stderr.seek(0)
            lines = self._stderr.read()[-4000:].decode(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1] if lines else ""

    def _broken(self, reason: str) -> InfrastructureError:
        tail = self._stderr_tail()
        self.broken = reason
        return InfrastructureError(reason + (f" [{tail}]" if tail else ""))

    def _send(self, message: dict) -> None:
        if self.control is None:
            raise self._broken("the sandbox is closed")
        try:
            self.control.sendall(wire.frame(message))
        except OSError:
            raise self._broken("the sandbox's control process ended unexpectedly") from None

    def _receive(self, deadline: float, what: str, fds: list[int] | None = None) -> dict:
        try:
            return _read_frame(self.control, deadline, fds)
        except _Eof:
            code = self.proc.poll() if self.proc else None
            raise self._broken(f"the sandbox's control process ended during {what}"
                               + (f" (exit status {code})" if code is not None else "")) from None
        except _Late:
            raise self._broken(f"the sandbox's control process did not answer ({what})") from None
        except wire.NotPlainData as exc:
            raise self._broken(f"the sandbox's control process sent nonsense during {what} ({exc})") from None

    def fork(self, deny_ops: dict[str, str] | None = None, deny_modules=()) -> Child:
        """A fresh learner process, ready for one submission. ``deny_ops`` (aten op packet -> the
        banned name it stands for) and ``deny_modules`` are refused in it from its start, before
        any learner code runs, for its whole life (see sandbox_worker._arm)."""
        if not self.alive:
            raise InfrastructureError(f"the sandbox cannot be used ({self.broken or 'not running'})")
        if self.current is not None:
            self.current.end()
        deny_ops = dict(deny_ops or {})
        modules = sorted(set(deny_modules) | set(NATIVE_MODULES))
        self._send({"op": "fork", "process": {"deny_ops": [[k, v] for k, v in sorted(deny_ops.items())],
                                              "deny_modules": modules}})
        fds: list[int] = []
        try:
            reply = self._receive(time.monotonic() + CONTROL_SECONDS, "fork", fds)
        except InfrastructureError:
            for fd in fds:
                os.close(fd)
            raise
        if reply.get("event") != "forked" or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise self._broken(f"the sandbox could not start a learner process ({reply.get('message', reply)})")
        child = Child(self, socket.socket(fileno=fds[0]), deny_ops, modules)
        self.current = child
        child.wait_ready(time.monotonic() + CONTROL_SECONDS)
        return child

    def reap(self) -> dict:
        """Kill the current learner process (if alive) and learn from the zygote how it ended and
        whether the sandbox is clean. An unclean sandbox is marked broken (never reused)."""
        self.current = None
        self._send({"op": "reap", "wait": 10})
        reply = self._receive(time.monotonic() + CONTROL_SECONDS, "reap")
        if reply.get("event") != "reaped":
            raise self._broken(f"unexpected answer from the sandbox ({str(reply)[:200]})")
        if not reply.get("clean"):
            self.broken = "a process survived the end of a learner process"
        return reply

    def close(self) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None and self.control is not None:
                self.control.sendall(wire.frame({"op": "exit"}))
                self.proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            try:  # the process group: bwrap and anything that escaped its session inside
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()
            self.proc = None
            if self.current is not None:
                self.current.sock.close()
                self.current = None
            for thing in (self.control, self._stderr):
                if thing is not None:
                    thing.close()
            self.control = self._stderr = None


class Child:
    """One learner process: load the learner's cells, call their functions. Every wait has a fixed
    deadline; whatever goes wrong on this channel is the learner's doing (ChildDied, ChildTimeout),
    except what the zygote reports about it (InfrastructureError)."""

    def __init__(self, sandbox: Sandbox, sock: socket.socket, deny_ops: dict[str, str] | None = None,
                 deny_modules=()):
        self.sandbox, self.sock = sandbox, sock
        self.deny_ops, self.deny_modules = dict(deny_ops or {}), tuple(deny_modules)
        self.ended: dict | None = None

    # -- life cycle

    def wait_ready(self, deadline: float) -> None:
        try:
            hello = _read_frame(self.sock, deadline)
        except (_Eof, _Late, wire.NotPlainData):
            report = self.end()
            raise self.sandbox._broken("a learner process failed to set up "
                                       f"({wait_status_reason(report.get('status'))})") from None
        if hello.get("event") != "ready":  # no learner code has run yet: this is our set-up failing
            self.end()
            raise self.sandbox._broken(f"a learner process failed to set up: {str(hello.get('message'))[:300]}")

    def end(self) -> dict:
        """Kill this learner process and everything it started; the zygote's report."""
        if self.ended is None:
            self.sock.close()
            self.ended = self.sandbox.reap()
        return self.ended

    def _failure(self, exc: BaseException, cell_index: int, seconds: float, budget: bool) -> SandboxError:
        if isinstance(exc, _Late):
            self.end()
            if budget:
                return BudgetExceeded("the submission's time budget ran out", seconds, cell_index)
            return ChildTimeout(f"no answer within {seconds:g} s", seconds, cell_index)
        report = self.end()
        if isinstance(exc, wire.NotPlainData):
            return ChildDied(f"it sent the grader something unreadable ({exc})", cell_index)
        return ChildDied(wait_status_reason(report.get("status")), cell_index)

    def _send(self, message: dict) -> None:
        try:
            self.sock.sendall(wire.frame(message))
        except OSError:
            pass  # it ended: the next read sees the end and asks the zygote how

    def _read(self, deadline: float, budget_deadline: float, seconds: float, cell_index: int = -1) -> dict:
        try:
            return _read_frame(self.sock, min(deadline, budget_deadline))
        except (_Eof, _Late, wire.NotPlainData) as exc:
            raise self._failure(exc, cell_index, seconds, budget_deadline < deadline) from None

    # -- requests

    def load(self, cells: list[dict], cell_seconds: float,
             budget_deadline: float = float("inf")) -> tuple[list[dict | None], list[str]]:
        """Execute ``cells`` in order. Returns (per-cell error or None, names of callables defined).

        Each cell's deadline is fixed when it starts; events out of order count as the learner
        tampering with its channel. A cell that hangs or kills the process raises ChildTimeout /
        ChildDied carrying its index."""
        self._send({"op": "load", "cells": cells, "cell_timeout": cell_seconds})
        errors: list[dict | None] = [None] * len(cells)
        wait = cell_seconds + GRACE_SECONDS
        deadline = time.monotonic() + GRACE_SECONDS  # until the first cell starts: our own code
        for index in range(len(cells)):
            # Between cells only our code runs, but a thread a cell left behind may strike there:
            # the previous cell answers for it (-1 before the first: our set-up).
            start = self._read(deadline, budget_deadline, wait, index - 1)
            if start != {"event": "cell_start", "index": index}:
                raise self._failure(wire.NotPlainData("an out-of-order message"), index, wait, False)
            deadline = time.monotonic() + wait
            done = self._read(deadline, budget_deadline, wait, index)
            if done.get("event") != "cell_done" or done.get("index") != index:
                raise self._failure(wire.NotPlainData("an out-of-order message"), index, wait, False)
            error, notes = done.get("error"), done.get("notes")
            notes = [str(n)[:300] for n in notes[:5]] if isinstance(notes, list) else []
            replaced = done.get("banned")
            if isinstance(replaced, list) and replaced:  # the built-in a scratch cell compared against
                names = sorted({self.deny_ops[k] for k in replaced if isinstance(k, str) and k in self.deny_ops})
                if names:
                    notes.append(f"the grader does not run {', '.join(names)} (banned in this exercise): here it "
                                 "gave NaN, so what this cell printed is not what Jupyter shows")
            errors[index] = error if isinstance(error, dict) or error is None else {"type": "Error"}
            if errors[index] is None and notes:
                errors[index] = {"type": "Note", "message": "; ".join(notes)}
            deadline = time.monotonic() + GRACE_SECONDS
        loaded = self._read(deadline, budget_deadline, wait, len(cells) - 1)
        if loaded.get("event") != "loaded" or not isinstance(loaded.get("functions"), list):
            raise self._failure(wire.NotPlainData("an out-of-order message"), len(cells) - 1, wait, False)
        return errors, [n for n in loaded["functions"] if isinstance(n, str)]

    def call(self, name: str, args: tuple, kwargs: dict, call_seconds: float,
             budget_deadline: float = float("inf"), deny_functions=()):
        """Call the learner's ``name``; returns (value, changed) or raises. ``changed`` lists
        (argument position or keyword, its new value or None) for every argument the function
        changed in place (a generator always: it was consumed); the new value comes back only for
        tensors and generators. The caller decides what an in-place change means.

        ``deny_functions``: banned dotted names refused during the call (the operators of this
        process were fixed when it was forked). Raises ChildDied / ChildTimeout when the process
        dies, hangs or garbles the reply, BannedAtRunTime when a banned operation was reached,
        LearnerException when the learner's function raised, and wire.NotPlainData for a
        non-plain argument."""
        self._send({"op": "call", "name": name, "args": wire.encode(list(args)),
                    "kwargs": wire.encode(dict(kwargs)), "timeout": call_seconds,
                    "deny_functions": list(deny_functions)})
        wait = call_seconds + GRACE_SECONDS
        reply = self._read(time.monotonic() + wait, budget_deadline, wait)
        reached = reply.get("banned")
        if isinstance(reached, list) and reached:
            labels = [runtime_label(r, self.deny_ops, deny_functions, self.deny_modules) for r in reached[:20]]
            raise BannedAtRunTime(list(dict.fromkeys(labels)))
        if reply.get("event") == "result":
            try:
                value = wire.decode(reply.get("value"))
                changed = []
                for item in reply.get("changed") or []:
                    if not (isinstance(item, list) and len(item) == 2 and type(item[0]) in (int, str)):
                        raise wire.NotPlainData("a malformed list of changed arguments")
                    changed.append((item[0], wire.decode(item[1])))
            except (wire.NotPlainData, ValueError, TypeError) as exc:
                raise LearnerException("NotPlainData", f"returned data the grader cannot read ({exc})") from None
            return value, changed
        if reply.get("event") != "error":
            raise self._failure(wire.NotPlainData("an unexpected message"), -1, wait, False)
        bases = reply.get("bases")
        bases = [b for b in bases if isinstance(b, str)][:8] if isinstance(bases, list) else []
        raise LearnerException(str(reply.get("type", "Error"))[:100], str(reply.get("message", ""))[:4000], bases)
