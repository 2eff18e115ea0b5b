"""Citations: references.bib is complete, every key resolves, and quizzes/drill cite as the pages do."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from bs4 import BeautifulSoup
from pybtex.database import parse_file

from qkv.chapters import available_slugs
from qkv.citations import CitationError, citation_id, cite_html, cite_text, load_works
from qkv.drill import render_drill
from qkv.quiz import markdown_to_html, render_quiz

BOOK = Path(__file__).resolve().parent.parent / "book"
BIB = BOOK / "references.bib"
# A role in MyST markdown: {cite:t}`key`, {cite:p}`{pre}key{post}, key2`.
CITE_ROLE = re.compile(r"\{(cite:[a-z]+)\}`([^`]*)`")

SMALL_BIB = r"""
@article{ba2016layer,
  author = {Ba, Jimmy Lei and Kiros, Jamie Ryan and Hinton, Geoffrey E.},
  title = {Layer Normalization}, journal = {arXiv preprint}, year = {2016}, eprint = {1607.06450}}
@inproceedings{shazeer2019fast,
  author = {Shazeer, Noam}, title = {Fast Transformer Decoding}, booktitle = {arXiv}, year = {2019},
  eprint = {1911.02150}}
@inproceedings{press2017using,
  author = {Press, Ofir and Wolf, Lior}, title = {Using the Output Embedding}, booktitle = {EACL},
  year = {2017}, eprint = {1608.05859}}
