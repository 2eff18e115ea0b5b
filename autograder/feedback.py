"""Feedback pages a learner (or an instructor) can open safely, offline.

nbgrader renders feedback with nbconvert. Two things are added around it:

1. :class:`SanitizeLearnerCells`, a preprocessor in GenerateFeedback's list: learner Markdown
   and raw cells are rendered to HTML here and cleaned with bleach (nbconvert's own
   sanitiser) under a strict allow-list, before nbgrader's template sees them. Raw HTML,
   scripts, event handlers, forms, frames, styles, classes (a fake score banner is a
   ``<div class="panel ...">``) and remote images do not survive; raw cells are shown as
   text. nbgrader's feedback template renders Markdown without any sanitising, and
   nbconvert's ``clean_html`` keeps ``class`` on every tag, so neither is enough alone.
2. :func:`finish_page` on the written page: nbgrader's template hard-codes MathJax 2 from a
   CDN (not configurable), so offline a learner would see raw TeX and the page would reach
   the network; it is pointed at the book's vendored MathJax 3, copied once next to the
   feedback pages. A Content-Security-Policy is added as a second wall: only scripts from
   the page's own location run, and nothing is fetched from anywhere else.
"""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import bleach
from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath
from nbconvert.preprocessors import Preprocessor
from pygments.token import STANDARD_TYPES
from traitlets import Bool

from autograder.course import REPO_ROOT
from autograder.learner_text import clean

VENDORED_MATHJAX = REPO_ROOT / "book" / "_vendor" / "mathjax"
MATHJAX_DIR = "_mathjax"  # next to the per-student folders under feedback/
MATHJAX_CONFIG = "qkv-feedback-config.js"
_MATHJAX_CDN = re.compile(r'<script src="https://cdnjs\.cloudflare\.com/ajax/libs/mathjax/[^"]*">\s*</script>')
# A file, not an inline script, so that the policy below can forbid every inline script.
_CONFIG_JS = 'window.MathJax = {tex: {inlineMath: [["$", "$"], ["\\\\(", "\\\\)"]]}};\n'
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "font-src 'self' data:; base-uri 'none'; form-action 'none'")

# What rendered Markdown may contain. No div/span/class beyond code highlighting, no style,
# no id (a learner's id could hijack the page's anchors), no form, frame, media or script.
ALLOWED_TAGS = frozenset({
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "em", "strong", "b", "i", "u", "del", "s", "sup", "sub",
    "code", "pre", "kbd", "blockquote", "ul", "ol", "li", "dl", "dt", "dd", "a", "img",
    "table", "thead", "tbody", "tr", "th", "td", "span", "div",
})
_PYGMENTS_CLASSES = frozenset(v for v in STANDARD_TYPES.values() if v)
_IMAGE_DATA = re.compile(r"^data:image/(png|jpeg|gif|webp|svg\+xml);base64,[A-Za-z0-9+/=\s]*$")


def _allowed_attribute(tag: str, name: str, value: str) -> bool:
    if tag == "a":
        if name == "href":  # a link loads nothing until clicked; no javascript:, data: or other schemes
            scheme = urlsplit(value).scheme.lower()
            return scheme in ("http", "https", "mailto") or (scheme == "" and not value.lstrip().startswith("//"))
        return name == "title" or (name == "class" and value == "anchor-link")
    if tag == "img":
        if name == "src":
            return bool(_IMAGE_DATA.match(value))  # embedded attachments only: no request leaves the page
        return name in ("alt", "title")
    if tag == "span" and name == "class":  # pygments' token classes colour highlighted code
        return all(c in _PYGMENTS_CLASSES for c in value.split())
    if tag == "div" and name == "class":
        return value == "highlight"
    if tag == "ol" and name == "start":
        return value.isdigit()
    return False


_CLEANER = bleach.sanitizer.Cleaner(tags=ALLOWED_TAGS, attributes=_allowed_attribute,
                                    protocols=["http", "https", "mailto", "data"], strip=False, strip_comments=True)


def sanitize_markdown(source: str, attachments: dict | None = None) -> str:
    """Learner Markdown as one line of clean HTML, wrapped in a ``<div>``.

    Rendered with nbconvert's own Markdown renderer (math is kept for MathJax), cleaned with
    the allow-list above; disallowed tags are shown as text. Newlines become ``&#10;`` so
    that the template's second Markdown pass takes the whole thing as one HTML block and
    passes it through unchanged."""
    source = clean(source)
    try:
        renderer = IPythonRenderer(escape=False, attachments=attachments or {}, exclude_anchor_links=True)
        rendered = MarkdownWithMath(renderer=renderer).render(source)
    except Exception:  # a missing attachment or a renderer bug: show the text as it is
        rendered = f"<pre>{html.escape(source)}</pre>"
    safe = _CLEANER.clean(rendered)
    return '<div class="qkv-learner-text">' + safe.replace("\r", "").replace("\n", "&#10;") + "</div>"


def text_block(source: str) -> str:
    """Any text shown verbatim: escaped inside ``<pre>``, as one HTML block line."""
    return '<div class="qkv-learner-text"><pre>' + html.escape(clean(source)).replace("\n", "&#10;") + "</pre></div>"


class SanitizeLearnerCells(Preprocessor):
    """Make every Markdown and raw cell inert before nbgrader's template renders it.

    Markdown cells keep their formatting and math through :func:`sanitize_markdown`; raw
    cells (which nbconvert would insert into the page as HTML) become Markdown cells that
    show their text. Instruction cells go through the same path: our own Markdown needs no
    HTML, and one path for every cell leaves nothing a learner could pass off as ours."""

    enabled = Bool(True, help="nbconvert preprocessors are off unless enabled; this one must always run")

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type == "markdown":
            cell.source = sanitize_markdown(cell.source, cell.get("attachments"))
            cell.pop("attachments", None)
        elif cell.cell_type == "raw":
            cell.cell_type = "markdown"
            cell.source = text_block(cell.source)
            cell.metadata.pop("raw_mimetype", None)
            cell.metadata.pop("format", None)
        return cell, resources


class FeedbackPageError(RuntimeError):
    """A feedback page did not have the shape we secure; it is withheld rather than published."""


def finish_page(page: Path, feedback_root: Path) -> None:
    """Point ``page`` at the vendored MathJax and add the Content-Security-Policy.

    Raises FeedbackPageError (after deleting the page) when the page has no ``<head>`` to
    put the policy in."""
    text = page.read_text(encoding="utf-8")
    if VENDORED_MATHJAX.is_dir():
        local = feedback_root / MATHJAX_DIR
        if not (local / "tex-mml-chtml.js").is_file():
            shutil.copytree(VENDORED_MATHJAX, local, dirs_exist_ok=True)
        if not (local / MATHJAX_CONFIG).is_file():
            (local / MATHJAX_CONFIG).write_text(_CONFIG_JS, encoding="utf-8")
        tag = (f'<script src="../{MATHJAX_DIR}/{MATHJAX_CONFIG}"></script>\n'
               f'<script src="../{MATHJAX_DIR}/tex-mml-chtml.js"></script>')
    else:
        tag = "<!-- MathJax is not vendored yet (run `make book` once); formulas show as TeX -->"
    text = _MATHJAX_CDN.sub(lambda _: tag, text)
    head = re.search(r"<head\b[^>]*>", text, re.I)
    if head is None:
        page.unlink(missing_ok=True)
        raise FeedbackPageError(f"{page.name} has no <head>; it was not published")
    policy = f'\n<meta http-equiv="Content-Security-Policy" content="{CSP}">'
    page.write_text(text[: head.end()] + policy + text[head.end():], encoding="utf-8")
