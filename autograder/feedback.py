"""Feedback pages a learner (or an instructor) can open safely, offline.

nbgrader renders feedback with nbconvert. Three things are added around it:

1. :class:`SanitizeLearnerCells`, a preprocessor in GenerateFeedback's list: learner Markdown
   and raw cells are rendered to HTML here and cleaned with bleach (nbconvert's own
   sanitiser) under a strict allow-list, before nbgrader's template sees them. Raw HTML,
   scripts, event handlers, forms, frames, styles, classes (a fake score banner is a
   ``<div class="panel ...">``) and remote images do not survive; raw cells are shown as
   text. nbgrader's feedback template renders Markdown without any sanitising, and
   nbconvert's ``clean_html`` keeps ``class`` on every tag, so neither is enough alone.
2. :func:`reread_output`, the output that follows a failed test's error: the book section to
   reread, by title, linked (by :func:`link_book_sections`) to the built page's ``file://`` URL
   with the section's anchor, or with the command that builds it.
3. :class:`FeedbackExporter`, the exporter nbgrader's GenerateFeedback is configured to use:
   nbgrader's template hard-codes MathJax 2 from a CDN (not configurable), so every page it
   writes, including ``COURSE/feedback/`` that ``nbgrader release_feedback`` hands to learners,
   would reach the network. The exporter removes that tag and adds a Content-Security-Policy
   that runs no script and fetches nothing from anywhere, before nbgrader writes the page: no
   page on disk, even one left by a killed run, ever loads anything. A released page is a single
   file opened wherever the learner fetched it, so formulas stay as TeX there. The exporter also
   keeps its compiled templates for the whole process (see ``_TemplateBytecode``).
4. :func:`finish_page` on the instructor's copy under ``--out/feedback/``: the formulas are
   typeset by the book's vendored MathJax 3, copied once next to the feedback pages
   (:func:`install_mathjax`); the policy then lets scripts from the page's own location run.
"""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import bleach
from jinja2 import BytecodeCache
from jinja2.bccache import Bucket
from nbconvert.exporters import HTMLExporter, TemplateExporter
from nbconvert.filters.highlight import Highlight2HTML
from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath
from nbconvert.filters.widgetsdatatypefilter import WidgetsDataTypeFilter
from nbconvert.preprocessors import Preprocessor
from nbformat.v4 import new_output
from pygments.token import STANDARD_TYPES
from traitlets import Bool

from autograder.course import REPO_ROOT
from autograder.learner_text import clean

VENDORED_MATHJAX = REPO_ROOT / "book" / "_vendor" / "mathjax"
MATHJAX_DIR = "_mathjax"  # next to the per-student folders under feedback/
MATHJAX_CONFIG = "qkv-feedback-config.js"
_MATHJAX_CDN = re.compile(r'<script src="https://cdnjs\.cloudflare\.com/ajax/libs/mathjax/[^"]*">\s*</script>')
# The template's inline MathJax 2 configuration, in <head> before any learner text: dead without
# MathJax 2, and a released page should hold no script at all.
_MATHJAX2_CONFIG = re.compile(r'<script type="text/x-mathjax-config">.*?</script>', re.S)
# Where the CDN tag was, in every page the exporter writes; finish_page puts local MathJax there.
MATH_PLACEHOLDER = "<!-- qkv: no MathJax is loaded in this page (no script, no network); formulas show as TeX -->"
# A file, not an inline script, so that the policy below can forbid every inline script.
_CONFIG_JS = 'window.MathJax = {tex: {inlineMath: [["$", "$"], ["\\\\(", "\\\\)"]]}};\n'
_POLICY = ("default-src 'none'; script-src {scripts}; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
           "font-src 'self' data:; base-uri 'none'; form-action 'none'")
RELEASED_CSP = _POLICY.format(scripts="'none'")  # pages in COURSE/feedback, released to learners
CSP = _POLICY.format(scripts="'self'")  # the instructor's copies, next to the vendored MathJax
_CSP_META = '<meta http-equiv="Content-Security-Policy" content="{}">'

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


BOOK_LINK = "qkv-book/"  # where reread_output points; finish_page makes it the built page's URL
# qkv-book/<edition>/chapters/<chapter>.html#<anchor>; a page recorded before links named their
# edition has no <edition>/ and is the English one.
_BOOK_LINK = re.compile(r'<a href="qkv-book/(?:([A-Za-z_]+)/)?chapters/([a-z_]+)\.html#([A-Za-z0-9_-]+)"'
                        r'[^>]*>(.*?)</a>', re.S)


