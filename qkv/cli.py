"""The learner's command line: ``qkv check``, ``qkv hint``, ``qkv progress``, ``qkv capstone``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qkv.chapters import CHAPTERS


def _parser() -> argparse.ArgumentParser:
    slugs = ", ".join(c.slug for c in CHAPTERS)
    p = argparse.ArgumentParser(prog="qkv",
                                description="Check your exercises, get hints, see your progress, train your own GPT.")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("check", help="run a chapter's visible checks against your notebook",
                       description="Run CHAPTER's visible checks against the functions in your notebook and "
                                   "print function | status | diagnosis | section to reread. Exit 0 if all pass.")
    c.add_argument("chapter", help=f"one of: {slugs}")
    c.add_argument("notebook", nargs="?", type=Path,
                   help="your notebook, or the folder that holds it (default: exercises/CHAPTER/CHAPTER.ipynb "
                        "under the current folder)")
    c.add_argument("--timeout", type=float, default=None, help="seconds one cell or test may run (default 60)")
    c.add_argument("--lang", default=None, metavar="LANG",
                   help="the book edition the sections to reread link to: en or zh_CN (default: from "
                        "LC_ALL / LC_MESSAGES / LANG; a locale starting with zh picks zh_CN)")

    h = sub.add_parser("hint", help="show the next hint for a graded function")
    h.add_argument("function", help="the function's name, as in its def line")
    h.add_argument("--level", type=int, default=None, help="show hint number LEVEL (1, 2, 3)")

    g = sub.add_parser("progress", help="every chapter's functions: passed / failing / not attempted",
                       description="Self-check every chapter's notebook FOLDER/<chapter>/<chapter>.ipynb; "
                                   "print a table and save a figure.")
    g.add_argument("folder", nargs="?", type=Path, default=None,
                   help="your working folder (default: exercises/ under the current folder)")
    g.add_argument("--figure", type=Path, default=None, help="where to save the figure "
                                                              "(default: FOLDER/qkv-progress.png)")
    g.add_argument("--timeout", type=float, default=None, help="seconds one cell or test may run (default 60)")

    k = sub.add_parser("capstone", help="train the capstone GPT made of your own functions",
                       description="Check your chapter notebooks in FOLDER, build the capstone GPT from your "
                                   "functions that pass (the library's elsewhere), train it and print which pieces "
                                   "are yours, the loss reached, a sample, and which function broke training, if "
                                   "one did. Exit 0 when none did.")
    k.add_argument("folder", type=Path, help="your working copy of the exercises (FOLDER/<chapter>/<chapter>.ipynb)")
    k.add_argument("--steps", type=int, default=None, help="training steps (default: the book's 800)")
    k.add_argument("--tiny", action="store_true", help="a seconds-long run on a tiny model and corpus")
    k.add_argument("--use-failing", action="store_true",
                   help="also use your functions that fail their checks, to see what they do to training")
    k.add_argument("--timeout", type=float, default=None, help="seconds one check, cell or training step may take "
                                                                "(default 60)")
    return p


def _skip_slow_optional_imports() -> None:
    """Keep one optional module out of this process: reading a notebook imports nbformat, whose
    jsonschema imports ``rfc3987_syntax`` whenever it is installed (Jupyter installs it), and that
    module builds a Lark grammar when imported: 1.5 s on an idle machine, 4 s on a busy one,
    for a JSON-Schema format ("iri") that no notebook schema uses (python-jsonschema issue #1428).
    jsonschema imports it under ``suppress(ImportError)``, so the "iri" format is then just not
    checked. Only this command's own process is affected."""
    if "rfc3987_syntax" not in sys.modules:
        sys.modules["rfc3987_syntax"] = None  # the import system's way to make an import fail


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``qkv`` command; returns the exit code."""
    args = _parser().parse_args(argv)
    _skip_slow_optional_imports()
    if args.command == "hint":
        from qkv.hints import all_hints, hint_text

        print(hint_text(args.function, args.level))
        return 0 if args.function in all_hints() else 1
    if args.command == "capstone":
        from qkv import capstone

        return capstone.main(args.folder, steps=args.steps, use_failing=args.use_failing, tiny=args.tiny,
                             step_timeout=args.timeout or capstone.DEFAULT_STEP_TIMEOUT)
    from qkv import selfcheck

    timeout = args.timeout or selfcheck.DEFAULT_STEP_TIMEOUT
    if args.command == "check":
        from qkv.book_links import edition_of

        try:
            edition = edition_of(args.lang)
            notebook = selfcheck.find_notebook(args.chapter, args.notebook or selfcheck.default_notebook(args.chapter))
            report = selfcheck.check_notebook(args.chapter, notebook, step_timeout=timeout, edition=edition)
        except (KeyError, FileNotFoundError, ValueError) as exc:
            print(f"qkv check: {exc.args[0] if exc.args else exc}", file=sys.stderr)
            return 2
        print(f"notebook: {notebook}")
        print(report.to_text())
        return 0 if report.ok else 1
    # progress
    from qkv.progress import progress

    folder = args.folder or Path("exercises")
    if not folder.is_dir():
        print(f"qkv progress: no folder {folder}; pass your working folder, e.g. qkv progress ~/my-qkv",
              file=sys.stderr)
        return 2
    result = progress(folder, step_timeout=timeout)
    print(result.to_text())
    figure = result.figure(args.figure or folder / "qkv-progress.png")
    print(f"figure: {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