@inproceedings{vandenoord2016wavenet,
  author = {van den Oord, A{\"a}ron and Dieleman, Sander and Zen, Heiga},
  title = {WaveNet}, booktitle = {SSW}, year = {2016}, eprint = {1609.03499}}
"""


@pytest.fixture()
def small_bib(tmp_path) -> Path:
    path = tmp_path / "references.bib"
    path.write_text(SMALL_BIB, encoding="utf-8")
    return path


# ---- formatting (expected strings written out by hand) ----

@pytest.mark.parametrize("role, content, text", [
    ("cite:t", "shazeer2019fast", "Shazeer (2019)"),
    ("cite:t", "press2017using", "Press and Wolf (2017)"),
    ("cite:t", "ba2016layer", "Ba et al. (2016)"),
    ("cite:p", "ba2016layer", "(Ba et al., 2016)"),
    ("cite:t", "ba2016layer{§3}", "Ba et al. (2016, §3)"),
    ("cite:p", "{see}ba2016layer{§3}", "(see Ba et al., 2016, §3)"),
    ("cite:p", "ba2016layer, shazeer2019fast", "(Ba et al., 2016; Shazeer, 2019)"),
    ("cite:t", "ba2016layer,press2017using", "Ba et al. (2016), Press and Wolf (2017)"),
    ("cite:t", "vandenoord2016wavenet", "van den Oord et al. (2016)"),
])
def test_cite_text_reads_author_year(small_bib, role, content, text):
    assert cite_text(role, content, bibfile=small_bib) == text


def test_cite_html_links_each_work_to_its_bibliography_entry(small_bib):
    out = cite_html("cite:p", "ba2016layer, shazeer2019fast", page="chapters/norms.html", bibfile=small_bib)
    links = BeautifulSoup(out, "html.parser").find_all("a")
    assert [a["href"] for a in links] == ["chapters/norms.html#cite-ba2016layer",
                                          "chapters/norms.html#cite-shazeer2019fast"]
    textual = BeautifulSoup(cite_html("cite:t", "ba2016layer", bibfile=small_bib), "html.parser")
    assert [a.get_text() for a in textual.find_all("a")] == ["2016"]  # as on the page: the year is the link
    assert textual.find("em").get_text() == "et al."


def test_citation_id_is_the_docutils_id_of_the_configured_template():
    assert citation_id("vaswani2017attention") == "cite-vaswani2017attention"
    assert citation_id("Raffel_2020:T5") == "cite-raffel-2020-t5"
    config = yaml.safe_load((BOOK / "_config.yml").read_text())
    assert config["sphinx"]["config"]["bibtex_cite_id"] == "cite-{key}"
    assert config["bibtex_bibfiles"] == ["references.bib"]


@pytest.mark.parametrize("role, content, message", [
    ("cite:t", "nosuch2020", r"unknown citation key 'nosuch2020'"),
    ("cite:p", "ba2016layer, nosuch2020", r"unknown citation key 'nosuch2020'"),
    ("glue:text", "x:.3f", r"role \{glue:text\} is not available here"),
    ("cite:p", "ba2016layer{§3", r"malformed citation"),
])
def test_unresolvable_citations_raise(small_bib, role, content, message):
    with pytest.raises(CitationError, match=message):
        cite_html(role, content, bibfile=small_bib)


def test_markdown_with_a_citation_keeps_math_and_escaping(small_bib):
    out = markdown_to_html("As {cite:t}`ba2016layer{§3}` show, $a < b$ & c.", inline=True, bibfile=small_bib)
    soup = BeautifulSoup(out, "html.parser")
    assert soup.get_text() == r"As Ba et al. (2016, §3) show, \(a < b\) & c."
    assert soup.find("span", class_="math") is not None


def test_a_quiz_citing_an_unknown_key_is_an_error():
    quiz = [{"question": "Who?", "options": [
        {"text": "A", "correct": True, "why": "As {cite:t}`vaswani2017attention` show."},
        {"text": "B", "correct": False, "why": "Not {cite:p}`nosuch1999`."}]}]
    with pytest.raises(CitationError, match=r"question 1 .*unknown citation key 'nosuch1999'"):
        render_quiz(quiz)
    quiz[0]["options"][1]["why"] = "Not so."
    soup = BeautifulSoup(render_quiz(quiz), "html.parser")
    assert soup.select_one("details a")["href"] == "#cite-vaswani2017attention"


def test_drill_links_citations_to_the_chapter_page(tmp_path):
    (tmp_path / "chapters").mkdir()
    shutil.copy(BIB, tmp_path / "references.bib")
    (tmp_path / "chapters" / "scaling.md").write_text(
        "# S\n\n## Why scale?\n\n**Short answer.** See {cite:t}`vaswani2017attention{§3.2.1}` for it.\n")
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: chapters/scaling\n")
    link = BeautifulSoup(render_drill(tmp_path), "html.parser").select_one(".qkv-drill-answer a")
    assert link["href"] == "chapters/scaling.html#cite-vaswani2017attention"
    (tmp_path / "chapters" / "scaling.md").write_text(
        "# S\n\n## Why scale?\n\n**Short answer.** See {cite:t}`vaswani2017typo` for it.\n")
    with pytest.raises(CitationError, match=r"scaling.md, short answer of 'Why scale\?'.*'vaswani2017typo'"):
        render_drill(tmp_path)


# ---- the book's own bibliography and pages ----

def _entries():
    return parse_file(str(BIB), bib_format="bibtex").entries


def test_every_bib_entry_has_authors_title_venue_year_and_an_identifier():
    problems = []
    for key, entry in _entries().items():
        fields = {k.lower() for k in entry.fields}
        missing = [f for f in ("title", "year") if f not in fields]
        if "author" not in entry.persons:
            missing.append("author")
        if not fields & {"booktitle", "journal", "publisher", "institution", "howpublished"}:
            missing.append("venue (booktitle, journal, publisher or institution)")
        # A work with neither identifier (GPT-2's report, a 1994 magazine article) is identified
        # by its url; a url that points at arXiv or a DOI should have been an eprint or a doi.
        if not fields & {"eprint", "doi"}:
            url = entry.fields.get("url", "")
            if not url or re.search(r"arxiv\.org|doi\.org", url):
                missing.append("eprint (arXiv id) or doi (a url only for a work that has neither)")
        if "eprint" in fields and not re.fullmatch(r"\d{4}\.\d{4,5}", entry.fields["eprint"]):
            missing.append(f"a well-formed arXiv id (got {entry.fields['eprint']!r})")
        if missing:
            problems.append(f"{key}: {', '.join(missing)}")
    assert problems == []


def test_bib_entries_are_sorted_by_key():
    keys = re.findall(r"^@\w+\{([^,]+),", BIB.read_text(encoding="utf-8"), flags=re.M)
    assert keys == sorted(keys), "keep references.bib sorted by key (it keeps merges easy)"
    assert len(keys) == len(set(keys))


def _page_keys(text: str) -> set[str]:
    keys = set()
    for _role, content in CITE_ROLE.findall(text):
        keys |= {t.strip() for t in re.sub(r"\{[^{}]*\}", "", content).split(",") if t.strip()}
    return keys


@pytest.mark.parametrize("slug", sorted(available_slugs()))
def test_every_key_a_page_cites_is_in_the_bibliography(slug):
    text = (BOOK / "chapters" / f"{slug}.md").read_text(encoding="utf-8")
    assert _page_keys(text) - set(load_works()) == set()


@pytest.mark.parametrize("slug", sorted(available_slugs()))
def test_a_page_that_cites_ends_with_its_own_bibliography(slug):
    text = (BOOK / "chapters" / f"{slug}.md").read_text(encoding="utf-8")
    if not _page_keys(text):
        pytest.skip(f"{slug} cites nothing yet")
    tail = text.rsplit("\n## ", 1)[-1]
    assert tail.startswith("References\n"), f"{slug}: the last section must be '## References'"
    assert re.search(r"```\{bibliography\}\n:filter: docname in docnames\n```", tail), slug


@pytest.mark.parametrize("slug", sorted(available_slugs()))
def test_quiz_citations_are_also_cited_in_the_page_prose(slug):
    """A quiz links to the page's bibliography entry, which exists only if the prose cites the work."""
    text = (BOOK / "chapters" / f"{slug}.md").read_text(encoding="utf-8")
    quiz = re.search(r"^## Self-quiz\n(.*?)^## ", text, flags=re.S | re.M)
    assert quiz, slug
    prose = text.replace(quiz.group(1), "")
    assert _page_keys(quiz.group(1)) - _page_keys(prose) == set()


# ---- Sphinx's side: a strict build of a two-page book with the book's citation settings ----

def _mini_book(root: Path, page: str) -> Path:
    """A book with the real _config.yml's citation settings, _ext and references.bib, and one page."""
    config = yaml.safe_load((BOOK / "_config.yml").read_text())
    mini = {
        "title": "citations", "only_build_toc_files": True,
        "execute": {"execute_notebooks": "off"},
        "bibtex_bibfiles": config["bibtex_bibfiles"],
        "sphinx": {"local_extensions": {"citation_style": "_ext"},
                   "config": {k: v for k, v in config["sphinx"]["config"].items()
                              if k.startswith("bibtex_") or k == "suppress_warnings"}},
    }
    root.mkdir()
    (root / "_config.yml").write_text(yaml.safe_dump(mini))
    (root / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: page\n")
    (root / "intro.md").write_text("# Intro\n\nCites {cite:t}`vaswani2017attention` too.\n\n"
                                   "```{bibliography}\n:filter: docname in docnames\n```\n")
    (root / "page.md").write_text(page)
    shutil.copytree(BOOK / "_ext", root / "_ext")
    shutil.copy(BIB, root / "references.bib")
    return root


def _build(root: Path) -> subprocess.CompletedProcess:
    jb = Path(sys.executable).parent / "jupyter-book"
    return subprocess.run([str(jb), "build", str(root), "-W", "-n", "--keep-going"],
                          capture_output=True, text=True, timeout=600)


PAGE = """# Page

Textual {cite:t}`vaswani2017attention{§3.2.1}` and parenthetical {cite:p}`vaswani2017attention`.

## References

```{bibliography}
:filter: docname in docnames
```
"""


@pytest.mark.slow
def test_strict_build_renders_citations_like_qkv_and_fails_on_an_unknown_key(tmp_path):
    good = _mini_book(tmp_path / "good", PAGE)
    proc = _build(good)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    soup = BeautifulSoup((good / "_build" / "html" / "page.html").read_text(), "html.parser")
    cites = [s.get_text() for s in soup.select("span.bibtex-citation")]
    # Sphinx's rendering and qkv's (used by quizzes and the drill) agree, character for character.
    assert cites == [cite_text("cite:t", "vaswani2017attention{§3.2.1}"), cite_text("cite:p", "vaswani2017attention")]
    assert cites == ["Vaswani et al. (2017, §3.2.1)", "(Vaswani et al., 2017)"]
    # The entry on this page has the id the quizzes link to, and the citations link to it.
    entry_id = citation_id("vaswani2017attention")
    assert soup.find(id=entry_id) is not None
    assert {a["href"] for a in soup.select("span.bibtex-citation a")} == {f"#{entry_id}"}

    bad = _mini_book(tmp_path / "bad", PAGE.replace("{cite:p}`vaswani2017attention`", "{cite:p}`vaswani2017typo`"))
    proc = _build(bad)
    assert proc.returncode != 0
    assert 'could not find bibtex key "vaswani2017typo"' in proc.stdout + proc.stderr
