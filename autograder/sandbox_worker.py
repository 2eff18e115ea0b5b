"""The program inside the sandbox: a zygote that forks one isolated learner process per submission.

Process tree inside bubblewrap's pid namespace::

    bwrap (pid 1) ── zygote ── keeper ══ learner: pid 1 of its own pid namespace ── its children

- The **zygote** imports torch once and speaks to the grader on the control socket only.
  It never runs learner code and never reads a byte a learner process wrote.
- For each submission it makes a fresh socket pair, forks a **keeper** with one end and hands the
  other end to the grader (SCM_RIGHTS). The keeper closes every other descriptor (the control
  socket first), unshares the mount, IPC and pid namespaces and forks the **learner process**,
  then only waits for it and reports its pid and wait status to the zygote on a private pipe.
- The learner process is pid 1 of a new pid namespace: it mounts its own empty ``/tmp``,
  ``/dev/shm`` and ``/proc``, drops every privilege, sets no_new_privs, loads the seccomp filter,
  says ``ready`` and only then runs learner code. It cannot see, signal or ptrace the zygote,
  the keeper or a later submission (another pid namespace), and holds no descriptor but its own.
- When the grader is done (or the learner died), the zygote kills the learner process. As pid 1
  it takes its whole namespace with it; the keeper reports its status and exits; the private
  mount and IPC namespaces (the tmpfs, System V objects, message queues) go with the last
  process. The zygote then checks that nothing but itself is left and says so to the grader,
  which reuses the sandbox only on that word from the zygote, never on anything the learner sent.

Nothing the learner process returns is trusted: the grader validates every message (wire.py)
and compares the values itself.
"""

from __future__ import annotations

import base64
import ctypes
import os
import signal
import socket
import struct
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import notebook_contract  # noqa: E402  (qkv/notebook_contract.py, bound here alone)
import torch  # noqa: E402  (imported before any learner code runs, so it cannot be swapped out first)
import wire  # noqa: E402

LOG = "/tmp/learner-output.log"
STAGE = "/opt/qkv-sandbox/newtmp"  # an empty directory where the next /tmp is prepared
SETUP_FAILED = 70  # exit status of a learner process whose set-up failed (before any learner code)

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWPID = 0x00020000, 0x08000000, 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x2000, 0x4000, 0x40000
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP = 1, 4, 24
PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 22, 38, 47
PR_CAP_AMBIENT_CLEAR_ALL, SECCOMP_MODE_FILTER = 4, 2
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_SYS_CAPSET = {"x86_64": 126, "aarch64": 91}


class SetupError(Exception):
    """A step of the learner process's set-up failed: ours, not the learner's."""


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None, what: str) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), what)


# ----------------------------------------------------------------------------- framing


class _Eof(Exception):
    pass


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise _Eof()
        got += k
    return bytes(buf)


def _read(sock: socket.socket) -> dict | None:
    """The next message, or None at end of input."""
    try:
        length = wire.body_length(_recv_exact(sock, wire.HEADER.size))
        return wire.loads(_recv_exact(sock, length))
    except _Eof:
        return None


def _send(sock: socket.socket, message: dict) -> None:
    sock.sendall(wire.frame(message))


# ----------------------------------------------------------------------------- the learner process


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def _describe_error(exc: BaseException) -> dict:
    if isinstance(exc, _Timeout):
        return {"type": "Timeout", "message": "did not finish in time"}
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    # The class hierarchy lets the grader re-raise the nearest built-in (UnicodeEncodeError -> ValueError).
    bases = [c.__name__ for c in type(exc).__mro__ if c.__module__ == "builtins"]
    return {"type": type(exc).__name__, "bases": bases[:8], "message": text[-2000:]}


class BannedOperation(RuntimeError):
    """A banned operator or module was reached while the grader called a learner's function."""


