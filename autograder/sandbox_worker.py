"""The program that runs inside the sandbox: loads a learner's cells and calls their functions.

It speaks a length-prefixed JSON protocol on its original stdin/stdout and gives
the learner's code a log file as stdout/stderr instead, so that printing cannot
corrupt the protocol. Nothing it returns is trusted: the grader validates every
message (see wire.py) and compares the values itself.
"""

from __future__ import annotations

import os
import signal
import struct
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402  (imported before any learner code runs, so it cannot be swapped out first)
import wire  # noqa: E402

HEADER = struct.Struct(">Q")


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def _setup_io():
    """Keep private copies of stdin/stdout for the protocol; learner output goes to a capped log file."""
    proto_in = os.fdopen(os.dup(0), "rb", buffering=0)
    proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
    log_fd = os.open("/tmp/learner-output.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    # Past the file-size limit a write fails with EFBIG instead of killing the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return proto_in, proto_out


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
    body = wire.dumps(message)
    stream.write(HEADER.pack(len(body)) + body)


def _describe_error(exc: BaseException) -> dict:
    if isinstance(exc, _Timeout):
        return {"type": "Timeout", "message": "did not finish in time"}
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return {"type": type(exc).__name__, "message": text[-2000:]}


def _run_timed(fn, seconds: float):
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def main() -> None:
    proto_in, proto_out = _setup_io()
    signal.signal(signal.SIGALRM, _alarm)
    torch.set_num_threads(1)  # parallel graders share the cores
    try:
        from IPython.core.inputtransformer2 import TransformerManager
        to_python = TransformerManager().transform_cell
    except Exception:  # IPython missing: magics then fail as syntax errors in that cell only
        to_python = lambda source: source  # noqa: E731
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


if __name__ == "__main__":
    main()
