"""The sandbox, attacked directly by learner code that has read autograder/sandbox*.py.

Each submission runs in its own learner process (pid 1 of its own namespaces) forked from a warm
zygote. These tests drive one sandbox through several learner processes and check that nothing
one of them does reaches the next one, the zygote or the channel that serves later submissions.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import nbformat
import pytest
import torch

from autograder.course import REPO_ROOT
from autograder.sandbox import ChildDied, ChildTimeout, InfrastructureError, Limits, Sandbox

pytestmark = [pytest.mark.slow]

FAST = Limits(cell_seconds=3, call_seconds=3)


def _mount_parents_in_tmp() -> set[str]:
    """Top-level /tmp entries that hold read-only mounts (a checkout or venv living under /tmp)."""
    names = set()
    for path in (Path(sys.prefix), Path(sys.base_prefix), REPO_ROOT):
        path = path.resolve()
        if path.parts[:2] == ("/", "tmp") and len(path.parts) > 2:
            names.add(path.parts[2])
    return names


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(FAST) as sb:
        yield sb


def _run(sandbox: Sandbox, source: str, call: str | None = None, args: tuple = ()):
    """Load ``source`` in a fresh learner process; return (cell errors, the call's value or None)."""
    child = sandbox.fork()
    try:
        errors, names = child.load([{"id": "cell", "source": source}], FAST.cell_seconds)
        value = child.call(call, args, {}, FAST.call_seconds)[0] if call else None
        return errors, value
    finally:
        child.end()


INSPECT = '''
import ctypes, os
def _link(fd):
    try:
        return os.readlink(f"/proc/self/fd/{fd}").split("[")[0]
    except OSError:  # the descriptor of the listing itself, closed by now
        return None
def traces():
    others = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
    fds = sorted(filter(None, map(_link, os.listdir("/proc/self/fd"))))
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    return (sorted(os.listdir("/tmp")), sorted(os.listdir("/dev/shm")), others, fds, os.getuid(), os.getpid(),
            os.getppid(), status["CapEff"].strip(), status["NoNewPrivs"].strip(), status["Seccomp"].strip())
'''

LEAVE_TRACES = '''
import os, time
os.makedirs("/tmp/leftover/inner")
open("/tmp/leftover/inner/secret.txt", "w").write("answers")
os.chmod("/tmp/leftover/inner", 0)
os.chmod("/tmp/leftover", 0)
# a path too deep to delete by name (longer than PATH_MAX), as #15 found
os.chdir("/tmp")
for _ in range(300):
    os.mkdir("d" * 200)
    os.chdir("d" * 200)
os.chdir("/tmp")
open("/dev/shm/left-in-shm", "w").write("x" * 1000)
if os.fork() == 0:
    os.setsid()
    time.sleep(300)
    os._exit(0)
'''


# The probes' helper, sent into the sandbox ahead of their source: "ok", or the exception's type
# and the start of its message.
ATTEMPT = """
def attempt(fn):
    try:
        fn()
        return "ok"
    except Exception as exc:
        return type(exc).__name__ + ": " + str(exc)[:80]
"""


def test_second_submission_finds_a_clean_sandbox(sandbox):
    errors, _ = _run(sandbox, LEAVE_TRACES)
    assert errors == [None]
    errors, seen = _run(sandbox, INSPECT, "traces")
    assert errors == [None]
    tmp, shm, others, fds, uid, pid, ppid, cap_eff, no_new_privs, seccomp = seen
    # only its own log (and the folders holding read-only mounts, if any)
    assert set(tmp) == {"learner-output.log"} | _mount_parents_in_tmp()
    assert shm == []
    assert others == []  # the first one's detached sleeper is gone; the zygote is not even visible
    assert (pid, ppid) == (1, 0)  # pid 1 of its own namespace: it cannot name its parent
    # /dev/null, its log twice, its own socket (and the listing itself): nothing of the zygote's
    assert [f for f in fds if not f.startswith("/proc/")] == ["/dev/null", "/tmp/learner-output.log",
                                                              "/tmp/learner-output.log", "socket:"], fds
    assert uid != 0 and cap_eff == "0000000000000000" and no_new_privs == "1" and seccomp == "2"


def test_a_learner_process_cannot_kill_the_zygote(sandbox):
    child = sandbox.fork()
    errors, _ = child.load([{"id": "everyone", "source": "import os, signal\nos.kill(-1, signal.SIGKILL)"},
                            {"id": "parent", "source": "assert os.getppid() == 0\nos.kill(1, signal.SIGKILL)"}],
                           FAST.cell_seconds)
    child.end()
    # kill(-1) finds nobody to kill (its namespace holds only itself); its parent has no pid it can
    # name, and pid 1 is itself.
    assert errors[0]["type"] == "ProcessLookupError" and errors[1] is None
    _, value = _run(sandbox, "def f(x):\n    return x * 2", "f", (torch.ones(2),))
    assert value.tolist() == [2.0, 2.0]


TAKEOVER = '''
import os, socket, struct, json, threading
# Keep a process alive holding the channel, and answer every later request with a forged verdict,
# as #15's attack did through the inherited protocol channel.
def forge(fd):
    s = socket.socket(fileno=os.dup(fd))
    while True:
        try:
            s.recv(1 << 16)
        except OSError:
            return
        forged = {"event": "result", "value": 42, "args": {"__dict__": []}, "kwargs": {"__dict__": []}}
        body = json.dumps(forged).encode()
        s.sendall(struct.pack(">Q", len(body)) + body)
fds = [int(fd) for fd in os.listdir("/proc/self/fd") if int(fd) > 2]
if os.fork() == 0:
    os.setsid()
    for fd in fds:
        threading.Thread(target=forge, args=(fd,), daemon=True).start()
    threading.Event().wait()
# and pretend to the grader that this process has exited cleanly
body = json.dumps({"event": "reaped", "status": 0, "killed": False, "error": None, "clean": True}).encode()
for fd in fds:
    try:
        os.write(fd, struct.pack(">Q", len(body)) + body)
    except OSError:
        pass
'''


def test_a_learner_process_cannot_serve_the_next_submission(sandbox):
    child = sandbox.fork()
    with pytest.raises(ChildDied):  # its forged frames arrive where the grader expects cell_done
        child.load([{"id": "attack", "source": TAKEOVER}], FAST.cell_seconds)
    child.end()
    assert sandbox.alive  # the zygote, not the learner's word, says it is clean
    _, value = _run(sandbox, "def f(x):\n    return x + 1", "f", (torch.zeros(3),))
    assert value.tolist() == [1.0, 1.0, 1.0]  # the honest answer, not the forged 42


KERNEL = '''
import ctypes, errno, json, os, socket, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
program = bytes.fromhex(sys.argv[1])
buf = ctypes.create_string_buffer(program, len(program))
assert libc.prctl(38, 1, 0, 0, 0) == 0  # no_new_privs, as in a learner process
assert libc.prctl(22, 2, ctypes.byref(Fprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))), 0, 0) == 0
def attempt(fn):
    ctypes.set_errno(0)
    result = fn()
    return errno.errorcode.get(ctypes.get_errno(), "ok") if result == -1 else "ok"
out = {
    "unshare_user": attempt(lambda: libc.unshare(0x10000000)),
    "unshare_mount": attempt(lambda: libc.unshare(0x00020000)),
    "clone_newuser": attempt(lambda: libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)),
    "clone3": attempt(lambda: libc.syscall(435, 0, 0)),
    "mount": attempt(lambda: libc.mount(b"tmpfs", b"/nonexistent", b"tmpfs", 0, None)),
    "bpf": attempt(lambda: libc.syscall(321, 0, 0, 0)),
    "perf_event_open": attempt(lambda: libc.syscall(298, 0, 0, -1, -1, 0)),
    "keyctl": attempt(lambda: libc.syscall(250, 0, 0, 0, 0, 0)),
    "io_uring_setup": attempt(lambda: libc.syscall(425, 1, 0)),
    "ptrace": attempt(lambda: libc.ptrace(16, 1, 0, 0)),
    "shmget": attempt(lambda: libc.shmget(0, 1 << 30, 0o1600)),
    "memfd_create": attempt(lambda: libc.memfd_create(b"x", 0)),
}
try:
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    out["netlink"] = "ok"
except OSError as exc:
    out["netlink"] = errno.errorcode[exc.errno]
box = []
t = threading.Thread(target=lambda: box.append(os.getpid()))  # clone3 falls back to clone
t.start(); t.join()
out["threads"] = "ok" if box else "failed"
pid = os.fork()
if pid == 0:
    os._exit(7)
out["fork"] = "ok" if os.waitpid(pid, 0)[1] == 7 << 8 else "failed"
print(json.dumps(out))
'''


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="raw syscall numbers are x86_64's")
def test_kernel_attack_surface_is_closed():
    """The seccomp filter every learner process runs under, loaded into a plain process (learner
    code cannot make raw system calls itself: ctypes is refused in a learner process)."""
    import json
    import subprocess

    from autograder.seccomp_filter import program

    proc = subprocess.run([sys.executable, "-c", KERNEL, program().hex()], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    refused = {k: v for k, v in out.items() if k not in ("threads", "fork", "clone3")}
    assert all(v == "EPERM" for v in refused.values()), out
    assert out["clone3"] == "ENOSYS"  # so that the C library falls back to clone, whose flags are checked
    assert out["threads"] == "ok" and out["fork"] == "ok"


def test_a_learner_process_cannot_reach_native_memory(sandbox):
    """ctypes, the native test modules and /proc/self/mem are refused from the first learner cell on
    (they would reach the run-time layer's kernels below Python); ordinary code still loads."""
    source = ATTEMPT + """
import errno, os
import ctypes
out = {
    "ctypes": attempt(lambda: ctypes.CDLL(None).getpid()),
    "string_at": attempt(lambda: ctypes.string_at(id(1), 8)),
    "testcapi": attempt(lambda: __import__("_testcapi")),
    "mem": attempt(lambda: open("/proc/self/mem", "rb")),
    "mem_via_fd": attempt(lambda: open("/dev/fd/../mem", "rb")),
    "map_files": attempt(lambda: os.listdir(os.open("/proc/self/map_files", os.O_RDONLY))),
    "symlink": attempt(lambda: os.symlink("/proc/self/mem", "/tmp/m")),
    "gc": attempt(lambda: __import__("gc").get_objects()),
    "code": attempt(lambda: (lambda: 0).__code__.replace(co_consts=(1,))),
    "status": attempt(lambda: open("/proc/self/status").read()),
}
def probes():
    return out
"""
    _, out = _run(sandbox, source, "probes")
    assert out["status"] == "ok"
    for key in ("ctypes", "string_at", "testcapi", "mem", "mem_via_fd", "map_files", "symlink", "gc", "code"):
        assert out[key].startswith("BannedOperation"), (key, out[key])


def test_a_learner_process_runs_no_program_and_has_no_course_library(sandbox):
    """A program started by learner code would run without the run-time refusals of banned
    operators (a fresh `python -c "torch.softmax(...)"`): every way to start one is refused by the
    seccomp filter, below any Python-level hook. The course library, whose functions answer the
    exercises, is not in the sandbox at all (exec of its source needs no import)."""
    source = ATTEMPT + """
import importlib.util, os, subprocess, sys
import _posixsubprocess
out = {
    "subprocess": attempt(lambda: subprocess.run([sys.executable, "-c", "pass"])),
    "shell": attempt(lambda: subprocess.run("true", shell=True)),
    "posix_spawn": attempt(lambda: os.waitpid(os.posix_spawn(sys.executable, [sys.executable, "-c", "pass"],
                                                             dict(os.environ)), 0)),
    "system": os.system("true"),  # the shell cannot start: a status, not an exception
    "fork_then_exec": None,
    "qkv_spec": importlib.util.find_spec("qkv") is None,
    "qkv_files": [p for p in sys.path if os.path.isdir(os.path.join(p or ".", "qkv", "checks"))],
}
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    try:
        os.execv(sys.executable, [sys.executable, "-c", "pass"])
    except OSError as exc:
        os.write(w, type(exc).__name__.encode())
    os._exit(0)
os.waitpid(pid, 0)
os.close(w)
out["fork_then_exec"] = os.read(r, 100).decode()
def probes():
    return out
"""
    _, out = _run(sandbox, source, "probes")
    for key in ("subprocess", "shell", "posix_spawn"):
        assert out[key].startswith("PermissionError"), (key, out[key])
    assert out["fork_then_exec"] == "PermissionError"
    assert out["system"] != 0
    assert out["qkv_spec"] is True and out["qkv_files"] == []


def test_a_learner_process_has_no_compiler_no_ffi_and_no_base_packages(sandbox):
    """What a stop-21 red team used to compute a banned built-in outside the refused kernels: NNC
    (torch's tensor-expression compiler) and the fusers' switches are gone and no NNC kernel
    builds; cffi is refused; the base interpreter's own package folders (scipy lived there) are
    empty."""
    from autograder.sandbox import _hidden_site_packages

    hidden = _hidden_site_packages()
    graph = ("graph(%x : Double(2, 3, strides=[3, 1], device=cpu)):\\n"
             "  %y : Double(2, 3, strides=[3, 1], device=cpu) = aten::exp(%x)\\n  return (%y)\\n")
    source = ATTEMPT + f"""
import os, torch
_base = type(torch._C.Graph()).__mro__[1]
def _all(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all(sub)
_kernel = next(c for c in _all(_base) if c.__name__ == "TensorExprKernel")
out = {{
    "te": hasattr(torch._C, "_te"),
    "switch": hasattr(torch._C, "_jit_set_te_must_use_llvm_cpu"),
    "kernel": attempt(lambda: _kernel(torch._C.parse_ir("{graph}"))),
    "cffi": attempt(lambda: __import__("cffi")),
    "hidden": [os.listdir(p) for p in {hidden!r}],
}}
def probes():
    return out
"""
    _, out = _run(sandbox, source, "probes")
    assert out["te"] is False and out["switch"] is False
    assert out["kernel"].startswith("RuntimeError: LLVM Backend not found"), out
    assert out["cffi"].startswith("BannedOperation"), out
    assert hidden and out["hidden"] == [[] for _ in hidden]


def test_files_under_tmp_are_capped_and_private(sandbox):
    source = ("def fill():\n    try:\n        open('/tmp/big', 'wb').write(b'x' * (200 * 2**20))\n"
              "    except OSError as exc:\n        return exc.errno\n    return 0")
    _, err = _run(sandbox, source, "fill")
    assert err != 0  # the file-size limit (EFBIG) or the tmpfs cap (ENOSPC)
    _, seen = _run(sandbox, INSPECT, "traces")
    assert "big" not in seen[0]


def test_a_chatty_cell_cannot_extend_its_deadline(sandbox):
    chatty = '''
import json, os, stat, struct, time
def _is_socket(fd):
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False
fd = next(fd for fd in range(3, 256) if _is_socket(fd))
while True:  # every message the old grader saw renewed its deadline
    for event in ({"event": "cell_start", "index": 0}, {"event": "heartbeat"}):
        body = json.dumps(event).encode()
        try:
            os.write(fd, struct.pack(">Q", len(body)) + body)
        except OSError:
            pass
    time.sleep(0.2)
'''
    child = sandbox.fork()
    started = time.monotonic()
    with pytest.raises((ChildDied, ChildTimeout)) as caught:
        child.load([{"id": "chatty", "source": chatty}], FAST.cell_seconds)
    assert time.monotonic() - started < FAST.cell_seconds + 10
    assert caught.value.cell_index == 0
    child.end()
    _, value = _run(sandbox, "def f():\n    return 'fine'", "f")
    assert value == "fine"


def test_the_whole_submission_has_a_budget():
    """Many calls that each sleep just under their own limit stop at the submission's budget."""
    from autograder.learner_process import LearnerProcess

    limits = Limits(cell_seconds=3, call_seconds=3, submission_seconds=6)
    process = LearnerProcess([{"id": "slow", "source": "import time\ndef f():\n    time.sleep(2.5)\n    return 1"}],
                             limits, [], {})
    started, results = time.monotonic(), []
    try:
        for _ in range(10):
            try:
                results.append(process.call("f", (), {}))
            except TimeoutError as exc:
                results.append(str(exc))
    finally:
        process.close()
    assert results[:2] == [1, 1] and "time budget of 6 s" in results[-1]
    assert time.monotonic() - started < 6 + 2 * 2.5 + 10


def test_a_sandbox_that_does_not_start_is_an_infrastructure_error_and_leaves_nothing_running(monkeypatch):
    """Too slow to start (here: 50 ms to import torch inside): InfrastructureError, and the half-
    started sandbox's process group is gone (callers drop the object; a worker warming its
    sandbox ahead of the first submission would otherwise leave one running per worker)."""
    import subprocess

    import autograder.sandbox as sandbox_module

    started = []
    real_popen = subprocess.Popen

    def recording_popen(*args, **kwargs):
        proc = real_popen(*args, **kwargs)
        if kwargs.get("pass_fds"):  # the sandbox itself (not a probe of the platform)
            started.append(proc)
        return proc

    monkeypatch.setattr(sandbox_module.subprocess, "Popen", recording_popen)
    sb = Sandbox(Limits(cell_seconds=3, call_seconds=3, start_seconds=0.05))
    with pytest.raises(InfrastructureError, match="start"):
        sb.start()
    [proc] = started
    assert proc.poll() is not None and sb.proc is None
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)