class _Denials:
    """Every banned torch operator refused in every thread (kernels registered over the CPU
    implementations from the first call on; registered again only when the next call's banned set
    differs), banned torch functions refused before they decompose (a mode entered for each call),
    and what was reached recorded for the grader. Refusing rather than only recording matters:
    whatever the learner's code does to the record, the banned operator never produced a result.
    The kernels are not there while the learner's cells load: a scratch cell may compare against
    the built-in (the static layer judges that)."""

    def __init__(self, ops: list, functions: list):
        """``ops``: [aten op packet, the banned name it stands for] pairs; ``functions``: banned dotted names."""
        self.key = repr((ops, functions))
        self.ops = {str(p[0]): str(p[1]) for p in ops if isinstance(p, list) and len(p) == 2} \
            if isinstance(ops, list) else {}
        self.functions = _resolve(functions)
        self.hits: list[str] = []
        self.library = None
        if self.ops:
            import warnings

            self.library = torch.library.Library("aten", "IMPL")
            with warnings.catch_warnings():  # "overriding a previously registered kernel": that is the point
                warnings.simplefilter("ignore")
                for packet in self.ops:
                    op = getattr(torch.ops.aten, packet, None)
                    if op is None:  # not in this torch version
                        continue
                    for overload in op.overloads():
                        try:
                            self.library.impl(packet if overload == "default" else f"{packet}.{overload}",
                                              self._kernel(packet), "CPU")
                        except RuntimeError:
                            pass

    def _refuse(self, label: str):
        self.hits.append(label)
        raise BannedOperation(f"your code {label}")

    def _kernel(self, packet: str):
        label = (f"calls {self.ops[packet]} (reached at run time as aten::{packet}), which this exercise "
                 "asks you to implement yourself")

        def refuse(*args, **kwargs):
            self._refuse(label)
        return refuse

    def __enter__(self):
        """One call: a fresh record, and the function check in the calling thread."""
        self.hits = []
        self.mode = None
        if self.functions:
            denials = self

            class _RefuseFunctions(torch.overrides.TorchFunctionMode):
                def __torch_function__(self, func, types, args=(), kwargs=None):
                    name = denials.functions.get(func)
                    if name is not None:
                        denials._refuse(f"calls {name} (reached at run time), which this exercise asks you "
                                        "to implement yourself")
                    return func(*args, **(kwargs or {}))

            self.mode = _RefuseFunctions()
            self.mode.__enter__()
        return self

    def intact(self) -> bool:
        """Whether the refusals are still in place after the call (the learner's code did not lift them)."""
        return self.library is None or getattr(self.library, "m", None) is not None

    def __exit__(self, *exc):
        if self.mode is not None:
            try:
                self.mode.__exit__(None, None, None)
            except Exception:  # the learner popped it already: the kernels still refused
                pass
        return False

    def close(self) -> None:
        if self.intact() and self.library is not None:
            self.library._destroy()  # the original kernels are back


def _resolve(names) -> dict:
    """Banned dotted names -> the torch callables they name (object identity), where they exist."""
    out = {}
    for name in names if isinstance(names, list) else []:
        parts = str(name).split(".")
        if parts[0] != "torch":
            continue
        obj = torch
        for part in parts[1:]:
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None and callable(obj):
            out[obj] = str(name)
            forward = getattr(obj, "forward", None) if isinstance(obj, type) else None
            if forward is not None:
                out[forward] = str(name)
    return out


# While a learner's function runs, the ways to reach the grader's own objects in this process (to
# lift the refusals above) are refused: frames, the garbage collector's object lists, ctypes.
_INTROSPECTION = ("sys._getframe", "sys._current_frames", "gc.get_objects", "gc.get_referrers", "gc.get_referents")
_FRAME_ATTRIBUTES = ("tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back")


def _install_guard(refused_modules: set[str], reached: list[str]):
    """Add the audit hook (it cannot be removed once added): banned modules are never imported,
    and during a call the learner's code may not introspect the process it shares with us.
    Returns the switch for "a call is running"; its state lives in this closure, not in a global
    the learner's code could reach through the module."""
    in_call = [False]

    def audit(event: str, args: tuple) -> None:
        if event == "import" and args and isinstance(args[0], str):
            top = args[0].split(".")[0]
            if top in refused_modules:
                reached.append(f"imports {top} at run time, which this exercise does not allow")
                raise BannedOperation(f"importing {args[0]}: this exercise asks you not to use {top}")
        elif in_call[0] and (event in _INTROSPECTION or event.startswith("ctypes.")
                             or (event == "object.__getattr__" and len(args) > 1 and args[1] in _FRAME_ATTRIBUTES)):
            reached.append(f"uses {event} while the grader calls it (the grader's process is off limits)")
            raise BannedOperation(f"{event} is not allowed while the grader calls your function")

    sys.addaudithook(audit)

    def switch(on: bool) -> None:
        in_call[0] = on
    return switch


