"""Addresses of the book's sections, for the messages that tell a learner what to reread.

The book is built into two editions from the same pages: English in ``book/_build/html/`` and
Chinese in ``book/_build/zh_CN/_build/html/``. Sphinx keeps a translated section's original
id, so a section has the same anchor in both (the id docutils' ``make_id`` gives its English
heading). A section is linked as the absolute ``file://`` URL of its built page, which opens
from anywhere (a learner works in a copy such as ``~/my-qkv``, not in the repository); when
the page is not built, only the section's title is given, with the command that builds it.

The edition follows ``qkv check --lang`` and else the locale (``LC_ALL``, ``LC_MESSAGES``,
``LANG``, the first one set): a locale starting with ``zh`` picks the Chinese edition.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from qkv.chapters import CHAPTERS

REPO = Path(__file__).resolve().parent.parent
BOOK = REPO / "book"
EDITIONS = ("en", "zh_CN")
EDITION_NAMES = {"en": "English", "zh_CN": "Chinese"}
BUILD_COMMAND = "make book"


def edition_of(lang: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """``"zh_CN"`` when ``lang`` (else the first set of LC_ALL, LC_MESSAGES, LANG) starts with
    ``zh``, otherwise ``"en"``. Raises ValueError for a ``lang`` that is neither."""
    if lang:
        if lang.lower().replace("-", "_").startswith("zh"):
            return "zh_CN"
        if lang.lower().startswith("en"):
            return "en"
        raise ValueError(f"no {lang!r} edition of the book; choose one of: {', '.join(EDITIONS)}")
    environ = os.environ if environ is None else environ
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = environ.get(name, "")
        if value:  # POSIX: the first one set decides, even if it is "C"
            return "zh_CN" if value.lower().startswith("zh") else "en"
    return "en"


def html_root(edition: str = "en", book: Path | None = None) -> Path:
    """The folder an edition's HTML is built into (``book``: the book's source folder, default ``BOOK``)."""
    book = BOOK if book is None else book
    return book / "_build" / "html" if edition == "en" else book / "_build" / edition / "_build" / "html"


def anchor(heading: str) -> str:
    """The HTML id Sphinx gives a section with this heading (docutils' ``make_id``, which MyST
    sections use): ASCII-folded, lower case, runs of other characters become '-'."""
    from docutils.nodes import make_id

    return make_id(heading)


def page(chapter: str, heading: str, edition: str = "en") -> str:
    """The built page of the section, relative to the repository, with its anchor."""
    root = html_root(edition, Path("book"))
    return f"{root.as_posix()}/chapters/{chapter}.html#{anchor(heading)}"


@dataclass(frozen=True)
class SectionLink:
    """A section to reread: its chapter, its heading as the reader's edition shows it, and the
    ``file://`` URL of the built page with the section's anchor ("" when no edition is built)."""

    chapter: str
    heading: str
    url: str
    edition: str  # the edition ``url`` points into ("en" when the requested one is not built)

    @property
    def chapter_title(self) -> str:
        """"chapter 2, Why divide by √d_k" (the English title: chapters have no translated titles here)."""
        for ch in CHAPTERS:
            if ch.slug == self.chapter:
                return f"chapter {ch.number}, {ch.title}"
        return self.chapter

    def title(self) -> str:
        """“<heading>” (chapter N, <title>): what to reread, whether or not the book is built."""
        return f"“{self.heading}” ({self.chapter_title})"


def section_link(chapter: str, heading: str, edition: str = "en", book: Path | None = None) -> SectionLink:
    """The link to ``heading`` of ``chapter`` in ``edition``, or into the English edition when
    only that one is built, or without a URL when neither is."""
    book = BOOK if book is None else book
    shown = translated_heading(heading, chapter, edition, book)
    for candidate in dict.fromkeys((edition, "en")):
        built = html_root(candidate, book) / "chapters" / f"{chapter}.html"
        if built.is_file():
            return SectionLink(chapter, shown, f"{built.resolve().as_uri()}#{anchor(heading)}", candidate)
    return SectionLink(chapter, shown, "", edition)


def missing_edition_note(links: list[SectionLink], edition: str, book: Path | None = None) -> str:
    """A note for the end of a report when some links are missing or point into another edition
    than the one asked for; "" when every link is where it should be."""
    book = BOOK if book is None else book
    if not links:
        return ""
    if any(not link.url for link in links):
        return (f"the book is not built, so the sections above have no links: run `{BUILD_COMMAND}` in "
                f"{book.parent} (then the sections to reread are printed as links to the book's pages).")
    if any(link.edition != edition for link in links):
        other = next(link.edition for link in links if link.edition != edition)
        return (f"the {EDITION_NAMES[edition]} edition of the book is not built, so the links "
                f"above go to the {EDITION_NAMES[other]} one: run `{BUILD_COMMAND}` in "
                f"{book.parent}.")
    return ""


def unbuilt_edition_note(edition: str, book: Path | None = None) -> str:
    """Said before links into ``edition`` are made (by the grader): "" when that edition is built;
    else where the links will go instead (the English edition, or none) and how to build it."""
    book = BOOK if book is None else book
    if (html_root(edition, book) / "index.html").is_file():
        return ""
    fallback = "en" if (html_root("en", book) / "index.html").is_file() else None
    where = f"linked in the {EDITION_NAMES[fallback]} one" if fallback else "named without a link"
    return (f"the {EDITION_NAMES[edition]} edition of the book is not built, so the sections to reread are "
            f"{where}: run `{BUILD_COMMAND}` in {book.parent} first")


def translated_heading(heading: str, chapter: str, edition: str, book: Path | None = None) -> str:
    """``heading`` as the ``edition`` shows it: its translation in the chapter's message catalog
    (``book/locales/<edition>/LC_MESSAGES/chapters/<chapter>.po``), else the English heading."""
    book = BOOK if book is None else book
    if edition == "en":
        return heading
    po_path = book / "locales" / edition / "LC_MESSAGES" / "chapters" / f"{chapter}.po"
    return _catalog(str(po_path)).get(heading, heading)


@functools.lru_cache(maxsize=32)
def _catalog(path: str) -> dict[str, str]:
    """msgid -> msgstr of a .po file (translated, not fuzzy); {} when it is absent or unreadable."""
    if not Path(path).is_file():
        return {}
    try:
        from babel.messages.pofile import read_po  # Sphinx's own catalog library (installed with it)

        with open(path, "rb") as fh:
            catalog = read_po(fh)
    except Exception:  # a catalog we cannot read only costs the translation of a heading
        return {}
    return {m.id: m.string for m in catalog if isinstance(m.id, str) and m.id and m.string and not m.fuzzy}
