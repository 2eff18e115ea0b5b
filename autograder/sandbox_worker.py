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
import copy
import ctypes
import functools
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


# Captured when this file is imported, before any learner code exists: learner code may later
# replace the attributes of torch, of this module or of pybind classes, but not these references.
_dispatch_library = torch._C._dispatch_library
_dispatch_impl = torch._C._DispatchModule.impl
_dispatch_dump_table = torch._C._dispatch_dump_table
_tree_map = torch.utils._pytree.tree_map
_TorchFunctionMode = torch.overrides.TorchFunctionMode
_Tensor = torch.Tensor
_full = torch.full
_HERE = os.path.abspath(__file__)
# Every CPU-side backend an operator may have a kernel of its own for: a sparse, MKL-DNN, nested or
# quantized tensor would otherwise reach the operator's own implementation for that layout.
DENY_KEYS = ("CPU", "SparseCPU", "SparseCsrCPU", "MkldnnCPU", "QuantizedCPU", "NestedTensorCPU")


def _placeholder(overload, args, kwargs):
    """What a banned operator gives while the learner's cells load: the right shapes and dtypes
    (from the operator's meta kernel), NaN (or 0) everywhere. A scratch cell that compares its
    answer with the built-in runs on, and learns nothing from it."""
    def meta(x):
        return x.to("meta") if isinstance(x, _Tensor) else x

    def fill(x):
        if not isinstance(x, _Tensor):
            return x
        value = float("nan") if (x.is_floating_point() or x.is_complex()) else 0
        return _full(tuple(x.shape), value, dtype=x.dtype)

    out_args = [v for k, v in kwargs.items() if k.startswith("out") and isinstance(v, _Tensor)]
    if overload._schema.is_mutable and not out_args and args and isinstance(args[0], _Tensor):
        out_args = [args[0]]  # an in-place operator (tril_, dropout_): its first argument is the result
    if out_args:
        for t in out_args:
            t.copy_(fill(t))
        return out_args[0] if len(out_args) == 1 else tuple(out_args)
    return _tree_map(fill, overload(*_tree_map(meta, list(args)), **_tree_map(meta, dict(kwargs))))


def _arm(ops: dict[str, str], record: list, mode: list) -> None:
    """Put a kernel of ours in front of every overload of every banned operator (``ops``: aten op
    packet -> the banned name it stands for), for every CPU-side backend, for the whole life of this
    process: while a learner's function is called (``mode[0] == "call"``) it refuses and records;
    before (cells loading) it gives a placeholder. It never runs the operator.

    Called before any learner code runs. The registrations are kept alive only by the kernels
    themselves (which the dispatcher holds), never by anything a learner can name: no frame of
    this function exists once learner code runs, the garbage collector's lists are refused
    (``_install_guard``) and nothing of torch.library (whose registries a learner could reach)
    is used. Raises SetupError when a registration does not take."""
    if not ops:
        return
    import warnings

    library = _dispatch_library("IMPL", "aten", "", _HERE, 0)

    def kernel(packet: str, overload):
        keep = library  # the kernel owns the registration: nothing else holds it

        def banned_kernel(*args, **kwargs):
            if keep is not None and mode[0] != "call":
                record.append(["load-op", packet])
                try:
                    return _placeholder(overload, args, kwargs)
                except Exception:  # noqa: BLE001 - no placeholder for this call: refuse it instead
                    pass
            else:
                record.append(["op", packet])
            raise BannedOperation(f"{ops[packet]} is not allowed in this exercise (the grader refuses it)")
        return banned_kernel

    with warnings.catch_warnings():  # "overriding a previously registered kernel": that is the point
        warnings.simplefilter("ignore")
        for packet in ops:
            op = getattr(torch.ops.aten, packet, None)
            if op is None:  # not in this torch version
                continue
            for name in op.overloads():
                qualified = packet if name == "default" else f"{packet}.{name}"
                fn = kernel(packet, getattr(op, name))
                for key in DENY_KEYS:
                    _dispatch_impl(library, qualified, key, fn, False)
                table = _dispatch_dump_table(f"aten::{qualified}")
                if f"CPU: registered at {_HERE}:0" not in table:
                    raise SetupError(f"could not refuse aten::{qualified}")


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