def _run_timed(seconds: float, fn, *args, **kwargs):
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn(*args, **kwargs)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def serve(sock: socket.socket) -> None:
    """Answer load/call requests for one submission until "exit" or end of input."""
    refused_modules: set[str] = set()
    reached: list[str] = []
    in_call = _install_guard(refused_modules, reached)  # before any learner code runs
    namespace: dict = {"__name__": "__main__"}
    runner = notebook_contract.CellRunner(namespace)  # magics behave as in JupyterLab and qkv check
    denials: _Denials | None = None
    while True:
        request = _read(sock)
        if request is None or request.get("op") == "exit":
            return
        if request.get("op") == "load":
            modules = request.get("deny_modules")
            if isinstance(modules, list) and modules:
                refused_modules.update(str(m) for m in modules)
            for index, cell in enumerate(request["cells"]):
                _send(sock, {"event": "cell_start", "index": index})
                error, notes = None, []
                try:
                    name = f"<cell {cell.get('id', index)}>"
                    notes = _run_timed(request["cell_timeout"], runner.run, cell["source"], name)
                except BaseException as exc:  # the learner's cell failed; the rest still load
                    error = _describe_error(exc)
                _send(sock, {"event": "cell_done", "index": index, "error": error, "notes": notes[:20]})
            functions = sorted(k for k, v in namespace.items() if callable(v) and not k.startswith("__"))
            _send(sock, {"event": "loaded", "functions": functions})
        elif request.get("op") == "call":
            fn = namespace.get(request["name"])
            banned: list[str] = []
            try:
                if not callable(fn):
                    raise NameError(f"{request['name']} is not defined")
                args = wire.decode(request["args"])
                kwargs = wire.decode(request["kwargs"])
                if denials is None or denials.key != repr((request.get("deny_ops", []),
                                                           request.get("deny_functions", []))):
                    if denials is not None:
                        denials.close()
                    denials = _Denials(request.get("deny_ops", []), request.get("deny_functions", []))
                reached_before = len(reached)
                try:
                    with denials:
                        in_call(True)
                        try:
                            result = _run_timed(request["timeout"], fn, *args, **kwargs)
                        finally:
                            in_call(False)
                        if not denials.intact():
                            denials.hits.append("lifted the grader's run-time checks")
                finally:
                    banned = sorted(set(denials.hits + reached[reached_before:]))
                # Arguments the function changed in place (running statistics, generators) go back too.
                mutated = {i: a for i, a in enumerate(args) if type(a) in (torch.Tensor, torch.Generator)}
                mutated_kw = {k: a for k, a in kwargs.items() if type(a) in (torch.Tensor, torch.Generator)}
                reply = {"event": "result", "value": wire.encode(result),
                         "args": wire.encode(mutated), "kwargs": wire.encode(mutated_kw)}
            except wire.NotPlainData as exc:
                reply = {"event": "error", "type": "NotPlainData", "message": str(exc)}
            except BaseException as exc:
                reply = {"event": "error", **_describe_error(exc)}
            if banned:
                reply["banned"] = banned[:20]
            try:
                _send(sock, reply)
            except (OverflowError, ValueError) as exc:
                _send(sock, {"event": "error", "type": "NotPlainData", "message": str(exc)})


