"""The tree stays clean under the committed ruff configuration (pyproject.toml, [tool.ruff])."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def ruff(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=REPO, input=stdin,
                          capture_output=True, text=True, timeout=300)


def test_the_tree_is_clean_under_ruff() -> None:
    done = ruff("check", ".", "--output-format", "concise", "--no-cache")
    assert done.returncode == 0, f"`ruff check .` found problems (fix them, or `ruff check --fix .`):\n{done.stdout}"


def test_ruff_reads_the_notebooks_too() -> None:
    """Solutions and exercises are linted: the check above is not vacuous for them."""
    done = ruff("check", ".", "--show-files", "--no-cache")
    listed = {Path(line).resolve().relative_to(REPO).as_posix() for line in done.stdout.splitlines() if line.strip()}
    assert "solutions/attention/attention.ipynb" in listed and "exercises/attention/attention.ipynb" in listed
    assert "qkv/notebook_contract.py" in listed and "tests/test_lint.py" in listed


def test_the_configuration_catches_what_it_should() -> None:
    """A probe with a long line, an unused import and a bare `except:` is flagged under our settings."""
    probe = "import os\n\ntry:\n    x = 1\nexcept:\n    pass\n" + "y = " + "1 + " * 40 + "1\n"
    done = ruff("check", "--stdin-filename", "qkv/_probe.py", "--output-format", "concise", "-", stdin=probe)
    found = {line.split(": ")[1].split()[0] for line in done.stdout.splitlines() if ": " in line and "_probe" in line}
    assert {"F401", "E722", "E501"} <= found, done.stdout
