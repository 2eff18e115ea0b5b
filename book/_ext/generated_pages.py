"""Re-read the pages that are generated from other files whenever one of those files changes.

The intro's course map and the interview drill are computed from ``_toc.yml``, the chapter
pages, the bibliography and the ``qkv`` library when their cells run (``execution_mode:
force``: the execution cache keys on a page's own text only). Sphinx, though, re-reads a page
only when its own source changed, so after editing a chapter the drill would silently keep the
old short answers.

Any page whose front matter asks for ``execution_mode: force`` therefore declares, while it is
read, every file it is generated from as a Sphinx dependency (``env.note_dependency``): Sphinx
re-reads a page when a dependency is newer than the page's last read. A chapter edit re-runs
those pages; a rebuild with nothing changed re-runs none of them (issue 11's no-change budget).
The dependencies are deliberately broad (every chapter page, every library module): a false
re-read costs seconds, a missed one shows a stale answer.
"""

from __future__ import annotations

import re
from pathlib import Path

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


def inputs(srcdir: Path) -> list[Path]:
    """Every file a generated page may be computed from."""
    found: set[Path] = set()
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
    for dependency in inputs(Path(app.srcdir)):
        if dependency != path:
            env.note_dependency(str(dependency))


def _read_without_inputs(app: Sphinx, env, added, changed, removed) -> list[str]:
    """Generated pages whose last read did not note their inputs (read before this extension
    noted them, e.g. in an older build folder): read them again, once."""
    toc = str(Path(app.srcdir) / "_toc.yml")
    return [docname for docname in env.found_docs
            if toc not in env.dependencies.get(docname, ()) and is_generated(Path(env.doc2path(docname)))]


def setup(app: Sphinx) -> dict:
    app.connect("source-read", _note_inputs)
    app.connect("env-get-outdated", _read_without_inputs)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
