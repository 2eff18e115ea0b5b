"""Cold build time of both editions against the English edition alone, in one invocation.

    .venv/bin/python benchmarks/book_editions.py

Copies ``book/`` twice into a temporary folder (so no execution cache exists), then times
(1) a strict English-only build of one copy and (2) ``book/editions.py build`` (English, then
Chinese from the same cache) of the other, and prints the ratio. The goal is ≤ 1.6: the
Chinese edition re-renders the pages but never re-runs their cells.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BOOK = Path(__file__).resolve().parent.parent / "book"


def _copy(target: Path) -> Path:
    shutil.copytree(BOOK, target, ignore=shutil.ignore_patterns("_build", ".ipynb_checkpoints", "__pycache__"),
                    symlinks=True)
    return target


def _timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    jupyter_book = str(Path(sys.executable).parent / "jupyter-book")
    with tempfile.TemporaryDirectory(prefix="qkv-editions-") as tmp:
        english_only = _copy(Path(tmp) / "english" / "book")
        both = _copy(Path(tmp) / "both" / "book")
        t_en = _timed([jupyter_book, "build", str(english_only), "-W", "-n", "--keep-going"])
        t_both = _timed([sys.executable, str(both / "editions.py"), "build", "all"])
    print(f"cold English-only build: {t_en:6.1f} s")
    print(f"cold build of both editions: {t_both:6.1f} s")
    print(f"ratio both / English-only: {t_both / t_en:.2f} (goal ≤ 1.6)")


if __name__ == "__main__":
    main()
