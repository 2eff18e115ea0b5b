"""The book's two editions: a link on every page to the same page in the other edition, and,
in the Chinese edition, the translation of HTML that code cells generated.

Prose is translated by Sphinx itself (``language`` + ``locale_dirs``, catalogs in
``book/locales``). Code-cell outputs are shared by both editions through one execution cache,
so the HTML that cells generate (quizzes, the drill, the course map) carries translation
markers (``qkv.i18n``); this extension replaces each marked piece by its translation, looked up
first in the ``generated/`` catalogs and then in the page catalogs (the drill repeats the
chapters' short answers, which the chapter catalogs already translate).

Configuration (``sphinx.config`` in ``_config.yml``; ``book/editions.py`` sets the Chinese
edition's values):

- ``qkv_edition``: this edition's language code (``en`` or ``zh_CN``);
- ``qkv_other_edition``: ``{"label": …, "root": …}``, the other edition's link text and its
  HTML root relative to this edition's HTML root.
"""

from __future__ import annotations

import html
from pathlib import Path

from babel.messages.pofile import read_po
from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

GENERATED_CATALOG = "generated"


def _edition_link(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    """Prepend a link to the same page in the other edition to the page body."""
    other = app.config.qkv_other_edition
    if not other or "body" not in context:
        return
    depth = pagename.count("/")
    href = "../" * depth + other["root"].rstrip("/") + "/" + pagename + ".html"
    lang = "zh-CN" if other.get("lang", "").startswith("zh") else other.get("lang", "en")
    context["body"] = (f'<p class="qkv-edition-switch"><a href="{html.escape(href)}" hreflang="{lang}" '
                       f'lang="{lang}">{html.escape(other["label"])}</a></p>\n' + context["body"])


def _catalogs(app: Sphinx, only: str | None = None) -> dict[str, str]:
    """Every translation of this edition's catalogs (or of the one named ``only``):
    msgid -> msgstr, non-empty and not fuzzy."""
    translations: dict[str, str] = {}
    language = app.config.language
    generated: dict[str, str] = {}
    for locale_dir in app.config.locale_dirs:
        root = Path(app.srcdir, locale_dir, language, "LC_MESSAGES")
        for po in sorted(root.rglob("*.po")):
            if only is not None and po.relative_to(root).with_suffix("").as_posix() != only:
                continue
            with po.open("rb") as fh:
                catalog = read_po(fh)
            target = generated if GENERATED_CATALOG in po.relative_to(root).parts[:1] else translations
            for message in catalog:
                if message.id and message.string and not message.fuzzy and isinstance(message.id, str):
                    target[message.id] = message.string
    translations.update(generated)  # the generated catalog wins where both translate a string
    return translations


def _translate_generated_html(app: Sphinx, exception) -> None:
    """Replace every translation marker of the written pages by its rendered translation."""
    if exception is not None or app.builder.format != "html" or app.config.qkv_edition == "en":
        return
    from qkv.i18n import MARKER  # the book's own library: importable wherever the book builds
    from qkv.quiz import markdown_to_html

    translations = _catalogs(app)
    bibfile = Path(app.srcdir, "references.bib")
    missing: set[str] = set()

    def replace(match) -> str:
        msgid, page = html.unescape(match["msgid"]), html.unescape(match["page"])
        text = translations.get(msgid)
        if text is None:
            missing.add(msgid)
            return match.group(0)
        tag = match["tag"]
        rendered = markdown_to_html(text, inline=tag == "span", citation_page=page, bibfile=bibfile)
        return (f'<{tag} class="qkv-i18n" data-msgid="{match["msgid"]}" data-page="{match["page"]}">'
                f"{rendered}</{tag}><!--/qkv-i18n-->")

    for page in Path(app.outdir).rglob("*.html"):
        if "_static" in page.parts:
            continue
        text = page.read_text(encoding="utf-8")
        if "qkv-i18n" not in text:
            continue
        page.write_text(MARKER.sub(replace, text), encoding="utf-8")
    for msgid in sorted(missing):
        logger.warning("no translation for generated text %r: run `make translations` and translate it "
                       "in book/locales/%s/LC_MESSAGES/%s/", msgid[:80], app.config.language, GENERATED_CATALOG,
                       type="qkv", subtype="i18n")


def _check_translations_applied(app: Sphinx, doctree) -> None:
    """Warn (so the strict build fails) wherever this edition would show English text.

    Two cases: a message with no translation (the page changed and ``make translations`` was not
    run, or the new messages are not translated yet), and a translation Sphinx could not apply.
    Sphinx parses each translation as markup and silently keeps the English text when the result
    is not the same kind of element: a heading translated as "2. 为什么…" parses as a numbered
    list, not a title (write "2\\. 为什么…").
    """
    if app.config.qkv_edition == "en":
        return
    from sphinx.util.i18n import docname_to_domain
    from sphinx.util.nodes import extract_messages

    domain = docname_to_domain(app.env.docname, app.config.gettext_compact)
    catalog = _catalogs(app, only=domain)
    for node, msg in extract_messages(doctree):
        if node.get("translated") is not False:
            continue
        if catalog.get(msg):
            logger.warning("the translation of %r could not be applied: it does not parse as the same kind of "
                           "element as the English (escape a leading '2.' as '2\\.', keep lists as lists)",
                           msg[:80], location=node, type="qkv", subtype="i18n")
        else:
            logger.warning("no translation for %r: run `make translations` and translate it in "
                           "book/locales/%s/LC_MESSAGES/%s.po", msg[:80], app.config.language, domain,
                           location=node, type="qkv", subtype="i18n")


def _glue_in_translated_messages() -> None:
    """Let ``{glue:text}`` work inside translated paragraphs.

    Sphinx parses each translation as a fresh little document, which does not hold the
    notebook's glue data (myst-nb keeps it on the page's own document only while parsing it),
    so the role would find no key. There the role becomes a reference to the page's own glue
    data (``/<page>::<key>``), which myst-nb resolves after parsing from the page's stored outputs.
    """
    from myst_nb.ext.glue.roles import PasteTextRole

    if getattr(PasteTextRole.run, "_qkv_translated", False):
        return
    original = PasteTextRole.run

    def run(self):
        if "nb_renderer" not in self.document and "::" not in self.text:
            env = self.document.settings.env
            key_format = self.text if ":" in self.text else f"{self.text}:s"  # "s": the role's default
            self.text = f"/{env.doc2path(env.docname, False)}::{key_format}"
        return original(self)

    run._qkv_translated = True
    PasteTextRole.run = run


def setup(app: Sphinx) -> dict:
    _glue_in_translated_messages()
    app.add_config_value("qkv_edition", "en", "html")
    app.add_config_value("qkv_other_edition", {}, "html")
    app.connect("html-page-context", _edition_link)
    app.connect("doctree-read", _check_translations_applied)
    app.connect("build-finished", _translate_generated_html)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