def _function_refusals(functions: dict, record: list):
    """A torch-function mode that refuses the banned torch functions (``functions``: callable ->
    banned name) in the calling thread, entered for each call: it catches a banned module whose
    operators are allowed (nn.MultiheadAttention's slow path) before it decomposes."""
    class _RefuseFunctions(_TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = functions.get(func)
            if name is not None:
                record.append(["function", name])
                raise BannedOperation(f"{name} is not allowed in this exercise (the grader refuses it)")
            return func(*args, **(kwargs or {}))

    return _RefuseFunctions


# The objects that hold the refusals above are reachable only through the garbage collector's
# lists or native memory; both are refused for the whole life of a learner process, loading
# included (no honest notebook needs them). Frames are refused while a function is called.
_ALWAYS_REFUSED = frozenset({"gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys._current_frames",
                             "code.__new__", "sys.settrace", "sys.setprofile"})
_IN_CALL_REFUSED = frozenset({"sys._getframe", "sys._getframemodulename"})
_FRAME_ATTRIBUTES = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame"})


def _memory_path(path) -> bool:
    """Whether opening ``path`` could reach a process's memory (/proc/<pid>/mem, map_files), by
    its name: a relative name opened from a directory descriptor, or a path through /dev/fd,
    still ends in ``mem``; no link into /proc can be made (``os.symlink`` is refused for those)."""
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, str):
        return False
    return path.rstrip("/").rsplit("/", 1)[-1] in ("mem", "map_files", "pagemap") or "map_files" in path


# torch._C's switches that would let learner code compile operators into kernels of TorchScript's
# fusers or NNC (the tensor-expression compiler), which compute them with their own loops, not
# with the kernels _arm replaces (a stop-21 red team ran aten::softmax through
# torch._C._te.TensorExprKernel for full marks).
_COMPILER_SWITCHES = ("_jit_set_te_must_use_llvm_cpu", "_jit_set_texpr_fuser_enabled", "_jit_override_can_fuse_on_cpu",
                      "_jit_override_can_fuse_on_cpu_legacy", "_jit_set_llga_enabled", "_jit_set_fusion_strategy",
                      "_jit_set_texpr_reductions_enabled", "_jit_set_texpr_dynamic_shape_enabled",
                      "_jit_texpr_set_fallback_allowed")


def _disable_compilers() -> None:
    """Turn the CPU fusers off and make NNC unable to build a kernel (it must use LLVM, which this
    torch lacks), then remove the switches and the NNC module, so that learner code cannot turn
    them back on. TorchScript itself still runs, operator by operator, through the dispatcher."""
    C = torch._C
    C._jit_override_can_fuse_on_cpu(False)
    C._jit_set_texpr_fuser_enabled(False)
    C._jit_set_llga_enabled(False)
    C._jit_set_te_must_use_llvm_cpu(True)
    for name in (*_COMPILER_SWITCHES, "_te"):
        if hasattr(C, name):
            delattr(C, name)
    sys.modules.pop("torch._C._te", None)


def _refusing_code(free: int):
    """Code that raises, with ``free`` free variables (a function's code can only be swapped for
    code with as many as its closure has cells)."""
    names = [f"_v{i}" for i in range(free)]
    source = ("def outer():\n" + "".join(f"    {n} = None\n" for n in names)
              + "    def refused(*args, **kwargs):\n" + "".join(f"        {n}\n" for n in names)
              + "        raise RuntimeError('torch\\'s own Python version of an operator this exercise bans: "
              "refused in the grader')\n    return refused\n")
    namespace: dict = {}
    exec(source, namespace)  # noqa: S102 - our own fixed text
    return namespace["outer"]().__code__


