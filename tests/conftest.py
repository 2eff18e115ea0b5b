"""Shared fixtures: repository paths, the built book, sample submissions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BOOK = REPO / "book"
BOOK_HTML = BOOK / "_build" / "html"
ARTIFACTS = REPO / "test-artifacts"


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
