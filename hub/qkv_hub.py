"""The course hub's settings, shared by ``start.py`` (which prepares the machine) and
``jupyterhub_config.py`` (which JupyterHub executes). Standard library only: JupyterHub loads
this file with its own interpreter before any server runs.

One machine, everything on it: JupyterHub on loopback (or the address given) with
configurable-http-proxy from npm, PAM logins for local system accounts, one single-user
JupyterLab per account started as that account by ``LocalProcessSpawner``, the course's
virtual environment (so ``import qkv`` works in every kernel), and nbgrader's exchange in
``STATE/exchange`` with the instructor's course in ``COURSE``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

HUB_DIR = Path(__file__).resolve().parent
REPO = HUB_DIR.parent
VENV = REPO / ".venv"
# The interpreter the accounts' servers run (see start.py: ensure_runtime): the course's venv
# itself when every account can run it, else a readable copy of its interpreter with a thin
# venv that reads the course venv's packages.
RUNTIME = HUB_DIR / ".runtime"
PROXY = HUB_DIR / "node_modules" / ".bin" / "configurable-http-proxy"
COURSE_ID = "qkv"
SETTINGS_ENV = "QKV_HUB_SETTINGS"


@dataclass
class HubSettings:
    """Everything that differs between one hub and another; written to ``STATE/hub.json``."""

    state: str  # JupyterHub's database, cookie secret, pid files, the exchange
    course: str  # the instructor's nbgrader course folder (inside the instructor's home)
    instructor: str  # local account that runs formgrader; a JupyterHub admin
    learners: list[str] = field(default_factory=list)  # local accounts allowed to log in
    learner_group: str | None = None  # or: every member of this local group may log in
    ip: str = "127.0.0.1"
    port: int = 8000
    hub_port: int = 8081
    proxy_api_port: int = 8001
    authenticator: str = "pam"  # "pam"; "test-dummy" exists for loopback tests only
    bin: str = str(VENV / "bin")  # where the accounts' python, jupyterhub-singleuser and nbgrader are
    library_path: str = ""  # LD_LIBRARY_PATH for that python (the runtime's copied libpython), if any

    @property
    def exchange(self) -> Path:
        return Path(self.state) / "exchange"

    def save(self) -> Path:
        path = Path(self.state) / "hub.json"
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> HubSettings:
        path = path or os.environ.get(SETTINGS_ENV)
        if not path:
            raise SystemExit(f"{SETTINGS_ENV} is not set: start the hub with `make hub` or hub/start.py")
        return cls(**json.loads(Path(path).read_text()))


def role(settings: HubSettings, user: str) -> str:
    return "instructor" if user == settings.instructor else "learner"


def user_environment(settings: HubSettings, user: str) -> dict[str, str]:
    """Environment of a user's single-user server (and of anything they run from its terminal):
    the course's venv first on PATH, nbgrader's settings for their role."""
    env = {
        "PATH": f"{settings.bin}:/usr/local/bin:/usr/bin:/bin",
        # Read by nbgrader and JupyterLab: hub/nbgrader_config.py (the exchange, the course) and,
        # for learners, hub/learner/ first (it turns the instructor's extensions off).
        "JUPYTER_CONFIG_PATH": str(HUB_DIR),
        "QKV_HUB_EXCHANGE": str(settings.exchange),
    }
    if settings.library_path:
        env["LD_LIBRARY_PATH"] = settings.library_path
    if role(settings, user) == "instructor":
        env["QKV_HUB_COURSE"] = settings.course
    else:
        env["JUPYTER_CONFIG_PATH"] = f"{HUB_DIR / 'learner'}:{HUB_DIR}"
    return env
