"""The interview drill: every question of every chapter with its short answer, read from the pages.

A *question* is a ``## `` section of ``book/chapters/<slug>.md`` that holds a paragraph
starting with ``**Short answer.**`` (see AUTHORING.md). The short answer runs from that
label to the next bold label (``**Why.**``, ``**See it.**``, ``**Folk answer ...**``), code
fence or heading. Nothing is copied by hand: the drill page calls ``render_drill`` at build
time, so it always shows what the chapters say.

The link to the full answer uses the id Sphinx gives the heading: docutils'
``make_id`` of the heading's plain text (what MyST passes to docutils as the section title).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path

from docutils.nodes import make_id
from markdown_it import MarkdownIt
from mdit_py_plugins.dollarmath import dollarmath_plugin

from qkv.chapters import BOOK_DIR, CHAPTERS, available_slugs
from qkv.citations import CitationError
from qkv.i18n import mark
from qkv.quiz import markdown_to_html

SHORT_ANSWER = "**Short answer.**"
# A paragraph that opens with a bold label ending in a period starts the next part of a section.
_NEXT_PART = re.compile(r"^\*\*[A-Z][^*]*\.\*\*")
_FENCE = re.compile(r"^(`{3,}|~{3,}|:{3,})")
# Parses a heading's inline markup the way MyST does (dollar math on) to recover its plain text.
_HEADING_MD = MarkdownIt("commonmark")
dollarmath_plugin(_HEADING_MD)


@dataclass(frozen=True)
class Question:
    """One interview question of a chapter page."""

    heading: str       # the heading's markdown source, e.g. 'Why −inf and not 0?'
    anchor: str        # the id of the heading's section in the built HTML
    short_answer: str  # markdown of the short answer, without the "**Short answer.**" label


def heading_text(heading: str) -> str:
    """Plain text of a heading's inline markdown: markup removed, code and math kept as text."""
    pieces: list[str] = []
    for token in _HEADING_MD.parseInline(heading):
        for child in token.children or []:
            if child.type in ("text", "code_inline", "math_inline"):
                pieces.append(child.content)
            elif child.type in ("softbreak", "hardbreak"):
                pieces.append(" ")
    return "".join(pieces)


def heading_anchor(heading: str) -> str:
    """The section id Sphinx gives a ``## heading`` (e.g. 'Why −inf and not 0?' -> 'why-inf-and-not-0')."""
    return make_id(heading_text(heading))


def _sections(markdown: str) -> list[tuple[str, list[str]]]:
    """Split a page into (``## `` heading, body lines), ignoring anything inside fenced blocks."""
    sections: list[tuple[str, list[str]]] = []
    fence: str | None = None
    for line in markdown.splitlines():
        stripped = line.strip()
        opener = _FENCE.match(stripped)
        if fence is not None:
            # A fence closes with the same character repeated at least as often, and nothing else.
            if opener and stripped == opener.group(1) and opener.group(1)[0] == fence[0] \
                    and len(opener.group(1)) >= len(fence):
                fence = None
            if sections:
                # Keep the line count but hide the content: a fence's text is never a short answer.
                sections[-1][1].append("```")
            continue
        if opener:
            fence = opener.group(1)
        if line.startswith("## "):
            sections.append((line[3:].strip(), []))
        elif line.startswith("# "):
            sections.append(("", []))  # the page title: not a question, ends the previous section
        elif sections:
            sections[-1][1].append(line)
    return sections


def _short_answer(body: list[str]) -> str | None:
    """The markdown of a section's short answer, or None when the section has none."""
    start = next((i for i, line in enumerate(body) if line.startswith(SHORT_ANSWER)), None)
    if start is None:
        return None
    lines = [body[start][len(SHORT_ANSWER):].lstrip()]
    for line in body[start + 1:]:
        if _NEXT_PART.match(line) or _FENCE.match(line.strip()) or line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines).strip()


def extract_questions(markdown: str) -> list[Question]:
    """Every question section of a chapter page's markdown, in page order.

    Raises ValueError when a question has an empty short answer or two questions of the page
    would get the same anchor (Sphinx would then rename one, and its link would break).
    """
    questions: list[Question] = []
    for heading, body in _sections(markdown):
        if not heading:
            continue
        answer = _short_answer(body)
        if answer is None:
            continue
        if not answer:
            raise ValueError(f"section {heading!r} has an empty **Short answer.** paragraph; "
                             "write 2–4 sentences after the label")
        questions.append(Question(heading=heading, anchor=heading_anchor(heading), short_answer=answer))
    anchors = [q.anchor for q in questions]
    duplicates = sorted({a for a in anchors if anchors.count(a) > 1})
    if duplicates:
        raise ValueError(f"two question headings give the same anchor {duplicates}; reword one of them")
    return questions