def _refuse_python_versions(packets: list[str]) -> None:
    """torch keeps Python versions of many operators (torch._decomp's decompositions, torch._refs,
    an operator's ``py_kernels``), written with allowed operators: called directly they compute a
    banned built-in without the kernels _arm replaces (a stop-21 red team's full marks). Each such
    function of a refused operator, and every function it wraps, gets code that raises. The
    function objects stay where they are, so every reference to them (tables, wrappers, names
    assembled at run time) reaches the refusal. Called before the audit hook refuses ``__code__``."""
    import types

    import torch._decomp
    import torch._refs

    modules = [m for name, m in list(sys.modules.items())
               if m is not None and name.startswith(("torch._refs", "torch._decomp", "torch._prims"))]
    found = []
    for packet in packets:
        op = getattr(torch.ops.aten, packet, None)
        if op is None:
            continue
        for name in op.overloads():
            overload = getattr(op, name)
            found += [table[overload] for table in torch._decomp.global_decomposition_table.values()
                      if overload in table]
            found += list(overload.py_kernels.values())
        found += [vars(m)[packet] for m in modules if packet in vars(m)]
        found += [vars(m)[packet.lstrip("_")] for m in modules if packet.lstrip("_") in vars(m)]
    seen: set[int] = set()
    for fn in found:
        while isinstance(fn, types.FunctionType) and id(fn) not in seen:
            seen.add(id(fn))
            fn.__code__ = _refusing_code(len(fn.__code__.co_freevars))
            fn = getattr(fn, "__wrapped__", None)


def _install_guard(refused_modules: frozenset, record: list, calling: list) -> None:
    """Add the audit hook (it cannot be removed once added). Its state is immutable but for the
    record it appends to and ``calling`` (``[True]`` while a function is called): turning either
    back only changes what is reported, never what is refused."""
    refused = frozenset(refused_modules)  # the exercise's banned modules and those that reach native memory
    seccomp_call = int(ctypes.cast(_libc.prctl, ctypes.c_void_p).value or 0)

    def audit(event: str, args: tuple) -> None:
        if event == "import" and args and isinstance(args[0], str):
            top = args[0].split(".")[0]
            if top in refused:
                record.append(["module", top])
                raise BannedOperation(f"importing {args[0]}: this exercise asks you not to use {top}")
        elif event in _ALWAYS_REFUSED or (event == "object.__setattr__" and len(args) > 1 and args[1] == "__code__"):
            record.append(["introspection", event])
            raise BannedOperation(f"{event} is not allowed in the grader's process")
        elif event.startswith("ctypes."):
            # Ours alone: loading a (stricter) seccomp filter through prctl. Learner code may do that too.
            if event == "ctypes.call_function" and args and args[0] == seccomp_call:
                return
            record.append(["introspection", "ctypes"])
            raise BannedOperation(f"{event} is not allowed in the grader's process")
        elif event == "open" and args and _memory_path(args[0]):
            record.append(["introspection", "/proc/self/mem"])
            raise BannedOperation("opening a process's memory is not allowed in the grader's process")
        elif event == "os.symlink" and args and "proc" in os.fsdecode(str(args[0])):
            record.append(["introspection", "/proc/self/mem"])
            raise BannedOperation("links into /proc are not allowed in the grader's process")
        elif calling[0] and (event in _IN_CALL_REFUSED or (
                event == "object.__getattr__" and len(args) > 1 and args[1] in _FRAME_ATTRIBUTES)):
            record.append(["introspection", event])
            raise BannedOperation(f"{event} is not allowed while the grader calls your function")

    sys.addaudithook(audit)


def _run_timed(seconds: float, fn, *args, **kwargs):
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn(*args, **kwargs)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _snapshot(value):
    """A copy of an argument to compare after the call (tensors, and containers of plain data)."""
    if isinstance(value, _Tensor):
        return value.detach().clone()
    if isinstance(value, (list, tuple, dict, bytearray)):  # a tuple may hold tensors changed in place
        return copy.deepcopy(value)
    return None


