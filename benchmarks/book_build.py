"""Cold and no-change build times of the book, against a baseline commit built the same way.

The machine is shared and noisy, so absolute seconds mean little: the script builds the
baseline (default ``main``, checked out into a temporary git worktree) and this checkout
alternately, each cold (a fresh output folder: no execution cache), then rebuilds this
checkout with nothing changed, and prints the ratios. Both builds use this virtual environment;
each tree's own ``qkv`` comes first on ``PYTHONPATH`` (kernels inherit it).

    .venv/bin/python benchmarks/book_build.py                # baseline main, one round
    .venv/bin/python benchmarks/book_build.py --rounds 2 --baseline HEAD~3
    .venv/bin/python benchmarks/book_build.py --no-change      # this checkout's no-change rebuilds only

Budget (issue 11): cold build <= 2x the baseline, no-change rebuild <= 5 s.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Ignored by git, fetched by `make`: the baseline worktree borrows them from this checkout.
SHARED = ("book/_vendor", "data/gpt2")


def build(tree: Path, output: Path) -> tuple[float, dict[str, float]]:
    """Seconds for a strict build of ``tree``'s book into ``output``, and seconds per executed page.

    Raises SystemExit with the build's log if the build fails.
    """
    env = dict(os.environ, PYTHONPATH=str(tree))
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    start = time.perf_counter()
    proc = subprocess.run([str(jupyter_book), "build", str(tree / "book"), "-W", "-n", "--keep-going",
                           "--path-output", str(output)], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"build of {tree} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")
    pages = {Path(m[1]).stem: float(m[2]) for m in re.finditer(r"(\S+\.md): Executed notebook in ([\d.]+) seconds",
                                                               proc.stdout + proc.stderr)}
    return seconds, pages


def no_change(rounds: int) -> None:
    """Seconds of no-change rebuilds of this checkout's book/_build (built first if needed):
    Sphinx's (``jupyter-book build``, English), and ``make book``'s (both editions, which skips
    an edition whose inputs did not change; ``--always`` makes it run Sphinx for both)."""
    editions = [sys.executable, str(REPO / "book" / "editions.py"), "build"]
    subprocess.run(editions, check=True, capture_output=True)  # current: what follows changes nothing
    jupyter_book = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(REPO / "book"),
                    "-W", "-n", "--keep-going"]
    for label, command in (("jupyter-book build (English)", jupyter_book), ("make book (both editions)", editions),
                           ("make book, --always", [*editions, "--always"])):
        seconds = []
        for _ in range(rounds):
            start = time.perf_counter()
            proc = subprocess.run(command, capture_output=True, text=True)
            seconds.append(time.perf_counter() - start)
            if proc.returncode != 0:
                raise SystemExit(f"{label} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
            if "Executed notebook" in proc.stdout + proc.stderr:
                raise SystemExit(f"{label}: a page was executed although nothing changed")
        print(f"no-change rebuild, {label:30} median {sorted(seconds)[len(seconds) // 2]:5.2f} s "
              f"(min {min(seconds):.2f}, {rounds} runs; budget 5 s)", flush=True)


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="main", help="git ref to compare against (default: main)")
    parser.add_argument("--rounds", type=int, default=1, help="cold builds of each tree, alternating")
    parser.add_argument("--no-change", action="store_true",
                        help="only time no-change rebuilds of this checkout (3 runs each), no cold builds")
    args = parser.parse_args()
    if args.no_change:
        no_change(3)
        return

    missing = [p for p in SHARED if not (REPO / p).exists()]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: run `make book` once first (it fetches them)")
    with tempfile.TemporaryDirectory(prefix="qkv-bench-") as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(base), args.baseline],
                       check=True)
        try:
            for path in SHARED:
                (base / path).parent.mkdir(parents=True, exist_ok=True)
                (base / path).symlink_to(REPO / path)
            times: dict[str, list[float]] = {"baseline": [], "this": []}
            pages: dict[str, dict[str, float]] = {}
            for r in range(args.rounds):
                for name, tree in (("baseline", base), ("this", REPO)):
                    out = Path(tmp) / f"{name}-{r}"
                    seconds, pages[name] = build(tree, out)
                    times[name].append(seconds)
                    print(f"round {r + 1}: {name:8} cold build {seconds:6.1f} s, "
                          f"{size_mb(out / '_build' / 'html'):.1f} MB of HTML", flush=True)
            rebuild = {name: build(tree, Path(tmp) / f"{name}-{args.rounds - 1}")[0]
                       for name, tree in (("baseline", base), ("this", REPO))}
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)], check=False)
    print(f"seconds to execute each page (last round): {'page':14} {'baseline':>8} {'this':>7}")
    for page in sorted(set(pages["baseline"]) | set(pages["this"])):
        print(f"  {page:14} {pages['baseline'].get(page, float('nan')):7.1f} "
              f"{pages['this'].get(page, float('nan')):7.1f}")
    base_s, this_s = min(times["baseline"]), min(times["this"])
    print(f"cold build: {this_s:.1f} s vs {base_s:.1f} s for {args.baseline}: "
          f"ratio {this_s / base_s:.2f} (budget 2.00)")
    print(f"no-change rebuild: {rebuild['this']:.1f} s vs {rebuild['baseline']:.1f} s for {args.baseline}: "
          f"ratio {rebuild['this'] / rebuild['baseline']:.2f} (budget 5 s on an idle machine, 4.6 s today)")


if __name__ == "__main__":
    main()
