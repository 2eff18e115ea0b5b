"""The Chinese edition: complete and current catalogs, consistent terms, links that resolve in
both editions, shared cells and outputs, and a browser check of a Chinese page from file://."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from babel.messages.pofile import read_po
from bs4 import BeautifulSoup

from qkv.i18n import MARKER

REPO = Path(__file__).resolve().parent.parent
BOOK = REPO / "book"
LOCALE = BOOK / "locales" / "zh_CN" / "LC_MESSAGES"
GLOSSARY = BOOK / "locales" / "GLOSSARY.md"

_spec = importlib.util.spec_from_file_location("book_editions", BOOK / "editions.py")
editions = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(editions)


def _pages(html: Path) -> list[Path]:
    return sorted(p for p in html.rglob("*.html") if "_static" not in p.parts and "_sources" not in p.parts)


# ------------------------------------------------------------------------------ catalogs

def test_every_page_has_a_catalog():
    pages = [BOOK / "intro.md", BOOK / "drill.md", BOOK / "instructors.md", *sorted((BOOK / "chapters").glob("*.md"))]
    missing = [str(p.relative_to(BOOK)) for p in pages
               if not (LOCALE / p.relative_to(BOOK).with_suffix(".po")).exists()]
    assert missing == [], f"pages without a zh_CN catalog (run `make translations`): {missing}"


CATALOGS = sorted(LOCALE.rglob("*.po"))
_ids_of = [str(p.relative_to(LOCALE).with_suffix("")) for p in CATALOGS]


def _messages(po: Path) -> list:
    with po.open("rb") as fh:
        return [m for m in read_po(fh) if m.id]


@pytest.mark.parametrize("po", CATALOGS, ids=_ids_of)
def test_every_message_is_translated_and_none_is_fuzzy(po):
    problems = [f"{'fuzzy' if m.fuzzy else 'untranslated'}: {m.id[:70]!r}"
                for m in _messages(po) if not m.string or m.fuzzy]
    assert problems == [], "\n".join(problems[:40]) + f"\n({len(problems)} in all)"


@pytest.mark.parametrize("po", CATALOGS, ids=_ids_of)
def test_translations_keep_roles_math_and_code_intact(po):
    """A translation may reorder a sentence but must keep every role ({glue:text}, {cite:t}),
    inline math and inline code of the English text, unchanged."""
    problems = []
    for m in _messages(po):
        if not m.string:
            continue
        role = r"\{[a-z:]+\}`[^`]*`"
        for kind, pattern, strip in (("role", role, None), ("math", r"\$[^$]+\$", role),
                                     ("code", r"`[^`]+`", role)):
            english = re.sub(strip, " ", m.id) if strip else m.id
            chinese = re.sub(strip, " ", m.string) if strip else m.string
            if sorted(re.findall(pattern, english)) != sorted(re.findall(pattern, chinese)):
                problems.append(f"{kind} differs in {m.id[:60]!r}")
    assert problems == [], "\n".join(problems[:40])


def _glossary() -> tuple[list[tuple[str, str]], list[str]]:
    translated, kept = [], []
    section = None
    for line in GLOSSARY.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            section = "translated" if "Translated" in line else "kept"
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if (not line.startswith("|") or len(cells) < 2 or set(cells[0]) <= set("-")
                or cells[0] in ("English (matched case-insensitively, as a word)", "term")):
            continue
        if section == "translated":
            translated.append((cells[0], cells[1]))
        elif section == "kept":
            kept.append(cells[0])
    return translated, kept


def _mentions(term: str, text: str) -> bool:
    # Roles, links, code, math and quoted titles carry identifiers and names, not prose: a term
    # inside them does not count (a paper's title stays as published, in quotes).
    prose = re.sub(r'\{[a-z:]+\}`[^`]*`|`[^`]*`|\]\([^)]*\)|\$[^$]*\$|"[^"]*"|“[^”]*”', " ", text)
    prose = re.sub(r"\\[A-Za-z]+(\{[^}]*\})?", " ", prose)  # display math: \operatorname{Attention}
    return re.search(rf"(?<![\w-]){re.escape(term)}(?![\w-])", prose, re.I) is not None


def test_glossary_has_both_tables():
    translated, kept = _glossary()
    assert len(translated) >= 20 and len(kept) >= 8


@pytest.mark.parametrize("po", CATALOGS, ids=_ids_of)
def test_glossary_terms_are_translated_the_same_way_everywhere(po):
    translated, kept = _glossary()
    problems = []
    for m in _messages(po):
        if not m.string:
            continue
        for english, chinese in translated:
            if _mentions(english, m.id) and chinese not in m.string:
                problems.append(f"{english!r} not as {chinese!r} in {m.string[:60]!r}")
        for term in kept:
            if _mentions(term, m.id) and term.lower() not in m.string.lower():
                problems.append(f"{term!r} should stay English in {m.string[:60]!r}")
    assert problems == [], "\n".join(problems[:40]) + f"\n({len(problems)} in all)"


@pytest.mark.slow
@pytest.mark.xdist_group("book")
def test_catalogs_are_current_with_the_pages(built_book):
    """Every catalog holds exactly the messages the pages have now (no message missing, none
    left over): an author who changed a page and forgot `make translations` fails here."""
    current = editions.extract_templates()
    stale = []
    for name, msgids in current.items():
        po = LOCALE / f"{name}.po"
        if not po.exists():
            stale.append(f"{name}: no catalog")
            continue
        with po.open("rb") as fh:
            have = {m.id for m in read_po(fh) if m.id}
        if have != msgids:
            stale.append(f"{name}: {len(msgids - have)} new message(s), {len(have - msgids)} gone")
    extra = sorted(str(p.relative_to(LOCALE).with_suffix("")) for p in LOCALE.rglob("*.po")
                   if str(p.relative_to(LOCALE).with_suffix("")) not in current)
    assert stale == [] and extra == [], f"catalogs out of date (run `make translations`): {stale} {extra}"


# ------------------------------------------------------------------------------ the built editions

@pytest.fixture(scope="session")
def built_book_zh(built_book) -> Path:
    """The Chinese edition, built strictly after the English one (sharing its execution cache)."""
    proc = subprocess.run([sys.executable, str(BOOK / "editions.py"), "build", "zh_CN"],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"Chinese build failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}"
    return editions.html_dir("zh_CN")


def _ids(page: Path, cache: dict) -> set[str]:
    if page not in cache:
        soup = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
        cache[page] = {t["id"] for t in soup.find_all(id=True)}
    return cache[page]


def _broken_links(html_root: Path, roots: tuple[Path, ...]) -> list[str]:
    broken, ids = [], {}
    html_root = html_root.resolve()
    for page in _pages(html_root):
        soup = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
        for a in soup.find_all("a", href=True):
            url = urlparse(a["href"])
            if url.scheme or a["href"].startswith("//") or a["href"].startswith("mailto:"):
                continue
            target = (page.parent / unquote(url.path)).resolve() if url.path else page
            if target.is_dir():
                target = target / "index.html"
            if not any(target.is_relative_to(r) for r in roots) or not target.exists():
                broken.append(f"{page.relative_to(html_root)} -> {a['href']} (no such file)")
            elif url.fragment and target.suffix == ".html" and url.fragment not in _ids(target, ids):
                broken.append(f"{page.relative_to(html_root)} -> {a['href']} (no such anchor)")
    return broken


@pytest.mark.slow
@pytest.mark.xdist_group("book")
def test_every_internal_link_of_both_editions_resolves(built_book, built_book_zh):
    roots = (built_book.resolve(), built_book_zh.resolve())
    broken = _broken_links(built_book, roots) + _broken_links(built_book_zh, roots)
    assert broken == [], "\n".join(broken[:40])


@pytest.mark.slow
@pytest.mark.xdist_group("book")
def test_every_page_links_to_the_same_page_in_the_other_edition(built_book, built_book_zh):
    for root, other in ((built_book, built_book_zh), (built_book_zh, built_book)):
        pages = _pages(root)
        assert len(pages) >= 12
        for page in pages:
            if page.name in ("search.html", "genindex.html", "index.html"):  # index.html: a redirect
                continue
            soup = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
            link = soup.select_one("p.qkv-edition-switch a")
            assert link is not None, f"{page.relative_to(root)} has no link to the other edition"
            target = (page.parent / link["href"]).resolve()
            assert target == (other / page.relative_to(root)).resolve(), (page, link["href"])


def _cells(page: Path) -> list[str]:
    """A page's code cells, outputs and display math in order, and its inline math as a sorted
    list (a translated sentence may put its formulas in another order), with the translatable
    generated text removed."""
    soup = BeautifulSoup(MARKER.sub("", page.read_text(encoding="utf-8")), "html.parser")
    parts = [str(div) for div in soup.select("div.cell_input, div.cell_output")]
    # A formula that the English source broke across lines is one line in its message.
    parts += [" ".join(m.get_text().split()) for m in soup.select("div.math")]
    parts += sorted(" ".join(m.get_text().split()) for m in soup.select("span.math"))
    return parts


@pytest.mark.slow
@pytest.mark.xdist_group("book")
def test_code_outputs_figures_and_math_are_identical_in_both_editions(built_book, built_book_zh):
    for page in _pages(built_book):
        rel = page.relative_to(built_book)
        en, zh = _cells(page), _cells(built_book_zh / rel)
        assert len(en) == len(zh), f"{rel}: {len(en)} cells/math in English, {len(zh)} in Chinese"
        assert en == zh, f"{rel}: a cell, output or formula differs between the editions"


@pytest.mark.slow
@pytest.mark.xdist_group("book")
def test_chinese_pages_are_translated_including_quiz_and_drill(built_book_zh):
    """Every page reads as Chinese: most letters of its prose (code, outputs, math and the
    reference list aside) are Han characters, generated text (quiz, drill, course map) included."""
    han, latin = re.compile(r"[\u4e00-\u9fff]"), re.compile(r"[A-Za-z]")
    for page in _pages(built_book_zh):
        if page.name in ("search.html", "genindex.html", "index.html"):
            continue
        soup = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
        main = soup.select_one("main")
        for selector in (".cell_output", ".cell_input", ".math", "pre", "code", "div.citation", ".bibliography"):
            for element in main.select(selector):
                element.decompose()
        text = main.get_text(" ")
        n_han, n_latin = len(han.findall(text)), len(latin.findall(text))
        assert n_han / max(1, n_han + n_latin) > 0.6, f"{page.name}: {n_han} Han and {n_latin} Latin letters"
        for marker in main.select(".qkv-i18n"):
            words = marker.get_text(" ", strip=True)
            assert not re.fullmatch(r"[A-Za-z ,.;:!?'()-]{12,}", words), f"{page.name}: left in English: {words!r}"
    drill = BeautifulSoup((built_book_zh / "drill.html").read_text(encoding="utf-8"), "html.parser")
    assert len(drill.select("details.qkv-drill-question")) >= 30
    quiz = BeautifulSoup((built_book_zh / "chapters" / "attention.html").read_text(encoding="utf-8"), "html.parser")
    assert "正确" in quiz.select_one(".qkv-quiz").get_text()


@pytest.mark.slow
@pytest.mark.xdist_group("book")
def test_sidebar_section_captions_are_translated(built_book_zh):
    """The sidebar's part captions (from _toc.yml) read in Chinese on every Chinese page."""
    import yaml

    toc = yaml.safe_load((BOOK / "_toc.yml").read_text(encoding="utf-8"))
    english = [part["caption"] for part in toc["parts"]]
    with (LOCALE / "intro.po").open("rb") as fh:
        catalog = read_po(fh)
    expected = [catalog.get(caption).string for caption in english]
    assert all(expected) and expected != english
    for page in (built_book_zh / "intro.html", built_book_zh / "chapters" / "attention.html"):
        soup = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
        shown = [c.get_text(strip=True) for c in soup.select("nav .caption-text")]
        assert shown == expected, f"{page.name}: sidebar captions {shown}, expected {expected}"


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.xdist_group("book")
def test_chinese_page_in_chromium_typesets_math_and_links_to_english(built_book, built_book_zh, artifacts):
    from playwright.sync_api import sync_playwright

    page_path = built_book_zh / "chapters" / "scaling.html"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            requests = []
            page.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
            page.goto(page_path.as_uri())
            page.wait_for_selector("mjx-container", timeout=30000)
            assert page.locator("mjx-container").count() > 5
            heading = page.locator("main h1").first.inner_text()
            assert re.search(r"[\u4e00-\u9fff]", heading), heading
            page.screenshot(path=str(artifacts / "zh-scaling.png"))
            page.locator("p.qkv-edition-switch a").first.click()
            page.wait_for_load_state()
            assert page.url == (built_book / "chapters" / "scaling.html").resolve().as_uri()
            assert not re.search(r"[\u4e00-\u9fff]", page.locator("main h1").first.inner_text())
            page.screenshot(path=str(artifacts / "en-scaling-from-zh.png"))
            assert requests == []
        finally:
            browser.close()


