"""A throw-away JupyterLab server and the page actions the JupyterLab browser tests share.

Named lab_server, not jupyterlab_server: tests/ is on sys.path and that name is a real package.

The recipe (verified on this machine) is in /work/shared/design/architecture.md, "Testing
JupyterLab in a real browser". Everything the server reads or writes lives in one temporary
folder, so a learner's own Jupyter configuration, workspaces and settings can neither change
what the tests see nor be touched by them.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from playwright.sync_api import Locator, Page, expect

CHROMIUM = "/usr/bin/chromium"
# Same flags as tests/test_browser.py: no sandbox (we may run as root), no network side traffic.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Generous: on a loaded 2-core machine a kernel start plus a chapter run can take tens of seconds.
SERVER_START_S = 90
KERNEL_READY_MS = 90_000
RUN_MS = 120_000

# JupyterLab settings that make the UI deterministic for a test:
# - no "would you like news?" pop-up that could cover cells and steal clicks;
# - every cell stays in the DOM (no virtual scrolling), so the n-th `.jp-Cell` is the n-th cell.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


@dataclass(frozen=True)
class JupyterLab:
    """A running server: where it is, how to log in, what it serves, where it logs."""

    port: int
    token: str
    root: Path
    log: Path

    def url(self, path: str = "lab") -> str:
        """URL of ``path`` on this server, with the login token."""
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}?token={self.token}"

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server log, for error messages."""
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError as exc:
            return f"(no server log: {exc})"


def _free_port() -> int:
    """A port nobody listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def jupyterlab(root: Path, state: Path) -> Iterator[JupyterLab]:
    """Run ``jupyter lab`` on loopback serving ``root``; all its config and state go under ``state``.

    The server is stopped (SIGTERM, then SIGKILL) when the block ends, also on failure.
    """
    env = dict(os.environ)
    for var, sub in [("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"),
                     ("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTERLAB_SETTINGS_DIR", "settings"),
                     ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"), ("IPYTHONDIR", "ipython")]:
        (state / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(state / sub)
    for name, settings in LAB_SETTINGS.items():
        path = state / "settings" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings))

    lab = JupyterLab(port=_free_port(), token=secrets.token_hex(16), root=root, log=state / "jupyterlab.log")
    jupyter = Path(sys.executable).parent / "jupyter"
    cmd = [str(jupyter), "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={lab.port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={lab.token}",
           f"--ServerApp.root_dir={root}"]
    with open(lab.log, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        _wait_until_ready(lab, proc)
        yield lab
    finally:
        _stop(proc)


def _wait_until_ready(lab: JupyterLab, proc: subprocess.Popen) -> None:
    """Poll ``/api/status`` until it answers 200; fail with the server log if it dies or hangs."""
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with code {proc.returncode} before it was ready; "
                               f"its log ({lab.log}) ends:\n{lab.log_tail()}")
        try:
            with urllib.request.urlopen(lab.url("api/status"), timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"jupyter lab did not answer /api/status within {SERVER_START_S} s; "
                       f"its log ({lab.log}) ends:\n{lab.log_tail()}")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server (it shuts its kernels down), SIGKILL its process group if it hangs."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: only the server and its kernels
        proc.wait(timeout=10)


# ----------------------------------------------------------------------------- page actions

def open_notebook(page: Page, lab: JupyterLab, name: str, n_cells: int) -> Locator:
    """Open ``name`` (relative to the server root), wait for its ``n_cells`` cells and an idle kernel.

    Returns the locator of the notebook's cells, in notebook order.
    """
    page.goto(lab.url(f"lab/tree/{name}"), timeout=KERNEL_READY_MS)
    cells = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell")
    expect(cells, f"{name}: JupyterLab did not render its {n_cells} cells").to_have_count(
        n_cells, timeout=KERNEL_READY_MS)
    wait_kernel_idle(page)
    return cells


def wait_kernel_idle(page: Page) -> None:
    """Wait until the status bar says the kernel exists and is idle.

    The execution indicator says "idle" before a kernel exists, and a Run All sent then is lost,
    so the kernel name in the status bar ("Python 3 (ipykernel) | Idle") is what counts.
    """
    status = page.locator("#jp-main-statusbar .jp-StatusBar-TextItem", has_text="| Idle")
    expect(status.first, "the kernel did not start and become idle (status bar)").to_be_visible(
        timeout=KERNEL_READY_MS)


def run_all(page: Page) -> None:
    """Run > Run All Cells, through the menu as a learner would."""
    page.locator("#jp-MainMenu .lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()


def execution_count(cell: Locator) -> str:
    """The cell's input prompt text: "[3]:" after a run, "[*]:" while queued or running, "[ ]:" never run."""
    return cell.locator(".jp-InputPrompt").inner_text().strip()


def wait_executed(page: Page, cells: Locator, indices: list[int], timeout_ms: int = RUN_MS) -> None:
    """Wait until each cell in ``indices`` shows an execution count ("[n]:", not "[*]:" or "[ ]:")."""
    handle = cells.element_handles()
    try:
        page.wait_for_function(
            """([cells, indices]) => indices.every(i => {
                   const p = cells[i].querySelector('.jp-InputPrompt');
                   return p && /^\\[\\d+\\]:?$/.test(p.textContent.trim());
               })""",
            arg=[handle, indices], timeout=timeout_ms)
    except Exception as exc:  # say which cells never ran, not just "timeout"
        prompts = {i: execution_count(cells.nth(i)) for i in indices}
        raise AssertionError(f"cells did not all finish within {timeout_ms / 1000:.0f} s; "
                             f"input prompts by cell index: {prompts}") from exc