def _fresh_tmp(config: dict) -> None:
    """Mount an empty, size-capped tmpfs on /tmp, with the read-only mounts that live under /tmp
    (a checkout or venv in /tmp) bound again inside it, then on /dev/shm; a new /proc shows only
    this pid namespace."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE, None, "make the mounts private")
    _mount("tmpfs", STAGE, "tmpfs", MS_NOSUID | MS_NODEV, f"size={config['tmp_bytes']},mode=1777", "mount /tmp")
    for path in config["tmp_binds"]:
        inside = os.path.join(STAGE, os.path.relpath(path, "/tmp"))
        os.makedirs(inside, exist_ok=True)
        _mount(path, inside, None, MS_BIND | MS_REC, None, f"bind {path}")
        _mount(None, inside, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, None,
               f"make {path} read-only")
    _mount(STAGE, "/tmp", None, MS_MOVE, None, "move the new /tmp in place")
    _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, f"size={config['shm_bytes']},mode=1777",
           "mount /dev/shm")
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None, "mount /proc")
    for sub in ("sys", "sysrq-trigger", "irq", "bus"):  # as bubblewrap does: read-only
        path = f"/proc/{sub}"
        if os.path.exists(path):
            _mount(path, path, None, MS_BIND | MS_REC, None, f"bind {path}")
            _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, None,
                   f"make {path} read-only")


def _capabilities() -> tuple[int, int]:
    with open("/proc/self/status") as fh:
        fields = dict(line.split(":", 1) for line in fh if ":" in line)
    return int(fields["CapPrm"], 16), int(fields["CapEff"], 16)


def _drop_privileges(uid: int | None) -> None:
    """No capabilities, no way back: the unprivileged uid (root mode), an empty bounding set
    where we may drop it, no ambient capabilities, an empty capability set, no_new_privs."""
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    for cap in range(64):
        _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # EPERM without CAP_SETPCAP (user mode): harmless
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)  # from root to another uid: the capability sets are cleared
        if (os.getresuid(), os.getresgid()) != ((uid,) * 3, (uid,) * 3):
            raise SetupError(f"could not become uid {uid}")
    number = _SYS_CAPSET.get(os.uname().machine)
    if number is not None:
        header = struct.pack("Ii", _LINUX_CAPABILITY_VERSION_3, 0)
        data = (ctypes.c_uint32 * 6)()
        _check(_libc.syscall(number, ctypes.c_char_p(header), data), "clear the capabilities")
    if _capabilities() != (0, 0):
        raise SetupError("capabilities are left after dropping them")
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "set no_new_privs")


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _load_seccomp(program: bytes) -> None:
    if not program:
        return
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0), "load the seccomp filter")


def _fresh_log() -> None:
    log_fd = os.open(LOG, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)


def _learner(sock: socket.socket, config: dict) -> None:
    """pid 1 of a fresh pid namespace: set up, then serve the grader. Never returns."""
    try:
        _fresh_tmp(config)
        _drop_privileges(config.get("uid"))
        os.chdir("/tmp")
        _fresh_log()
        _load_seccomp(config["seccomp"])
    except BaseException as exc:  # nothing of the learner's has run yet: our failure
        try:
            _send(sock, {"event": "fatal", "message": f"{type(exc).__name__}: {exc}"[:500]})
        finally:
            os._exit(SETUP_FAILED)
    status = 0
    try:
        _send(sock, {"event": "ready"})
        serve(sock)
    except BaseException:
        status = 1
    finally:
        os._exit(status)


def _close_fds(keep: set[int]) -> None:
    for fd in os.listdir("/proc/self/fd"):
        if int(fd) > 2 and int(fd) not in keep:
            try:
                os.close(int(fd))
            except OSError:
                pass


def _keeper(sock: socket.socket, report_fd: int, config: dict) -> None:
    """Between the zygote and the learner process: unshare, fork the learner, report. Never returns."""
    try:
        _close_fds({sock.fileno(), report_fd})  # the control socket first of all
        _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWPID), "unshare the namespaces")
        pid = os.fork()
    except BaseException as exc:
        os.write(report_fd, f"error {type(exc).__name__}: {exc}\n".encode()[:500])
        os._exit(SETUP_FAILED)
    if pid == 0:
        os.close(report_fd)
        _learner(sock, config)
    sock.close()
    os.write(report_fd, f"pid {pid}\n".encode())
    _, status = os.waitpid(pid, 0)
    os.write(report_fd, f"status {status}\n".encode())
    os._exit(0)


# ----------------------------------------------------------------------------- the zygote


def _others() -> list[int]:
    """Live processes in this pid namespace other than init (bubblewrap) and ourselves."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in (1, os.getpid()):
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if fh.read().rsplit(")", 1)[1].split()[0] != "Z":
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