def chapter_questions(slug: str, book_dir: Path = BOOK_DIR) -> list[Question]:
    """The questions of ``book/chapters/<slug>.md``."""
    path = book_dir / "chapters" / f"{slug}.md"
    if not path.exists():
        raise FileNotFoundError(f"no chapter page {path}; is {slug!r} listed in _toc.yml without its page?")
    return extract_questions(path.read_text(encoding="utf-8"))


_TABLE_RULE = re.compile(r"^\|?\s*:?-{3,}")
_LIST_ITEM = re.compile(r"^(?:[-*+]|\d+[.)])\s+")


def translatable_html(markdown: str, *, page: str, bibfile: Path) -> str:
    """``markdown`` as HTML whose every message carries a translation marker (``qkv.i18n``).

    The pieces are cut the way Sphinx's gettext builder cuts a page (a paragraph on one line, a
    list item, a table cell), so each piece's translation is found in the chapter's catalog
    under the same msgid.
    """
    def render(text: str, inline: bool) -> str:
        return mark(text, markdown_to_html(text, inline=inline, citation_page=page, bibfile=bibfile),
                    inline=inline, page=page)

    parts: list[str] = []
    for block in re.split(r"\n[ \t]*\n", markdown.strip()):
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        if not lines:
            continue
        if all(line.startswith("|") for line in lines):
            rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines
                    if not _TABLE_RULE.match(line)]
            head, body = rows[0], rows[1:]
            html_rows = ["<tr>" + "".join(f"<th>{render(c, True) if c else ''}</th>" for c in head) + "</tr>"]
            html_rows += ["<tr>" + "".join(f"<td>{render(c, True) if c else ''}</td>" for c in row) + "</tr>"
                          for row in body]
            parts.append(f'<table class="table"><thead>{html_rows[0]}</thead>'
                         f'<tbody>{"".join(html_rows[1:])}</tbody></table>')
        elif all(_LIST_ITEM.match(line) for line in lines):
            tag = "ol" if lines[0][0].isdigit() else "ul"
            items = "".join(f"<li>{render(_LIST_ITEM.sub('', line, count=1), True)}</li>" for line in lines)
            parts.append(f"<{tag}>{items}</{tag}>")
        else:
            parts.append(render(" ".join(lines), False))
    return "\n".join(parts)


def render_drill(book_dir: Path = BOOK_DIR) -> str:
    """The drill as HTML: per available chapter (in course order), one ``<details>`` per question.

    Each ``<details>`` has the question as its ``<summary>``, the short answer rendered from
    markdown, and a "full answer" link to ``chapters/<slug>.html#<anchor>`` (relative to the
    drill page at the book's root). Citations in a short answer link to the chapter's
    bibliography entry; an unknown key raises ``CitationError`` naming the chapter and question.
    """
    ready = available_slugs(book_dir)
    full_answer = mark("full answer", "full answer", inline=True)
    parts = ['<div class="qkv-drill">',
             "<style>.qkv-drill details { border: 1px solid #ccc; border-radius: 4px; margin: 0.4em 0; "
             "padding: 0.3em 0.7em; } .qkv-drill summary { cursor: pointer; font-weight: 600; }</style>"]
    for ch in CHAPTERS:
        if ch.slug not in ready:
            continue
        questions = chapter_questions(ch.slug, book_dir)
        parts.append(f'<section class="qkv-drill-chapter" data-chapter="{ch.slug}">')
        title = mark(ch.title, html.escape(ch.title), inline=True)
        parts.append(f'<h2><a href="chapters/{ch.slug}.html">{ch.number}. {title}</a></h2>')
        page = f"chapters/{ch.slug}.html"
        for q in questions:
            try:
                # The label stays on the first paragraph, as on the page: the paragraph is then
                # the very message the chapter's catalog translates.
                answer = translatable_html(f"{SHORT_ANSWER} {q.short_answer}", page=page,
                                           bibfile=book_dir / "references.bib")
            except CitationError as err:
                raise CitationError(f"{ch.slug}.md, short answer of {q.heading!r}: {err}") from err
            summary = mark(q.heading, markdown_to_html(q.heading, inline=True), inline=True)
            parts.append(
                '<details class="qkv-drill-question">'
                f"<summary>{summary}</summary>"
                f'<div class="qkv-drill-answer">{answer}</div>'
                f'<p><a class="qkv-drill-link" href="chapters/{ch.slug}.html#{q.anchor}">{full_answer}</a></p>'
                "</details>")
        parts.append("</section>")
    parts.append("</div>")
    return "\n".join(parts)
