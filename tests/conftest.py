"""Shared fixtures: repository paths, the built book, sample submissions."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BOOK = REPO / "book"
BOOK_HTML = BOOK / "_build" / "html"
ARTIFACTS = REPO / "test-artifacts"

# System packages some test modules need, recognised by what the module's text uses. When one
# is missing, the session stops at once with one line instead of a wall of failures.
SYSTEM_NEEDS = {
    "bubblewrap": (("bwrap", "autograder.sandbox", "autograder.verify", "autograder.grading",
                    '"autograder", "grade"'), lambda: shutil.which("bwrap") is not None),
    "chromium": (("chromium", "playwright", "lab_server"), lambda: Path("/usr/bin/chromium").exists()),
}


def _selected_modules(config) -> list[Path]:
    modules = []
    for arg in config.args or [str(REPO / "tests")]:
        path = Path(str(arg).split("::")[0])
        path = path if path.is_absolute() else Path(config.invocation_params.dir) / path
        modules += sorted(path.rglob("test_*.py")) if path.is_dir() else [path] if path.is_file() else []
    return modules


def missing_system_packages(modules: list[Path]) -> list[str]:
    """Packages that a test module in ``modules`` needs and this machine lacks."""
    texts = [m.read_text(encoding="utf-8", errors="replace") for m in modules]
    return [pkg for pkg, (markers, present) in SYSTEM_NEEDS.items()
            if not present() and any(marker in text for text in texts for marker in markers)]


def pytest_configure(config):
    if hasattr(config, "workerinput"):  # xdist workers: the controller has checked
        return
    missing = missing_system_packages(_selected_modules(config))
    if missing:
        names = " ".join(missing)
        raise pytest.UsageError(f"missing system packages: {names}; install them with "
                                f"`sudo apt-get install -y {names}` (`make test` does this when run as root)")


@pytest.fixture(scope="session")
def built_book() -> Path:
    """Build the book strictly (cached execution makes a rebuild cheap) and return the HTML folder."""
    jb = Path(sys.executable).parent / "jupyter-book"
    proc = subprocess.run([str(jb), "build", str(BOOK), "-W", "-n", "--keep-going"],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"book build failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}"
    return BOOK_HTML


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
