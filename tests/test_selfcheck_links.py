"""Where `qkv check` sends a learner: the notebook found in a folder, and the sections to reread
as `file://` URLs of the built book in the reader's edition (fast: no subprocess, no torch).

The expected URLs are built here from the folder layout the book's build writes
(``book/_build/html/`` and ``book/_build/zh_CN/_build/html/``) and from anchors written out by
hand, not read back from the code under test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from qkv import book_links, selfcheck

SCALING = "Why does attention divide the logits by √d_k?"
SCALING_ANCHOR = "why-does-attention-divide-the-logits-by-d-k"


def _build(book: Path, edition: str, chapter: str) -> Path:
    root = book / "_build" / "html" if edition == "en" else book / "_build" / edition / "_build" / "html"
    page = root / "chapters" / f"{chapter}.html"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("<html></html>")
    return page


@pytest.mark.parametrize("lang, environ, edition", [
    ("zh_CN", {}, "zh_CN"), ("zh", {}, "zh_CN"), ("zh-CN", {"LANG": "en_US.UTF-8"}, "zh_CN"),
    ("en", {"LANG": "zh_CN.UTF-8"}, "en"), (None, {}, "en"),
    (None, {"LANG": "zh_CN.UTF-8"}, "zh_CN"), (None, {"LC_ALL": "zh_TW.UTF-8", "LANG": "en_US"}, "zh_CN"),
    (None, {"LC_ALL": "C.UTF-8", "LANG": "zh_CN.UTF-8"}, "en"),  # POSIX: the first one set decides
    (None, {"LC_ALL": "", "LANG": "zh_CN.UTF-8"}, "zh_CN"),
])
def test_the_edition_follows_lang_then_the_locale(lang, environ, edition):
    assert book_links.edition_of(lang, environ) == edition


def test_an_unknown_language_is_a_clear_error():
    with pytest.raises(ValueError, match="no 'fr' edition of the book; choose one of: en, zh_CN"):
        book_links.edition_of("fr", {})


def test_each_edition_links_into_itself(tmp_path):
    book = tmp_path / "book"
    en, zh = _build(book, "en", "scaling"), _build(book, "zh_CN", "scaling")
    english = book_links.section_link("scaling", SCALING, "en", book)
    chinese = book_links.section_link("scaling", SCALING, "zh_CN", book)
    assert english.url == f"file://{en.resolve()}#{SCALING_ANCHOR}" and english.edition == "en"
    assert chinese.url == f"file://{zh.resolve()}#{SCALING_ANCHOR}" and chinese.edition == "zh_CN"
    assert "/_build/zh_CN/_build/html/chapters/scaling.html#" in chinese.url
    assert book_links.missing_edition_note([english], "en", book) == ""
    assert book_links.missing_edition_note([chinese], "zh_CN", book) == ""


def test_only_the_english_edition_built_links_there_and_says_so(tmp_path):
    book = tmp_path / "book"
    en = _build(book, "en", "scaling")
    link = book_links.section_link("scaling", SCALING, "zh_CN", book)
    assert link.url == f"file://{en.resolve()}#{SCALING_ANCHOR}" and link.edition == "en"
    note = book_links.missing_edition_note([link], "zh_CN", book)
    assert "Chinese edition of the book is not built" in note and "make book" in note


def test_the_grader_is_told_before_linking_into_an_edition_that_is_not_built(tmp_path):
    """book_links.unbuilt_edition_note, which `grade --lang` prints before anyone is graded."""
    book = tmp_path / "book"
    none_built = book_links.unbuilt_edition_note("zh_CN", book)
    assert none_built == (f"the Chinese edition of the book is not built, so the sections to reread are named "
                          f"without a link: run `make book` in {tmp_path} first")
    (book / "_build" / "html").mkdir(parents=True)
    (book / "_build" / "html" / "index.html").write_text("<html></html>")
    assert book_links.unbuilt_edition_note("en", book) == ""
    assert "Chinese edition of the book is not built, so the sections to reread are linked in the English one" \
        in book_links.unbuilt_edition_note("zh_CN", book)
    zh_root = book_links.html_root("zh_CN", book)
    zh_root.mkdir(parents=True)
    (zh_root / "index.html").write_text("<html></html>")
    assert book_links.unbuilt_edition_note("zh_CN", book) == ""


def test_no_book_built_gives_the_title_and_how_to_build_it(tmp_path):
    book = tmp_path / "book"
    link = book_links.section_link("scaling", SCALING, "en", book)
    assert link.url == ""
    assert link.title() == f"“{SCALING}” (chapter 2, Why divide by √d_k)"
    note = book_links.missing_edition_note([link], "en", book)
    assert "the book is not built" in note and "`make book`" in note and str(tmp_path) in note


def test_the_chinese_edition_shows_the_translated_heading_with_the_english_anchor(tmp_path):
    book = tmp_path / "book"
    zh = _build(book, "zh_CN", "scaling")
    po = book / "locales" / "zh_CN" / "LC_MESSAGES" / "chapters" / "scaling.po"
    po.parent.mkdir(parents=True)
    po.write_text(f'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n\n'
                  f'msgid "{SCALING}"\nmsgstr "注意力为什么要把 logits 除以 √d_k？"\n', encoding="utf-8")
    link = book_links.section_link("scaling", SCALING, "zh_CN", book)
    assert link.heading == "注意力为什么要把 logits 除以 √d_k？"
    assert link.url == f"file://{zh.resolve()}#{SCALING_ANCHOR}"  # Sphinx keeps the original id


def test_the_report_prints_the_url_under_the_section_title(tmp_path, monkeypatch):
    """The terminal table: the failing diagnosis's own section (scaling), not the function's
    default (attention), and its absolute file:// URL, which opens from any folder."""
    monkeypatch.setattr(book_links, "BOOK", tmp_path / "book")
    page = _build(tmp_path / "book", "en", "scaling")
    verdicts = [("test_sdpa", "scaled_dot_product_attention", "failing", "forgot the scale", ("scaling", SCALING)),
                ("test_softmax", "softmax", "passed", "", None)]
    report = selfcheck.aggregate("attention", ["softmax", "scaled_dot_product_attention"], verdicts)
    text = report.to_text()
    assert f"reread: “{SCALING}” (chapter 2, Why divide by √d_k)" in text
    assert f"file://{page.resolve()}#{SCALING_ANCHOR}" in text
    assert "How is attention computed" not in text and "note:" not in text
    # Without a diagnosis's own section, the function's section (attention chapter, not built): title and note.
    report = selfcheck.aggregate("attention", ["scaled_dot_product_attention"],
                                 [("test_sdpa", "scaled_dot_product_attention", "failing", "wrong", None)])
    text = report.to_text()
    assert "reread: “How is attention computed, step by step?” (chapter 1, Attention from first principles)" in text
    assert "file://" not in text and "run `make book`" in text


