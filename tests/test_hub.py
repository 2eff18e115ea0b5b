"""A whole class on a real course hub, on loopback, with real processes and a real browser.

``hub/start.py`` (what ``make hub`` runs) starts JupyterHub, configurable-http-proxy from npm,
PAM logins for local accounts created here with ``useradd``, and nbgrader's exchange. Then:

1. learner A, in Chromium, logs in, fetches ``attention`` from the Assignments tab, writes a
   correct softmax and submits;
2. learner B does it with nbgrader's command line: a correct softmax first, then, after the
   due date, a wrong one (a late resubmission);
3. the instructor collects; ``python -m autograder grade --course`` grades in place;
4. feedback goes back through the exchange; each learner fetches their own (A in the browser,
   B on the command line) and sees their score, and B can reach nothing of A's;
5. formgrader, in the instructor's browser, opens the gradebook the grader wrote; a manual
   grade entered there survives a regrade.

Expected scores are reasoned from the notebooks, not from the grader: softmax is worth 3 of
11 points, and every other function is left unattempted. A: 3. B: graded on the latest
submission (wrong softmax), 0, then 2 after the instructor's manual grade.

Everything the test starts (hub, proxy, single-user servers, kernels, browser) is stopped and
the accounts are deleted, even on failure; screenshots go to test-artifacts/hub/.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from notebook_tools import learner_notebook

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "hub"))

from qkv_hub import PROXY, HubSettings  # noqa: E402
from start import run_as  # noqa: E402

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Generous: a loaded 2-core machine takes tens of seconds to import JupyterLab for a new account.
START_S = 400
UI_MS = 180_000
LAB_SETTINGS = {  # a learner's own preferences: no news pop-up over the page, every cell in the DOM
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}
WRONG_SOFTMAX = '''def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Numerically stable softmax along ``dim``."""
    return x.exp() / x.exp().sum()  # sums over every element, not along dim