def test_inputs_fingerprint_changes_with_any_input_and_not_with_build_outputs(tmp_path, monkeypatch):
    """`make book` skips an edition when this digest equals its last build's (book/editions.py)."""
    (tmp_path / "chapters").mkdir()
    page = tmp_path / "chapters" / "attention.md"
    page.write_text("# Attention\n")
    monkeypatch.setattr(editions, "INPUT_ROOTS", (tmp_path,))
    first = editions.inputs_fingerprint("zh_CN", True)
    assert editions.inputs_fingerprint("zh_CN", True) == first
    assert editions.inputs_fingerprint("en", True) != first and editions.inputs_fingerprint("zh_CN", False) != first

    (tmp_path / "_build").mkdir()  # what a build writes does not count
    (tmp_path / "_build" / "page.html").write_text("<p>built</p>")
    (tmp_path / "chapters.mo").write_bytes(b"compiled catalog")
    assert editions.inputs_fingerprint("zh_CN", True) == first

    os.utime(page, ns=(page.stat().st_atime_ns, page.stat().st_mtime_ns + 1_000_000))  # saved again
    touched = editions.inputs_fingerprint("zh_CN", True)
    assert touched != first
    (tmp_path / "chapters" / "new.md").write_text("# New\n")  # a page added
    added = editions.inputs_fingerprint("zh_CN", True)
    assert added not in (first, touched)
    (tmp_path / "chapters" / "new.md").unlink()  # and removed again
    assert editions.inputs_fingerprint("zh_CN", True) == touched