def reread_output(chapter: str, heading: str, edition: str = "en") -> dict:
    """A ``display_data`` output naming the section to reread, by title as the ``edition`` of the
    book shows it, linked to the chapter's page in that edition and the section's anchor.

    nbconvert sanitises outputs (``sanitize_html``): a ``file://`` link would lose its address
    there, and where the page will be written is not known yet; so the link is written as
    ``qkv-book/<edition>/chapters/<chapter>.html#<anchor>`` (scheme-less, which the sanitiser
    keeps) and :func:`finish_page` points it at the built book. The heading comes from our own
    checks, never from the learner; it is escaped all the same."""
    from qkv.book_links import anchor, page, section_link

    title = section_link(chapter, heading, edition).title()
    target = f"{BOOK_LINK}{edition}/chapters/{chapter}.html#{anchor(heading)}"
    return new_output("display_data", data={
        "text/html": f'<strong>Reread</strong> <a href="{html.escape(target)}">{html.escape(title)}</a> in the book.',
        "text/plain": f"Reread {title} in the book: {page(chapter, heading, edition)}"})


def link_book_sections(text: str) -> str:
    """Point every ``qkv-book/`` link of a feedback page (:func:`reread_output`) at the built
    page of its edition (the English one when that edition is not built) as an absolute
    ``file://`` URL, which opens from the feedback file wherever it was copied; when the book is
    not built, keep the section's title and say how to build it. A learner's Markdown could
    hold such a link too: it can only ever point at a page of our own book (the edition must be
    one of the book's, the chapter one of its chapters, the anchor a plain id)."""
    from qkv import book_links
    from qkv.chapters import CHAPTERS

    slugs = {c.slug for c in CHAPTERS}

    def replace(m: re.Match) -> str:
        edition, chapter, anchor, title = m.groups()
        editions = (edition, "en") if edition in book_links.EDITIONS else ("en",)
        for candidate in dict.fromkeys(editions):
            built = book_links.html_root(candidate) / "chapters" / f"{chapter}.html"
            if chapter in slugs and built.is_file():
                return f'<a href="{html.escape(built.resolve().as_uri())}#{anchor}" target="_blank">{title}</a>'
        return (f"<em>{title}</em> (the book is not built: run <code>{html.escape(book_links.BUILD_COMMAND)}</code> "
                f"in {html.escape(str(book_links.BOOK.parent))} to get a link to the page)")

    return _BOOK_LINK.sub(replace, text)


class FeedbackPageError(RuntimeError):
    """A feedback page did not have the shape we secure; it is withheld rather than published."""


class _TemplateBytecode(BytecodeCache):
    """Jinja's compiled templates, kept in memory for the life of the process.

    nbgrader makes a new exporter, hence a new Jinja environment, for every student, and
    parsing and compiling the feedback template's nine files took half of a page's time.
    Jinja checks each cached template against its source's checksum, so an edited template
    is compiled again; every environment sharing this cache is configured alike."""

    def __init__(self) -> None:
        self._code: dict[str, bytes] = {}

    def load_bytecode(self, bucket: Bucket) -> None:
        code = self._code.get(bucket.key)
        if code is not None:
            bucket.bytecode_from_string(code)

    def dump_bytecode(self, bucket: Bucket) -> None:
        self._code[bucket.key] = bucket.bytecode_to_string()


_TEMPLATES = _TemplateBytecode()


class FeedbackExporter(HTMLExporter):
    """nbconvert's HTML exporter, for nbgrader's GenerateFeedback: templates compiled once per
    process, and every page made offline (:func:`released_html`) before nbgrader writes it."""

    def _create_environment(self):
        environment = super()._create_environment()
        environment.bytecode_cache = _TEMPLATES
        return environment

    def from_notebook_node(self, nb, resources=None, **kw):
        output, resources = self._render(nb, resources, **kw)
        return released_html(output), resources

    def _render(self, nb, resources=None, **kw):
        """``HTMLExporter.from_notebook_node``, without re-parsing every page when that changes nothing.

        nbconvert's HTML exporter renders the page, then parses all of it with BeautifulSoup to
        give images without alt text a default one and to make JupyterLab-template cells
        focusable, and serialises it again: half of a feedback page's time (cProfile, 2 cores),
        on pages that have neither (nbgrader's feedback template is not JupyterLab's, and
        outputs are cleared when grading). The same steps as nbconvert 7 (its
        ``from_notebook_node``) run here; the parse only when the page has an ``<img`` or one of
        those cells. ``tests/test_feedback_exporter.py`` holds the result equal to nbconvert's.
        """
        langinfo = nb.metadata.get("language_info", {})
        lexer = langinfo.get("pygments_lexer", langinfo.get("name", None))
        highlight_code = self.filters.get("highlight_code", Highlight2HTML(pygments_lexer=lexer, parent=self))
        resources = self._init_resources(resources)
        filter_data_type = WidgetsDataTypeFilter(notebook_metadata=self._nb_metadata, parent=self,
                                                 resources=resources)
        self.register_filter("highlight_code", highlight_code)
        self.register_filter("filter_data_type", filter_data_type)
        html_text, resources = TemplateExporter.from_notebook_node(self, nb, resources, **kw)
        if not any(marker in html_text for marker in _NBCONVERT_REWRITES):
            return html_text, resources
        return _nbconvert_accessibility_pass(html_text, self.log), resources


