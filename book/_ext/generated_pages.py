"""Re-read the pages that are generated from other files whenever one of those files changes.

The intro's course map and the interview drill are computed from ``_toc.yml``, the chapter
pages, the bibliography and the ``qkv`` library, and the instructors page prints the
benchmarks' saved results (``benchmarks/results/*.json``), when their cells run (``execution_mode:
force``: the execution cache keys on a page's own text only). Sphinx, though, re-reads a page
only when its own source changed, so after editing a chapter the drill would silently keep the
old short answers.

Any page whose front matter asks for ``execution_mode: force`` therefore declares, while it is
read, every file it is generated from as a Sphinx dependency (``env.note_dependency``): Sphinx
re-reads a page when a dependency is newer than the page's last read. A chapter edit re-runs
those pages; a rebuild with nothing changed re-runs none of them (issue 11's no-change budget).
The dependencies are deliberately broad (every chapter page, every library module): a false
re-read costs seconds, a missed one shows a stale answer. A page that reads something else
names it in its front matter, ``generated_from: [patterns relative to book/]``, and then depends
on those files only (the instructors page: the benchmarks' saved results).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from sphinx.application import Sphinx

_FORCE = re.compile(r"^\s*execution_mode:\s*force\s*$", re.M)
# What a generated page may read, relative to the book's source folder. Files only: Sphinx
# treats a folder dependency as missing, hence always changed. A page added to or removed from
# the book changes _toc.yml (only_build_toc_files), which is a dependency.
_INPUTS = ("_toc.yml", "references.bib", "chapters/*.md")
_LIBRARY = Path(__file__).resolve().parents[2] / "qkv"  # the book's own library (the repository's qkv/)


def is_generated(source: Path) -> bool:
    """Whether the page at ``source`` asks to be executed on every read (``execution_mode: force``)."""
    if source.suffix != ".md" or not source.exists():
        return False
    head = source.read_text(encoding="utf-8").split("\n---", 2)[0]
    return bool(_FORCE.search(head))


def _front_matter(source: Path) -> dict:
    text = source.read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        return {}
    return yaml.safe_load(text[4:].split("\n---", 1)[0]) or {}


def inputs(srcdir: Path, source: Path | None = None) -> list[Path]:
    """Every file the generated page at ``source`` may be computed from: those its front matter's
    ``generated_from`` patterns name, else the chapters, the table of contents, the bibliography and
    the library."""
    found: set[Path] = set()
    declared = _front_matter(source).get("generated_from") if source is not None else None
    if declared is not None:
        for pattern in declared:
            found.update(srcdir.glob(pattern))
        return sorted(p.resolve() for p in found if p.is_file())
    for pattern in _INPUTS:
        found.update(p for p in srcdir.glob(pattern) if p.exists())
    if _LIBRARY.is_dir():
        found.update(p for p in _LIBRARY.rglob("*") if p.suffix in (".py", ".js", ".css"))
    return sorted(p for p in found if p.is_file() and "__pycache__" not in p.parts)


def _note_inputs(app: Sphinx, docname: str, source: list[str]) -> None:
    env = app.env
    path = Path(env.doc2path(docname))
    if not is_generated(path):
        return
    for dependency in inputs(Path(app.srcdir), path):
        if dependency != path:
            env.note_dependency(str(dependency))


def _read_without_inputs(app: Sphinx, env, added, changed, removed) -> list[str]:
    """Generated pages whose last read did not note all of their inputs (read before this
    extension noted them, e.g. in an older build folder, or an input that did not exist then):
    read them again, once."""
    stale = []
    for docname in env.found_docs:
        path = Path(env.doc2path(docname))
        if is_generated(path):
            noted = env.dependencies.get(docname, set())
            if any(str(p) not in noted for p in inputs(Path(app.srcdir), path) if p != path):
                stale.append(docname)
    return stale


def setup(app: Sphinx) -> dict:
    app.connect("source-read", _note_inputs)
    app.connect("env-get-outdated", _read_without_inputs)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