def test_a_sandbox_killed_mid_run_is_an_infrastructure_error_not_a_verdict(tmp_path):
    """The sandbox dies under a submission (here: killed from outside during a call). That is ours:
    verify raises InfrastructureError; it never returns a failed test."""
    import autograder.learner_process as lp
    from autograder.course import SOLUTIONS
    from autograder.verify import verify
    from notebook_tools import learner_notebook

    answers = {"softmax": "reference", "additive_attention": "reference",
               "scaled_dot_product_attention": "import time\ndef scaled_dot_product_attention(q, k, v, mask=None):\n"
                                               "    time.sleep(30)"}
    nbformat.write(learner_notebook("attention", answers), tmp_path / "s.ipynb")
    original = lp.Child.call

    def call_then_kill(self, name, *args, **kwargs):
        if name == "scaled_dot_product_attention":
            os.killpg(self.sandbox.proc.pid, signal.SIGKILL)
        return original(self, name, *args, **kwargs)

    lp.Child.call = call_then_kill
    try:
        with pytest.raises(InfrastructureError):
            verify(SOLUTIONS / "attention" / "attention.ipynb", tmp_path / "s.ipynb", "attention", FAST)
    finally:
        lp.Child.call = original
        lp._ZYGOTES.close()


def test_a_call_may_not_introspect_the_process_it_shares_with_the_grader(sandbox):
    """The run-time refusals of banned operators live in the learner process; while the grader
    calls a function, the ways to reach them (the garbage collector's lists, frames, ctypes) are refused."""
    from autograder.sandbox import BannedAtRunTime

    source = ("import ctypes, gc, sys\n"
              "def objects():\n    return len(gc.get_objects())\n"
              "def frames():\n    return sys._getframe(1).f_code.co_name\n"
              "def memory():\n    return ctypes.string_at(id(1), 8)\n"
              "def allowed():\n    return sum(range(4))\n")
    child = sandbox.fork()
    try:
        child.load([{"id": "cell", "source": source}], FAST.cell_seconds)
        for name, event in (("objects", "gc.get_objects"), ("frames", "sys._getframe"), ("memory", "ctypes.")):
            with pytest.raises(BannedAtRunTime, match=event):
                child.call(name, (), {}, FAST.call_seconds)
        assert child.call("allowed", (), {}, FAST.call_seconds)[0] == 6
    finally:
        child.end()


def test_base_package_folders_the_grader_imports_from_stay_visible(monkeypatch):
    """A venv made with --system-site-packages imports from the base interpreter's folder: the
    zygote needs it, so it is not hidden; the others still are."""
    from autograder.sandbox import _hidden_site_packages

    hidden = _hidden_site_packages()
    assert hidden  # this machine: the grader runs from a venv over a base interpreter
    monkeypatch.setattr(sys, "path", [*sys.path, hidden[0]])
    assert _hidden_site_packages() == hidden[1:]