def _same(before, after) -> bool:
    if isinstance(before, _Tensor):
        if type(after) is not _Tensor or before.shape != after.shape or before.dtype != after.dtype:
            return False
        if before.is_floating_point() or before.is_complex():
            return bool(((before == after) | (before.isnan() & after.isnan())).all())
        return bool(torch.equal(before, after))
    if isinstance(before, dict):
        return type(after) is dict and before.keys() == after.keys() and all(_same(before[k], after[k]) for k in before)
    if isinstance(before, (list, tuple)):  # e.g. a KV cache: a list of (k, v) tuples of tensors
        return type(after) is type(before) and len(before) == len(after) and all(
            _same(a, b) for a, b in zip(before, after))
    try:
        return bool(before == after)
    except Exception:  # noqa: BLE001
        return False


def serve(sock: socket.socket, record: list, mode: list, calling: list) -> None:
    """Answer load/call requests for one submission until "exit" or end of input.

    ``record`` collects what the refusals caught ([kind, key] pairs; the grader turns them into
    words); ``mode`` tells the kernels of ``_arm`` whether a function is being called."""
    namespace: dict = {"__name__": "__main__"}
    runner = notebook_contract.CellRunner(namespace)  # magics behave as in JupyterLab and qkv check
    function_modes: dict = {}
    while True:
        request = _read(sock)
        if request is None or request.get("op") == "exit":
            return
        if request.get("op") == "load":
            for index, cell in enumerate(request["cells"]):
                _send(sock, {"event": "cell_start", "index": index})
                error, notes = None, []
                seen = len(record)
                try:
                    name = f"<cell {cell.get('id', index)}>"
                    notes = _run_timed(request["cell_timeout"], runner.run, cell["source"], name)
                except BaseException as exc:  # the learner's cell failed; the rest still load
                    error = _describe_error(exc)
                replaced = sorted({str(key) for kind, key in record[seen:] if kind == "load-op"})
                _send(sock, {"event": "cell_done", "index": index, "error": error, "notes": notes[:20],
                             "banned": replaced[:20]})
            functions = sorted(k for k, v in namespace.items() if callable(v) and not k.startswith("__"))
            _send(sock, {"event": "loaded", "functions": functions})
        elif request.get("op") == "call":
            fn = namespace.get(request["name"])
            del record[:]
            try:
                if not callable(fn):
                    raise NameError(f"{request['name']} is not defined")
                args = wire.decode(request["args"])
                kwargs = wire.decode(request["kwargs"])
                key = repr(request.get("deny_functions", []))
                if key not in function_modes:
                    function_modes[key] = _function_refusals(_resolve(request.get("deny_functions", [])), record)
                before = {i: _snapshot(a) for i, a in enumerate(args)}
                before.update({k: _snapshot(a) for k, a in kwargs.items()})
                mode[0] = "call"
                calling[0] = True
                try:
                    with function_modes[key]():
                        result = _run_timed(request["timeout"], fn, *args, **kwargs)
                finally:
                    calling[0] = False
                    mode[0] = "load"
                # What the function changed in place: named to the grader, with the new value of
                # tensors and generators (an argument whose contract is to change may go back).
                changed = [k for k, old in before.items() if old is not None
                           and not _same(old, args[k] if isinstance(k, int) else kwargs[k])]
                changed += [k for k, a in [*enumerate(args), *kwargs.items()] if type(a) is torch.Generator]
                values = {k: (args[k] if isinstance(k, int) else kwargs[k]) for k in changed}
                values = {k: v for k, v in values.items() if type(v) in (torch.Tensor, torch.Generator)}
                reply = {"event": "result", "value": wire.encode(result),
                         "changed": [[k, wire.encode(values.get(k))] for k in changed]}
            except wire.NotPlainData as exc:
                reply = {"event": "error", "type": "NotPlainData", "message": str(exc)}
            except BaseException as exc:
                reply = {"event": "error", **_describe_error(exc)}
            hits = [h for h in record if h[0] != "load-op"]
            if hits:
                reply["banned"] = [list(h) for h in dict.fromkeys(tuple(h) for h in hits)][:20]
            try:
                _send(sock, reply)
            except (OverflowError, ValueError) as exc:
                _send(sock, {"event": "error", "type": "NotPlainData", "message": str(exc)})


