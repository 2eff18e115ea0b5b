"""The program that runs inside the sandbox: loads a learner's cells and calls their functions.

It speaks a length-prefixed JSON protocol on its original stdin/stdout and gives
the learner's code a log file as stdout/stderr instead, so that printing cannot
corrupt the protocol. Nothing it returns is trusted: the grader validates every
message (see wire.py) and compares the values itself.
"""

from __future__ import annotations

import os
import signal
import stat
import struct
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402  (imported before any learner code runs, so it cannot be swapped out first)
import wire  # noqa: E402

HEADER = struct.Struct(">Q")


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


LOG = "/tmp/learner-output.log"


def _setup_io():
    """Keep private copies of stdin/stdout for the protocol; learner output goes to a capped log file."""
    proto_in = os.fdopen(os.dup(0), "rb", buffering=0)
    proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    if "--zygote" in sys.argv:  # the zygote prints nothing; each child opens its own log
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    else:
        _fresh_log()
    # Past the file-size limit a write fails with EFBIG instead of killing the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return proto_in, proto_out


def _fresh_log() -> None:
    log_fd = os.open(LOG, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)


def _set_dumpable(flag: int) -> None:
    """PR_SET_DUMPABLE: 0 forbids same-uid processes to ptrace us or read /proc/<pid>/mem."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, flag, 0, 0, 0)
    except Exception:
        pass


def _read(stream) -> dict | None:
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (length,) = HEADER.unpack(header)
    body = b""
    while len(body) < length:
        chunk = stream.read(length - len(body))
        if not chunk:
            return None
        body += chunk
    return wire.loads(body)


def _send(stream, message: dict) -> None:
    data = memoryview(HEADER.pack(len(wire.dumps(message))) + wire.dumps(message))
    while data:  # a raw pipe write may be partial
        data = data[stream.write(data):]


def _describe_error(exc: BaseException) -> dict:
    if isinstance(exc, _Timeout):
        return {"type": "Timeout", "message": "did not finish in time"}
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    # The class hierarchy lets the grader re-raise the nearest built-in (UnicodeEncodeError -> ValueError).
    bases = [c.__name__ for c in type(exc).__mro__ if c.__module__ == "builtins"]
    return {"type": type(exc).__name__, "bases": bases, "message": text[-2000:]}


def _run_timed(fn, seconds: float):
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def serve(proto_in, proto_out, to_python) -> None:
    """Answer load/call requests for one submission until "exit" or end of input."""
    namespace: dict = {"__name__": "__main__"}
    while True:
        request = _read(proto_in)
        if request is None or request.get("op") == "exit":
            return
        if request.get("op") == "load":
            for index, cell in enumerate(request["cells"]):
                _send(proto_out, {"event": "cell_start", "index": index})
                error = None
                try:
                    code = compile(to_python(cell["source"]), f"<cell {cell.get('id', index)}>", "exec")
                    _run_timed(lambda: exec(code, namespace), request["cell_timeout"])
                except BaseException as exc:  # the learner's cell failed; the rest still load
                    error = _describe_error(exc)
                _send(proto_out, {"event": "cell_done", "index": index, "error": error})
            functions = sorted(k for k, v in namespace.items() if callable(v) and not k.startswith("__"))
            _send(proto_out, {"event": "loaded", "functions": functions})
        elif request.get("op") == "call":
            fn = namespace.get(request["name"])
            try:
                if not callable(fn):
                    raise NameError(f"{request['name']} is not defined")
                args = wire.decode(request["args"])
                kwargs = wire.decode(request["kwargs"])
                result = _run_timed(lambda: fn(*args, **kwargs), request["timeout"])
                # Arguments the function changed in place (running statistics, generators) go back too.
                mutated = {i: a for i, a in enumerate(args) if type(a) in (torch.Tensor, torch.Generator)}
                mutated_kw = {k: a for k, a in kwargs.items() if type(a) in (torch.Tensor, torch.Generator)}
                reply = {"event": "result", "value": wire.encode(result),
                         "args": wire.encode(mutated), "kwargs": wire.encode(mutated_kw)}
            except wire.NotPlainData as exc:
                reply = {"event": "error", "type": "NotPlainData", "message": str(exc)}
            except BaseException as exc:
                reply = {"event": "error", **_describe_error(exc)}
            try:
                _send(proto_out, reply)
            except (OverflowError, ValueError) as exc:
                _send(proto_out, {"event": "error", "type": "NotPlainData", "message": str(exc)})


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


def _sweep() -> bool:
    """Kill everything the last submission left behind; True when nothing is left."""
    for _ in range(200):
        try:
            os.kill(-1, signal.SIGKILL)  # every process we may signal, except ourselves and init
        except ProcessLookupError:
            pass
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        if not _others():
            return True
        time.sleep(0.005)
    return False


def _wipe_tmp() -> None:
    """Delete everything the child left in /tmp, but not the read-only mounts that may live
    under it (a checkout under /tmp has its venv mounted there)."""
    tmp_dev = os.lstat("/tmp").st_dev

    def wipe(path: str) -> bool:  # True when path is gone
        try:
            st = os.lstat(path)
            if st.st_dev != tmp_dev:
                return False  # a mount point
            if stat.S_ISDIR(st.st_mode):
                kept = [name for name in os.listdir(path) if not wipe(os.path.join(path, name))]
                if kept:
                    return False
                os.rmdir(path)
            else:
                os.unlink(path)
            return True
        except OSError:
            return False

    for name in os.listdir("/tmp"):
        wipe(os.path.join("/tmp", name))


def _drop_privileges(uid: int) -> None:
    """Become the unprivileged uid (which clears every capability); exit if that fails."""
    try:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    except OSError:
        os._exit(3)
    if os.getuid() != uid or os.geteuid() != uid or os.getegid() != uid:
        os._exit(3)


def zygote(proto_in, proto_out, to_python, uid: int) -> None:
    """Fork one fresh child per submission from this process, which has imported torch once.

    Between submissions every process the child left behind is killed and /tmp is wiped,
    so a submission finds the sandbox as the previous one found it.
    """
    _set_dumpable(0)
    while True:
        request = _read(proto_in)
        if request is None or request.get("op") == "exit":
            return
        if request.get("op") != "fork":
            continue
        pid = os.fork()
        if pid == 0:
            status = 0
            try:
                _drop_privileges(uid)
                _fresh_log()
                serve(proto_in, proto_out, to_python)
            except BaseException:
                status = 1
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
        clean = _sweep()
        _wipe_tmp()
        _send(proto_out, {"event": "child_exited", "status": status, "clean": clean})
        if not clean:
            return  # something survived the sweep: end the sandbox rather than reuse it


def main() -> None:
    proto_in, proto_out = _setup_io()
    signal.signal(signal.SIGALRM, _alarm)
    torch.set_num_threads(1)  # parallel graders share the cores
    try:
        from IPython.core.inputtransformer2 import TransformerManager
        to_python = TransformerManager().transform_cell
    except Exception:  # IPython missing: magics then fail as syntax errors in that cell only
        to_python = lambda source: source  # noqa: E731
    if "--zygote" in sys.argv:
        uid = int(next(a for a in sys.argv if a.startswith("--uid=")).split("=", 1)[1])
        zygote(proto_in, proto_out, to_python, uid)
    else:
        serve(proto_in, proto_out, to_python)


if __name__ == "__main__":
    main()
