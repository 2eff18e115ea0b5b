"""Re-read, on every build, the pages that are generated from other pages.

The intro's course map and the interview drill are computed from ``_toc.yml`` and the chapter
pages when their cells run (``execution_mode: force``). Sphinx, though, re-reads a page only
when its own source changed, so after editing a chapter the drill would silently keep the old
short answers. Any page whose front matter asks for ``execution_mode: force`` is therefore
reported as outdated to Sphinx on every build (they are cheap: no model runs in them).
"""

from __future__ import annotations

import re
from pathlib import Path

from sphinx.application import Sphinx

_FORCE = re.compile(r"^\s*execution_mode:\s*force\s*$", re.M)


def _always_outdated(app: Sphinx, env, added, changed, removed) -> list[str]:
    outdated = []
    for docname in env.found_docs:
        source = Path(env.doc2path(docname))
        if source.suffix == ".md" and source.exists():
            head = source.read_text(encoding="utf-8").split("\n---", 2)[0]
            if _FORCE.search(head):
                outdated.append(docname)
    return outdated


def setup(app: Sphinx) -> dict:
    app.connect("env-get-outdated", _always_outdated)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