def _fresh_tmp(config: dict) -> None:
    """Mount an empty, size-capped tmpfs on /tmp, with the read-only mounts that live under /tmp
    (a checkout or venv in /tmp) bound again inside it, then on /dev/shm; a new /proc shows only
    this pid namespace."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE, None, "make the mounts private")
    # noexec: nothing written there can be mapped as code (a compiled extension, torch.compile's
    # kernels), so the only native code in a learner process is the system's own libraries.
    _mount("tmpfs", STAGE, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"size={config['tmp_bytes']},mode=1777",
           "mount /tmp")
    for path in config["tmp_binds"]:
        inside = os.path.join(STAGE, os.path.relpath(path, "/tmp"))
        os.makedirs(inside, exist_ok=True)
        _mount(path, inside, None, MS_BIND | MS_REC, None, f"bind {path}")
        _mount(None, inside, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, None,
               f"make {path} read-only")
    _mount(STAGE, "/tmp", None, MS_MOVE, None, "move the new /tmp in place")
    _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"size={config['shm_bytes']},mode=1777",
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
    record: list = []
    mode, calling = ["load"], [False]
    try:
        _fresh_tmp(config)
        _drop_privileges(config.get("uid"))
        os.chdir("/tmp")
        _fresh_log()
        _load_seccomp(config["seccomp"])
        process = config.get("process") or {}
        _arm({str(k): str(v) for k, v in process.get("deny_ops", [])}, record, mode)
        _disable_compilers()
        _refuse_python_versions([str(k) for k, _ in process.get("deny_ops", [])])
        _install_guard(frozenset(str(m) for m in process.get("deny_modules", [])), record, calling)
    except BaseException as exc:  # nothing of the learner's has run yet: our failure
        try:
            _send(sock, {"event": "fatal", "message": f"{type(exc).__name__}: {exc}"[:500]})
        finally:
            os._exit(SETUP_FAILED)
    status = 0
    try:
        _send(sock, {"event": "ready"})
        serve(sock, record, mode, calling)
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
                    process = request.get("process")
                    _keeper(theirs, report_w, {**config, "process": process if isinstance(process, dict) else {}})
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


class _NoStack:
    """Stands in for ``traceback`` in torch's lazy device modules: they record the caller's stack
    (through sys._getframe) for an error message if a device that is not there fails to start."""

    @staticmethod
    def format_stack(*args, **kwargs) -> list[str]:
        return []


def _no_frame_walks() -> None:
    """Let honest calls that walk frames internally run while a function is called (frames are
    refused then, _IN_CALL_REFUSED): ``torch.manual_seed`` queues seeds for CUDA, XPU and MTIA
    with the caller's stack, and ``logging`` looks up the caller's file and line. Without this a
    graded function that seeds torch's global generator or logs would score 0 as an intrusion.
    ``collections.namedtuple`` looks up its caller's module through a frame: learner code runs
    as ``__main__``, which is what it finds in Jupyter too. No stand-in hands a frame to anyone."""
    import collections
    import logging

    original_namedtuple = collections.namedtuple

    @functools.wraps(original_namedtuple)
    def namedtuple(typename, field_names, *, rename=False, defaults=None, module=None):
        return original_namedtuple(typename, field_names, rename=rename, defaults=defaults,
                                   module="__main__" if module is None else module)

    collections.namedtuple = namedtuple

    for name in ("torch.cuda", "torch.xpu", "torch.mtia"):
        module = sys.modules.get(name)
        if module is not None and getattr(module, "traceback", None) is not None:
            module.traceback = _NoStack
    logging.currentframe = lambda: None  # records say "(unknown file)": the log is never shown


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
    _no_frame_walks()
    zygote(control)


if __name__ == "__main__":
    main()
