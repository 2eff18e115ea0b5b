"""Citations outside Sphinx: ``{cite:t}`key``` and ``{cite:p}`key``` in quiz text and drill answers.

The chapter pages cite with sphinxcontrib-bibtex's roles, resolved by Sphinx against
``book/references.bib``. The self-quizzes and the drill are rendered to HTML by markdown-it
(``qkv.quiz``, ``qkv.drill``), where Sphinx roles do not run; this module resolves the same
roles from the same file, so a quiz or a short answer reads exactly as the page does:

* ``{cite:t}`vaswani2017attention``` -> "Vaswani *et al.* (2017)"   (textual)
* ``{cite:p}`vaswani2017attention``` -> "(Vaswani *et al.*, 2017)"  (parenthetical)
* pre- and post-text in braces, as sphinxcontrib-bibtex allows:
  ``{cite:t}`vaswani2017attention{§3.2.1}``` -> "Vaswani *et al.* (2017, §3.2.1)"
* several keys separated by commas.

Each citation links to the work's entry in a chapter's bibliography. Its id is
``cite-<key>`` (docutils ``make_id`` of it), because ``_config.yml`` sets sphinxcontrib-bibtex's
``bibtex_cite_id`` to ``cite-{key}``; the textual/parenthetical formats mirror the
``author_year_round`` reference style registered by ``book/_ext/citation_style.py``.
An unknown key or role raises ``CitationError``, so a quiz with a typo fails the strict build.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from docutils.nodes import make_id
from pybtex.backends.plaintext import Backend as PlainTextBackend
from pybtex.database import Entry, parse_file

from qkv.chapters import BOOK_DIR

BIBFILE = BOOK_DIR / "references.bib"
# The id template given to sphinxcontrib-bibtex as ``bibtex_cite_id`` in _config.yml.
CITE_ID_TEMPLATE = "cite-{key}"
ROLES = ("cite:t", "cite:p")
# Separators and brackets of the page's ``author_year_round`` style (book/_ext/citation_style.py).
ET_AL = "et al."
TWO_AUTHORS_SEP = " and "
AUTHOR_YEAR_SEP = ", "
PRE_TEXT_SEP = " "
POST_TEXT_SEP = ", "
TEXTUAL_SEP = ", "         # between the references of one {cite:t}
PARENTHETICAL_SEP = "; "   # between the references of one {cite:p}


class CitationError(ValueError):
    """A citation that cannot be resolved: unknown key, unknown role or malformed target."""


@dataclass(frozen=True)
class Work:
    """What a citation shows of one bibliography entry."""

    key: str
    authors: str  # 'Vaswani et al.', 'Ba and Hinton', 'Shazeer'
    year: str


# One plain-text backend: ``render_as("text")`` looks the backend up among the installed
# packages' entry points on every call (~30 ms each on 2 cores; ~8 s for references.bib).
_PLAIN_TEXT = PlainTextBackend()


def _last_names(person) -> str:
    """A person's von-part and last name as plain text (LaTeX accents and braces resolved)."""
    parts = list(person.rich_prelast_names) + list(person.rich_last_names)
    return " ".join(p.render(_PLAIN_TEXT) for p in parts)


def _authors(entry: Entry) -> str:
    people = entry.persons.get("author") or entry.persons.get("editor")
    if not people:
        raise CitationError(f"bibliography entry {entry.key!r} has no author or editor; add one to references.bib")
    names = [_last_names(p) for p in people]
    if len(names) == 1:
        return names[0]
    if len(names) == 2:
        return TWO_AUTHORS_SEP.join(names)
    return f"{names[0]} {ET_AL}"


@lru_cache(maxsize=4)
def _load(path: str, mtime: float) -> dict[str, Work]:
    data = parse_file(path, bib_format="bibtex")
    works = {}
    for key, entry in data.entries.items():
        year = entry.fields.get("year", "")
        if not year:
            raise CitationError(f"bibliography entry {key!r} in {path} has no year; add one")
        works[key] = Work(key=key, authors=_authors(entry), year=str(year))
    return works


def load_works(bibfile: Path = BIBFILE) -> dict[str, Work]:
    """Every entry of ``bibfile`` by key (re-read when the file changes)."""
    if not bibfile.is_file():
        raise CitationError(f"no bibliography file {bibfile}; the book's citations live in book/references.bib")
    return dict(_load(str(bibfile), bibfile.stat().st_mtime))


def citation_id(key: str) -> str:
    """The HTML id sphinxcontrib-bibtex gives ``key``'s bibliography entry (``bibtex_cite_id``)."""
    return make_id(CITE_ID_TEMPLATE.format(key=key))


def parse_targets(content: str) -> list:
    """The keys, pre- and post-texts of a role's content, e.g. ``'{see}a{§2}, b'``.

    Returns sphinxcontrib-bibtex ``CitationTarget`` tuples (``key``, ``pre``, ``post``): the
    page's parser, so a quiz accepts exactly the syntax a page does.
    """
    # Imported here: sphinxcontrib.bibtex pulls in Sphinx (~0.5 s), needed only when text cites.
    from sphinxcontrib.bibtex.citation_target import parse_citation_targets

    try:
        return list(parse_citation_targets(content))
    except ValueError as err:
        raise CitationError(f"malformed citation {content!r}: write keys separated by commas, "
                            "each with optional {pre-text} before and {post-text} after") from err


def _link(key: str, text: str, page: str) -> str:
    return f'<a class="reference internal" href="{html.escape(page)}#{citation_id(key)}">{text}</a>'


def _names_html(work: Work) -> str:
    names = html.escape(work.authors)
    if work.authors.endswith(ET_AL):
        names = names[: -len(ET_AL)] + f"<em>{ET_AL}</em>"
    return names


def cite_html(role: str, content: str, *, page: str = "", bibfile: Path = BIBFILE) -> str:
    """HTML for ``{role}`content``` as the chapter page shows it, linked to ``page#cite-<key>``.

    ``page`` is the chapter's HTML path relative to where the HTML is shown ('' for the same
    page). Raises ``CitationError`` for a role other than cite:t / cite:p, or an unknown key.
    """
    if role not in ROLES:
        raise CitationError(f"the role {{{role}}} is not available here: quiz text and short answers are "
                            "rendered outside Sphinx, where only {cite:t} and {cite:p} work. "
                            "Keep glued numbers and other roles in the page's prose.")
    works = load_works(bibfile)
    parts = []
    for target in parse_targets(content):
        work = works.get(target.key)
        if work is None:
            raise CitationError(f"unknown citation key {target.key!r}: add its entry to {bibfile.name} "
                                "(authors, title, venue, year, eprint or doi) or fix the key")
        pre = html.escape(target.pre) + PRE_TEXT_SEP if target.pre else ""
        post = POST_TEXT_SEP + html.escape(target.post) if target.post else ""
        if role == "cite:t":
            parts.append(f"{_names_html(work)} ({pre}{_link(work.key, html.escape(work.year), page)}{post})")
        else:
            linked = _link(work.key, f"{_names_html(work)}{AUTHOR_YEAR_SEP}{html.escape(work.year)}", page)
            parts.append(f"{pre}{linked}{post}")
    if role == "cite:t":
        return TEXTUAL_SEP.join(parts)
    return "(" + PARENTHETICAL_SEP.join(parts) + ")"


def cite_text(role: str, content: str, *, bibfile: Path = BIBFILE) -> str:
    """The plain text of ``cite_html`` (what a reader sees), e.g. 'Vaswani et al. (2017)'."""
    return html.unescape(re.sub(r"<[^>]+>", "", cite_html(role, content, bibfile=bibfile)))