# What HTMLExporter's BeautifulSoup pass rewrites (nbconvert 7, exporters/html.py).
_NBCONVERT_REWRITES = ("<img", "<IMG", "jp-Cell-inputWrapper", "jp-OutputArea-output")


def _nbconvert_accessibility_pass(text: str, log) -> str:
    """nbconvert 7's pass, as it is there: default alt text, focusable cells."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(text, features="html.parser")
    missing_alt = 0
    for elem in soup.select("img:not([alt])"):
        elem.attrs["alt"] = "No description has been provided for this image"
        missing_alt += 1
    if missing_alt:
        log.warning("Alternative text is missing on %s image(s).", missing_alt)
    for elem in soup.select(".jp-Notebook div.jp-Cell-inputWrapper"):
        elem.attrs["tabindex"] = "0"
    for elem in soup.select(".jp-Notebook div.jp-OutputArea-output"):
        elem.attrs["tabindex"] = "0"
    return str(soup)


def released_html(text: str) -> str:
    """``text`` (a page nbgrader rendered) with the CDN MathJax tag replaced by
    ``MATH_PLACEHOLDER``, the MathJax 2 configuration removed, and :data:`RELEASED_CSP` as the
    first thing in ``<head>``.

    Raises FeedbackPageError when there is no ``<head>`` to put the policy in."""
    text = link_book_sections(_MATHJAX_CDN.sub(lambda _: MATH_PLACEHOLDER, text))
    text = _MATHJAX2_CONFIG.sub("", text, count=1)
    head = re.search(r"<head\b[^>]*>", text, re.I)
    if head is None:
        raise FeedbackPageError("the feedback page has no <head> to put a Content-Security-Policy in")
    return text[: head.end()] + "\n" + _CSP_META.format(RELEASED_CSP) + text[head.end():]


def install_mathjax(feedback_root: Path) -> bool:
    """Copy the vendored MathJax next to the pages under ``feedback_root`` (once, before any
    page is finished; pages are finished in several processes). False when it is not vendored."""
    if not VENDORED_MATHJAX.is_dir():
        return False
    local = feedback_root / MATHJAX_DIR
    if not (local / "tex-mml-chtml.js").is_file():
        shutil.copytree(VENDORED_MATHJAX, local, dirs_exist_ok=True)
    if not (local / MATHJAX_CONFIG).is_file():
        (local / MATHJAX_CONFIG).write_text(_CONFIG_JS, encoding="utf-8")
    return True


def finish_page(page: Path, feedback_root: Path) -> None:
    """Make the instructor's copy ``page`` (in ``feedback_root/<student>/``) typeset formulas
    with the MathJax :func:`install_mathjax` put in ``feedback_root``, under :data:`CSP`.

    A page not yet made offline goes through :func:`released_html` first. Raises
    FeedbackPageError (after deleting the page) when the page has no ``<head>``."""
    text = page.read_text(encoding="utf-8")
    released = _CSP_META.format(RELEASED_CSP)
    try:
        if released not in text:
            text = released_html(text)
    except FeedbackPageError as exc:
        page.unlink(missing_ok=True)
        raise FeedbackPageError(f"{page.name}: {exc}; it was not published") from None
    if (feedback_root / MATHJAX_DIR / "tex-mml-chtml.js").is_file():
        tag = (f'<script src="../{MATHJAX_DIR}/{MATHJAX_CONFIG}"></script>\n'
               f'<script src="../{MATHJAX_DIR}/tex-mml-chtml.js"></script>')
    else:
        tag = "<!-- MathJax is not vendored yet (run `make book` once); formulas show as TeX -->"
    text = text.replace(MATH_PLACEHOLDER, tag, 1).replace(released, _CSP_META.format(CSP), 1)
    page.write_text(link_book_sections(text), encoding="utf-8")
