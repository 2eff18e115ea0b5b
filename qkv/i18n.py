"""Marking generated HTML that the Chinese edition translates.

The book's prose is translated by Sphinx's own gettext machinery (``book/locales``). Some of
the book's HTML, though, is produced by code cells: the self-quizzes, the interview drill, the
course map. Those outputs are executed once and cached for both editions, so they cannot
differ between them. Instead, the code wraps every translatable string in a *marker* that
carries the string's markdown source; the Chinese build replaces each marked piece of HTML by
its rendered translation (``book/_ext/editions.py``), and ``make translations`` collects the
marked strings into the ``generated`` catalog.

A marker is ``<span|div class="qkv-i18n" data-msgid="…" data-page="…">HTML</span|div>`` followed
by the comment ``<!--/qkv-i18n-->``; markers never nest.
"""

from __future__ import annotations

import html
import re

MARKER = re.compile(
    r'<(?P<tag>span|div) class="qkv-i18n" data-msgid="(?P<msgid>[^"]*)" data-page="(?P<page>[^"]*)">'
    r"(?P<body>.*?)</(?P=tag)><!--/qkv-i18n-->",
    re.S,
)


def mark(source: str, rendered: str, *, inline: bool, page: str = "") -> str:
    """Wrap ``rendered`` (the HTML of the markdown ``source``) in a translation marker.

    ``inline`` chooses ``<span>`` (inside a sentence, a ``<summary>``) or ``<div>`` (blocks);
    ``page`` is the page that citations in ``source`` link to ('' for the page itself).
    Raises ValueError when ``rendered`` already holds a marker (markers cannot nest).
    """
    if "qkv-i18n" in rendered:
        raise ValueError("a translation marker cannot hold another one; mark the smaller pieces only")
    tag = "span" if inline else "div"
    return (f'<{tag} class="qkv-i18n" data-msgid="{html.escape(source, quote=True)}" '
            f'data-page="{html.escape(page, quote=True)}">{rendered}</{tag}><!--/qkv-i18n-->')


def marked_strings(page_html: str) -> list[tuple[str, str]]:
    """The (msgid, citation page) of every marker in ``page_html``, in order."""
    return [(html.unescape(m["msgid"]), html.unescape(m["page"])) for m in MARKER.finditer(page_html)]