@pytest.mark.parametrize("layout", ["attention.ipynb", "attention/attention.ipynb",
                                    "exercises/attention/attention.ipynb", "my copy.ipynb"])
def test_a_folder_argument_finds_the_chapters_notebook(tmp_path, layout):
    notebook = tmp_path / "my-qkv" / layout
    notebook.parent.mkdir(parents=True)
    notebook.write_text("{}")
    assert selfcheck.find_notebook("attention", tmp_path / "my-qkv") == notebook
    assert selfcheck.find_notebook("attention", notebook) == notebook


def test_a_folder_without_the_notebook_says_what_it_holds_and_what_to_pass(tmp_path):
    for name in ("a.ipynb", "b.ipynb"):
        (tmp_path / name).write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"no attention.ipynb in the folder .* \(it holds a.ipynb, b.ipynb\); "
                                                r"pass the notebook itself: qkv check attention "):
        selfcheck.find_notebook("attention", tmp_path)
    with pytest.raises(FileNotFoundError, match="no notebook at"):
        selfcheck.find_notebook("attention", tmp_path / "missing")


def test_a_tilde_path_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    notebook = tmp_path / "my-qkv" / "attention" / "attention.ipynb"
    notebook.parent.mkdir(parents=True)
    notebook.write_text("{}")
    assert selfcheck.find_notebook("attention", Path("~/my-qkv/attention")) == notebook


def test_every_exercise_links_to_its_chapters_built_page_not_its_source():
    """The intro of each exercise links to the chapter's page of the built book (what a reader
    opens), from where the notebook sits; no Markdown cell links a .md source."""
    import re

    import nbformat

    from qkv.chapters import CHAPTERS

    repo = book_links.REPO
    toc = (repo / "book" / "_toc.yml").read_text()
    for ch in CHAPTERS:
        folder = repo / "exercises" / ch.slug
        nb = nbformat.read(folder / f"{ch.slug}.ipynb", as_version=4)
        markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        links = re.findall(r"\]\(([^)\s]+)\)", markdown)
        assert "../../book/_build/html/chapters/" f"{ch.slug}.html" in links, (ch.slug, links)
        assert (folder / "../../book/_build/html/chapters" / f"{ch.slug}.html").resolve() == \
            repo / "book" / "_build" / "html" / "chapters" / f"{ch.slug}.html"
        assert f"chapters/{ch.slug}" in toc and (repo / "book" / "chapters" / f"{ch.slug}.md").is_file()
        assert not [link for link in links if link.split("#")[0].endswith(".md")], (ch.slug, links)