'''


def _cell(nb, grade_id: str) -> str:
    return next(c.source for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


CORRECT_SOFTMAX = _cell(learner_notebook("attention", {"softmax": "reference"}), "softmax")


# --------------------------------------------------------------------------- the machine

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _useradd(name: str, password: str) -> pwd.struct_passwd:
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True, capture_output=True)
    subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True, capture_output=True)
    account = pwd.getpwnam(name)
    for setting, value in LAB_SETTINGS.items():
        path = Path(account.pw_dir) / ".jupyter" / "lab" / "user-settings" / setting
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    for path in [Path(account.pw_dir) / ".jupyter", *(Path(account.pw_dir) / ".jupyter").rglob("*")]:
        os.chown(path, account.pw_uid, account.pw_gid)
    return account


def _processes_of(uids: set[int]) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if proc.stat().st_uid in uids:
                    pids.append(int(proc.name))
            except FileNotFoundError:
                pass
    return pids


def _stop(pid: int, grace_s: float = 30) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + grace_s
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Hub:
    def __init__(self, root: Path, artifacts: Path):
        self.root = root
        self.shots = artifacts
        tag = secrets.token_hex(3)
        self.passwords = {}
        self.accounts = {}
        for role in ("teacher", "ada", "ben"):
            name = f"qkvt{tag}{role[0]}"
            self.passwords[role] = secrets.token_urlsafe(12)
            self.accounts[role] = _useradd(name, self.passwords[role])
        self.port = _free_port()
        self.state = root / "state"
        self.log = root / "hub.log"
        self.proc: subprocess.Popen | None = None

    def name(self, role: str) -> str:
        return self.accounts[role].pw_name

    def home(self, role: str) -> Path:
        return Path(self.accounts[role].pw_dir)

    @property
    def course(self) -> Path:
        return self.home("teacher") / "qkv-course"

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def start(self) -> None:
        cmd = [sys.executable, str(REPO / "hub" / "start.py"), "--instructor", self.name("teacher"),
               "--learners", f"{self.name('ada')},{self.name('ben')}", "--state", str(self.state),
               "--assignments", "attention", "--port", str(self.port), "--hub-port", str(_free_port()),
               "--proxy-api-port", str(_free_port())]
        with open(self.log, "w") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + START_S
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the hub exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url("hub/login"), timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(1)
        raise AssertionError(f"the hub did not answer within {START_S} s:\n{self.log_tail()}")

    def settings(self) -> HubSettings:
        return HubSettings.load(self.state / "hub.json")

    def as_user(self, role: str, *command: str, cwd: Path | None = None, check: bool = True):
        return run_as(self.settings(), self.accounts[role], list(command), cwd=cwd or self.home(role), check=check)

    def nbgrader(self, role: str, *args: str, cwd: Path | None = None):
        return self.as_user(role, str(Path(self.settings().bin) / "nbgrader"), *args, cwd=cwd)

    def log_tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc.pid)  # JupyterHub stops every single-user server and the proxy it started
        proxy_pid = self.state / "proxy.pid"
        if proxy_pid.exists():
            try:
                _stop(int(proxy_pid.read_text().strip()), grace_s=5)
            except ValueError:
                pass
        uids = {a.pw_uid for a in self.accounts.values()}
        for pid in _processes_of(uids):  # anything the accounts left running (a kernel, a server)
            _stop(pid, grace_s=5)
        for account in self.accounts.values():
            subprocess.run(["userdel", "--remove", account.pw_name], capture_output=True)


def _let_accounts_reach(*paths: Path) -> dict[Path, int]:
    """Make ``paths`` readable and every folder above them searchable by other accounts, as
    hub/start.py requires, for the test's duration; return the modes to restore.

    A CI clone may live under /root (mode 0700); search permission on the way is all that is
    added, so nothing becomes listable that was not."""
    changed: dict[Path, int] = {}
    for path in paths:
        for folder in [*reversed(path.parents), path]:
            mode = folder.stat().st_mode
            need = stat.S_IXOTH | (stat.S_IROTH if folder in paths else 0)
            if mode & need != need and folder not in changed:
                changed[folder] = stat.S_IMODE(mode)
                folder.chmod(stat.S_IMODE(mode) | need)
    return changed


@pytest.fixture(scope="module")
def hub(artifacts):
    if os.geteuid() != 0:
        pytest.fail("the hub test creates local accounts and runs JupyterHub: run it as root (CI does)")
    if not PROXY.exists():
        pytest.fail(f"configurable-http-proxy is not installed ({PROXY}): run `make hub-deps`")
    opened = _let_accounts_reach(REPO, Path(sys.prefix))
    # Not pytest's tmp_path: that is private to root, and the accounts must reach the exchange.
    root = Path(tempfile.mkdtemp(prefix="qkv-hub-test-"))
    root.chmod(0o755)
    shots = artifacts / "hub"
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    hub = Hub(root, shots)
    try:
        hub.start()
        yield hub
    finally:
        hub.stop()
        shutil.copyfile(hub.log, shots / "hub.log") if hub.log.exists() else None
        shutil.rmtree(root, ignore_errors=True)
        for folder, mode in opened.items():
            folder.chmod(mode)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


# --------------------------------------------------------------------------- page steps

def _login(browser, hub: Hub, role: str, landing: str):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(UI_MS)
    page.goto(hub.url("hub/login"))
    page.fill("#username_input", hub.name(role))
    page.fill("#password_input", hub.passwords[role])
    page.click("#login_submit")
    page.wait_for_url(f"**/user/{hub.name(role)}/lab**")
    page.wait_for_selector("#jp-main-dock-panel")
    if landing != "lab":
        page.goto(hub.url(f"user/{hub.name(role)}/{landing}"))
    return context, page


def _open_assignments(page) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text="Nbgrader").click()
    page.locator(".lm-Menu-itemLabel", has_text="Assignment List").click()
    page.wait_for_selector("#released_assignments_list")


def _shot(page, hub: Hub, name: str) -> None:
    page.screenshot(path=str(hub.shots / f"{name}.png"))


def _set_cell(page, cell_text: str, source: str) -> None:
    """Replace the source of the notebook cell that contains ``cell_text``."""
    cell = page.locator(".jp-Notebook .jp-Cell", has=page.locator(".cm-content", has_text=cell_text)).first
    editor = cell.locator(".cm-content")
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    # insert_text: one input event, so CodeMirror adds no indentation or closing brackets of its own.
    page.keyboard.insert_text(source)


def _learner_submits_in_browser(browser, hub: Hub) -> None:
    context, page = _login(browser, hub, "ada", "lab")
    try:
        _open_assignments(page)
        page.locator("#released_assignments_list .list_item", has_text="attention").locator("button",
                                                                                          has_text="Fetch").click()
        fetched = page.locator("#fetched_assignments_list .list_item", has_text="attention").first
        fetched.locator("button", has_text="Submit").wait_for()
        _shot(page, hub, "1-ada-fetched")
        fetched.locator("a.assignment-notebooks-link").click()
        page.locator("#fetched_assignments_list .nested_list_item a", has_text="attention").click()
        page.wait_for_selector(".jp-Notebook .cm-content:has-text('def softmax')")
        _set_cell(page, "def softmax", CORRECT_SOFTMAX)
        page.keyboard.press("Control+S")
        page.wait_for_function("!document.querySelector('.jp-mod-current.jp-mod-dirty')")
        _shot(page, hub, "2-ada-answered")
        page.locator(".lm-DockPanel-tabBar .lm-TabBar-tabLabel", has_text="Assignments").click()
        page.locator("#fetched_assignments_list .list_item", has_text="attention").first.locator(
            "button", has_text="Submit").click()
        page.locator("#submitted_assignments_list .list_item", has_text="attention").first.wait_for()
        _shot(page, hub, "3-ada-submitted")
    finally:
        _shot(page, hub, "ada-last")
        context.close()
    saved = nbformat.read(hub.home("ada") / "attention" / "attention.ipynb", as_version=4)
    assert _cell(saved, "softmax").strip() == CORRECT_SOFTMAX.strip(), "the browser edit did not reach the file"


def _learner_submits_on_command_line(hub: Hub, softmax: str) -> None:
    folder = hub.home("ben") / "attention"
    if not folder.exists():
        hub.nbgrader("ben", "fetch_assignment", "attention")
    path = folder / "attention.ipynb"
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == "softmax":
            cell.source = softmax
    nbformat.write(nb, path)  # as B's editor would: B's own file, edited in place
    os.chown(path, hub.accounts["ben"].pw_uid, hub.accounts["ben"].pw_gid)
    hub.nbgrader("ben", "submit", "attention")


def _grades(hub: Hub) -> dict[str, dict]:
    out = hub.course / "qkv-grades" / "attention"
    return {r["student_id"]: r for r in csv.DictReader(open(out / "grades.csv", encoding="utf-8"))}


def _grade(hub: Hub) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "autograder", "grade", "attention", "--course", str(hub.course),
                           "--quiet"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _gradebook_scores(hub: Hub) -> dict[str, float]:
    with sqlite3.connect(hub.course / "gradebook.db") as db:
        rows = db.execute("""
            SELECT student.id, SUM(COALESCE(grade.manual_score, grade.auto_score, 0))
            FROM grade JOIN submitted_notebook ON grade.notebook_id = submitted_notebook.id
            JOIN submitted_assignment ON submitted_notebook.assignment_id = submitted_assignment.id
            JOIN student ON submitted_assignment.student_id = student.id GROUP BY student.id""").fetchall()
    return dict(rows)


# --------------------------------------------------------------------------- the class

@pytest.mark.slow
@pytest.mark.browser
def test_a_class_round_trip_on_the_hub(hub: Hub, browser):
    ada, ben, teacher = hub.name("ada"), hub.name("ben"), hub.name("teacher")

    # The hub made every home private (feedback lands in learners' homes; the course, with every
    # grade, is in the instructor's), and the course folder itself.
    for folder in (hub.home("ada"), hub.home("ben"), hub.home("teacher"), hub.course):
        assert folder.stat().st_mode & 0o077 == 0, folder
    # qkv is importable by a learner, from the hub's Python.
    hub.as_user("ben", str(Path(hub.settings().bin) / "python"), "-c", "import qkv")

    # 1-2. Submissions: A in the browser; B on the command line, then again after the due date.
    _learner_submits_in_browser(browser, hub)
    _learner_submits_on_command_line(hub, CORRECT_SOFTMAX)
    due = dt.datetime.now(dt.UTC).replace(microsecond=0)
    hub.nbgrader("teacher", "db", "assignment", "add", "attention", f"--duedate={due:%Y-%m-%d %H:%M:%S} UTC",
                 cwd=hub.course)
    time.sleep(2)
    _learner_submits_on_command_line(hub, WRONG_SOFTMAX)

    # 3. The instructor collects (the latest submission of each learner) and grades in place.
    hub.nbgrader("teacher", "collect", "attention", cwd=hub.course)
    submitted = hub.course / "submitted"
    assert sorted(p.name for p in submitted.iterdir()) == sorted([ada, ben])
    assert "sums over every element" in (submitted / ben / "attention" / "attention.ipynb").read_text()
    before = (submitted / ben / "attention" / "attention.ipynb").read_bytes()
    _grade(hub)
    rows = _grades(hub)
    assert {s: (float(r["score"]), r["status"]) for s, r in rows.items()} == {
        ada: (3.0, "graded"), ben: (0.0, "graded")}
    assert rows[ben]["message"].startswith("late: submitted ") and "after the due date" in rows[ben]["message"]
    assert "late" not in rows[ada]["message"]
    report = (hub.course / "qkv-grades" / "attention" / "report.md").read_text()
    assert re.search(rf"## Late submissions\n\n- \*\*{ben}\*\*: late: submitted [^(]+ after the due date", report)
    assert (submitted / ben / "attention" / "attention.ipynb").read_bytes() == before  # graded in place, untouched
    owner = hub.accounts["teacher"].pw_uid
    assert all(p.stat().st_uid == owner for p in [hub.course, *hub.course.rglob("*")]), "root-owned files left"

    # 4. Feedback through the exchange.
    hub.nbgrader("teacher", "release_feedback", "attention", cwd=hub.course)
    hub.nbgrader("ben", "fetch_feedback", "attention")
    ben_pages = list((hub.home("ben") / "attention" / "feedback").rglob("*.html"))
    assert len(ben_pages) == 1 and "attention (Score: 0.0 / 11.0)" in ben_pages[0].read_text()

    context, page = _login(browser, hub, "ada", "lab")
    try:
        _open_assignments(page)
        submitted_item = page.locator("#submitted_assignments_list .list_item", has_text="attention").first
        submitted_item.locator("button", has_text="Fetch Feedback").click()
        link = page.locator("#submitted_assignments_list a", has_text="view feedback").first
        link.wait_for()
        _shot(page, hub, "4-ada-feedback-fetched")
        link.click()  # nbgrader's link takes the file browser to the fetched feedback folder
        page.locator(".jp-DirListing-item", has_text="attention.html").dblclick()
        viewer = page.frame_locator(".jp-HTMLViewer iframe")
        viewer.locator("text=attention (Score: 3.0 / 11.0)").wait_for()
        _shot(page, hub, "5-ada-feedback")
    finally:
        _shot(page, hub, "ada-feedback-last")
        context.close()

    # A learner can never see another learner's feedback.
    ada_page = next((hub.home("ada") / "attention" / "feedback").rglob("*.html"))
    exchange_feedback = hub.settings().exchange / "qkv" / "feedback"
    for attempt in (["ls", str(exchange_feedback)], ["cat", str(ada_page)], ["ls", str(hub.home("ada"))]):
        proc = hub.as_user("ben", *attempt, check=False)
        assert proc.returncode != 0 and "Permission denied" in proc.stderr, attempt
    assert len(list((hub.home("ben") / "attention" / "feedback").rglob("*.html"))) == 1

    # 5. Formgrader opens the grader's gradebook; a manual grade survives a regrade.
    context, page = _login(browser, hub, "teacher", "formgrader/manage_assignments")
    try:
        row = page.locator("tr", has=page.locator("a", has_text="attention")).first
        row.wait_for()
        _shot(page, hub, "6-formgrader-assignments")
        cells = row.locator("td").all_inner_texts()
        assert "released" in cells and "2" in cells, cells  # the grader's gradebook: both submissions
        with sqlite3.connect(hub.course / "gradebook.db") as db:
            (submission_id,) = db.execute("""
                SELECT submitted_notebook.id FROM submitted_notebook
                JOIN submitted_assignment ON submitted_notebook.assignment_id = submitted_assignment.id
                WHERE submitted_assignment.student_id = ?""", (ben,)).fetchone()
        page.goto(hub.url(f"user/{teacher}/formgrader/submissions/{submission_id}/?index=0"))
        # Formgrader renders each grade from its API after the page loads (the autograded score
        # becomes the box's placeholder); typing before that would be overwritten.
        page.wait_for_function("(document.querySelector('input.score#test_softmax') || {}).placeholder === '0'")
        score = page.locator("input.score#test_softmax")
        score.fill("2")
        score.press("Tab")  # formgrader saves on change
        deadline = time.time() + 60
        while _gradebook_scores(hub).get(ben) != 2.0 and time.time() < deadline:
            time.sleep(0.5)
        _shot(page, hub, "7-formgrader-manual-grade")
    finally:
        _shot(page, hub, "formgrader-last")
        context.close()
    assert _gradebook_scores(hub) == {ada: 3.0, ben: 2.0}

    _grade(hub)
    rows = _grades(hub)
    assert {s: float(r["score"]) for s, r in rows.items()} == {ada: 3.0, ben: 2.0}
    assert _gradebook_scores(hub) == {ada: 3.0, ben: 2.0}


# --------------------------------------------------------------------------- the course layout (fast, no hub)

LATE_CASES = {  # student: (timestamp.txt, the expected note)
    "ada": ("2026-12-01 14:05:00.000000 UTC",
            "late: submitted 2 h 5 min after the due date (2026-12-01 14:05:00 UTC, due 2026-12-01 12:00:00 UTC)"),
    "ben": ("2026-12-03 13:00:00.000000 UTC",
            "late: submitted 2 d 1 h after the due date (2026-12-03 13:00:00 UTC, due 2026-12-01 12:00:00 UTC)"),
    "cy": ("2026-12-01 12:00:07.000000 UTC",
           "late: submitted 7 s after the due date (2026-12-01 12:00:07 UTC, due 2026-12-01 12:00:00 UTC)"),
    "dee": ("2026-12-01 11:59:59.000000 UTC", None),  # on time
    "eve": (None, None),  # no timestamp: nothing to say
}


@pytest.fixture(scope="module")
def small_course(tmp_path_factory) -> Path:
    """An nbgrader course after `collect`: submitted/<student>/attention/ with timestamps, and a due date."""
    from nbgrader.api import Gradebook
    from nbgrader.utils import parse_utc

    import autograder.course  # noqa: F401  (puts the venv's alembic on PATH for nbgrader's gradebook)

    course = tmp_path_factory.mktemp("layout") / "course"
    with Gradebook(f"sqlite:///{course.parent / 'gradebook.db'}") as gb:
        gb.update_or_create_assignment("attention", duedate=dt.datetime(2026, 12, 1, 12, 0, 0))
        for student, (timestamp, _) in LATE_CASES.items():
            folder = course / "submitted" / student / "attention"
            folder.mkdir(parents=True)
            nbformat.write(learner_notebook("attention", {}), folder / "attention.ipynb")
            gb.update_or_create_student(student)
            if timestamp:
                (folder / "timestamp.txt").write_text(timestamp)
                gb.update_or_create_submission("attention", student, timestamp=parse_utc(timestamp))
    shutil.move(course.parent / "gradebook.db", course / "gradebook.db")
    (course / "submitted" / "fay" / "other").mkdir(parents=True)  # fay submitted another assignment only
    (course / "submitted" / "gus" / "attention").mkdir(parents=True)  # an empty submission
    return course


@pytest.mark.parametrize("student", sorted(LATE_CASES))
def test_late_note_from_nbgrader_timestamps_and_due_date(small_course, student):
    from autograder.nbgrader_course import late_note

    assert late_note(small_course / "gradebook.db", "attention", student) == LATE_CASES[student][1]


def test_submitted_layout_is_discovered_in_place(small_course):
    from autograder.nbgrader_course import discover_submitted

    subs = {s.student_id: s for s in discover_submitted(small_course, "attention")}
    assert sorted(subs) == ["ada", "ben", "cy", "dee", "eve", "gus"]
    assert subs["ada"].notebook == small_course / "submitted" / "ada" / "attention" / "attention.ipynb"
    assert "no notebook" in subs["gus"].problem


def test_a_course_whose_source_differs_from_the_reference_is_refused(tmp_path):
    from autograder.course import solution_notebook
    from autograder.nbgrader_course import CourseLayoutError, check_course

    reference = solution_notebook("attention")
    with pytest.raises(CourseLayoutError, match="no submitted/ folder"):
        check_course(tmp_path, "attention", reference)
    (tmp_path / "submitted").mkdir()
    source = tmp_path / "source" / "attention"
    source.mkdir(parents=True)
    (source / "attention.ipynb").write_text("{}")  # the instructor's own version
    with pytest.raises(CourseLayoutError, match="differs from qkv's reference"):
        check_course(tmp_path, "attention", reference)
    shutil.copyfile(reference, source / "attention.ipynb")
    check_course(tmp_path, "attention", reference)  # the same reference: accepted


def test_grade_needs_exactly_one_of_submissions_or_course(tmp_path):
    for args in ([], [str(tmp_path), "--course", str(tmp_path)]):
        proc = subprocess.run([sys.executable, "-m", "autograder", "grade", "attention", *args, "--out", str(tmp_path)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "give either a SUBMISSIONS folder" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--instructor", "no-such-account-qkv"], "no local account 'no-such-account-qkv': create it with `useradd -m"),
    (["--instructor", "root", "--authenticator", "test-dummy", "--ip", "0.0.0.0"], "loopback (127.0.0.1) only"),
])
def test_the_hub_refuses_to_start_with_a_clear_message(tmp_path, args, message):
    if os.geteuid() != 0:
        pytest.fail("run as root: the hub's checks start with root")
    if not PROXY.exists():
        pytest.fail(f"configurable-http-proxy is not installed ({PROXY}): run `make hub-deps`")
    proc = subprocess.run([sys.executable, str(REPO / "hub" / "start.py"), *args, "--state", str(tmp_path / "state"),
                           "--prepare-only"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("cannot start the hub: ") and message in proc.stderr
    assert not (tmp_path / "state").exists()  # refused before touching anything