class _Child:
    """The zygote's record of one submission's keeper and learner process."""

    def __init__(self, keeper: int, report_fd: int):
        self.keeper, self.report_fd = keeper, report_fd
        self.report = b""

    def _lines(self) -> dict[str, str]:
        os.set_blocking(self.report_fd, False)
        while True:
            try:
                chunk = os.read(self.report_fd, 4096)
            except BlockingIOError:
                break
            if not chunk:
                break
            self.report += chunk
        out = {}
        for line in self.report.decode(errors="replace").splitlines():
            key, _, value = line.partition(" ")
            out[key] = value
        return out

    def learner_pid(self) -> int | None:
        """Blocks until the keeper has forked the learner (or failed): it is our own code, quick."""
        while True:
            lines = self._lines()
            if "pid" in lines:
                return int(lines["pid"])
            if "error" in lines:
                return None
            try:
                if os.waitpid(self.keeper, os.WNOHANG)[0] != 0:
                    return None
            except ChildProcessError:
                return None
            time.sleep(0.0005)

    def reap(self, wait_seconds: float) -> dict:
        """Kill the learner process if it is still running, wait for the keeper, report."""
        killed = False
        lines = self._lines()
        if "status" not in lines and "pid" in lines:
            try:
                os.kill(int(lines["pid"]), signal.SIGKILL)  # pid 1 of its namespace: everything in it dies
                killed = True
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_seconds
        reaped = False
        while time.monotonic() < deadline:
            try:
                if os.waitpid(self.keeper, os.WNOHANG)[0] != 0:
                    reaped = True
                    break
            except ChildProcessError:
                reaped = True
                break
            time.sleep(0.001)
        lines = self._lines()
        os.close(self.report_fd)
        status = int(lines["status"]) if lines.get("status", "").lstrip("-").isdigit() else None
        return {"event": "reaped", "status": status, "killed": killed, "error": lines.get("error"),
                "clean": reaped and not _others()}


def zygote(control: socket.socket) -> None:
    """Serve the grader's fork/reap requests until "exit" or end of input."""
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # no same-uid ptrace, no /proc/<pid>/mem
    init = _read(control)
    if not init or init.get("op") != "init":
        return
    config = {"uid": init.get("uid"), "tmp_bytes": int(init["tmp_bytes"]), "shm_bytes": int(init["shm_bytes"]),
              "tmp_binds": [str(p) for p in init.get("tmp_binds", [])],
              "seccomp": base64.b64decode(init.get("seccomp", ""))}
    if len(config["seccomp"]) % 8:
        _send(control, {"event": "error", "message": "the seccomp program is not a whole number of instructions"})
        return
    _send(control, {"event": "ready"})
    child: _Child | None = None
    while True:
        request = _read(control)
        if request is None or request.get("op") == "exit":
            if child is not None:
                child.reap(5)
            return
        if request.get("op") == "fork":
            if child is not None:  # the grader forgot to reap: the old child goes first
                child.reap(5)
            ours, theirs = socket.socketpair()
            report_r, report_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                try:
                    os.close(report_r)
                    ours.close()
                    _keeper(theirs, report_w, config)
                finally:
                    os._exit(SETUP_FAILED)
            os.close(report_w)
            theirs.close()
            child = _Child(pid, report_r)
            learner = child.learner_pid()
            if learner is None:
                reply = child.reap(5)
                child = None
                _send(control, {"event": "error", "message": f"could not start a learner process ({reply['error']})"})
            else:
                socket.send_fds(control, [wire.frame({"event": "forked", "keeper": pid})], [ours.fileno()])
            ours.close()
        elif request.get("op") == "reap":
            if child is None:
                _send(control, {"event": "reaped", "status": None, "killed": False, "error": None,
                                "clean": not _others()})
            else:
                _send(control, child.reap(float(request.get("wait", 10))))
                child = None


def main() -> None:
    fd = next(int(a.split("=", 1)[1]) for a in sys.argv if a.startswith("--control-fd="))
    control = socket.socket(fileno=fd)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # the zygote prints nothing; each learner process opens its own log
        os.dup2(devnull, fd)
    os.close(devnull)
    # Past the file-size limit a write fails with EFBIG instead of killing the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, _alarm)
    torch.set_num_threads(1)  # parallel graders share the cores
    try:  # imported once here, not in every learner process that meets a magic
        import IPython.core.inputtransformer2  # noqa: F401
    except ImportError:  # magics then fail as syntax errors, in that cell only
        pass
    zygote(control)


if __name__ == "__main__":
    main()
