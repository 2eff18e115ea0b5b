"""qkv.drill: question extraction from chapter pages, heading anchors, and the built drill page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from bs4 import BeautifulSoup

from qkv.chapters import CHAPTERS, available_slugs
from qkv.drill import chapter_questions, extract_questions, heading_anchor, render_drill

BOOK = Path(__file__).resolve().parent.parent / "book"

# A small page with every shape the extractor must handle; the expected values are written out.
SYNTHETIC = """---
kernelspec:
  name: python3
---

# 1. A synthetic chapter

Intro prose.

```{code-cell} ipython3
:tags: [remove-cell]
## this comment is not a heading
**Short answer.** neither is this
```

## Why −inf and not 0?

**Short answer.** Because $e^{-\\infty} = 0$ and
`exp(0)` is 1.

**Why.** Not part of the short answer.

## A section without a short answer

Just prose.

## What is `softmax`, and is it "stable"?

**Short answer.** It subtracts the max first.

| a | b |
|---|---|
| 1 | 2 |

```{code-cell} ipython3
print("not in the answer")
```

## Self-quiz

```{admonition} Answer
:class: dropdown
**Short answer.** inside a fence, ignored.
```
"""


def test_extracts_only_question_sections_with_their_short_answers():
    qs = extract_questions(SYNTHETIC)
    assert [q.heading for q in qs] == ["Why −inf and not 0?", 'What is `softmax`, and is it "stable"?']
    assert qs[0].short_answer == "Because $e^{-\\infty} = 0$ and\n`exp(0)` is 1."
    assert qs[1].short_answer == "It subtracts the max first.\n\n| a | b |\n|---|---|\n| 1 | 2 |"


@pytest.mark.parametrize("heading, anchor", [
    # Ids copied from the HTML Sphinx built for these headings.
    ("Why −inf and not 0? And is −1000 enough?", "why-inf-and-not-0-and-is-1000-enough"),
    ("What is [CLS] for, and is it a good sentence vector?", "what-is-cls-for-and-is-it-a-good-sentence-vector"),
    ("Why mask 15% of the tokens, and why the 80/10/10 rule?", "why-mask-15-of-the-tokens-and-why-the-80-10-10-rule"),
    ("Where does BERT's nonlinearity come from?", "where-does-bert-s-nonlinearity-come-from"),
    ('What is `softmax`, and is it "stable"?', "what-is-softmax-and-is-it-stable"),
    ("Is *this* $x^2$ fine?", "is-this-x-2-fine"),
])
def test_heading_anchor_matches_sphinx_ids(heading, anchor):
    assert heading_anchor(heading) == anchor


def test_duplicate_anchors_and_empty_short_answers_are_errors():
    dup = "## Why 0?\n\n**Short answer.** A.\n\n## Why, 0?\n\n**Short answer.** B.\n"
    with pytest.raises(ValueError, match=r"same anchor \['why-0'\]"):
        extract_questions(dup)
    with pytest.raises(ValueError, match="empty \\*\\*Short answer"):
        extract_questions("## Why?\n\n**Short answer.**\n\n**Why.** x\n")


@pytest.mark.parametrize("slug", sorted(available_slugs()))
def test_every_chapter_has_at_least_three_questions_with_short_answers(slug):
    qs = chapter_questions(slug)
    source = (BOOK / "chapters" / f"{slug}.md").read_text(encoding="utf-8")
    # Independent count: lines that open a short answer (no chapter puts one inside a fence).
    assert len(qs) == len(re.findall(r"^\*\*Short answer\.\*\*", source, flags=re.M))
    assert len(qs) >= 3
    assert all(len(q.short_answer.split()) >= 5 for q in qs), [q.heading for q in qs if len(q.short_answer.split()) < 5]


def test_render_drill_lists_available_chapters_in_order_with_links(tmp_path):
    (tmp_path / "chapters").mkdir()
    (tmp_path / "chapters" / "masking.md").write_text(SYNTHETIC)
    (tmp_path / "chapters" / "attention.md").write_text("# A\n\n## Q one?\n\n**Short answer.** One $x<y$ & two.\n")
    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: intro\nchapters:\n  - file: chapters/masking\n  - file: chapters/attention\n")
    soup = BeautifulSoup(render_drill(tmp_path), "html.parser")
    assert [s["data-chapter"] for s in soup.select("section.qkv-drill-chapter")] == ["attention", "masking"]
    links = [d.select_one("a.qkv-drill-link")["href"] for d in soup.select("details.qkv-drill-question")]
    assert links == ["chapters/attention.html#q-one", "chapters/masking.html#why-inf-and-not-0",
                     "chapters/masking.html#what-is-softmax-and-is-it-stable"]
    first = soup.select_one("details.qkv-drill-question")
    assert first.summary.get_text() == "Q one?"
    assert first.select_one(".qkv-drill-answer").get_text().strip() == r"Short answer. One \(x<y\) & two."
    assert first.select_one("span.math") is not None


# ---- the built book (slow): run by the whole-suite build, shared with test_book.py ----

def check_drill_page(html: Path) -> int:
    """Assert the built drill page has one <details> per question, each linking to an existing id."""
    soup = BeautifulSoup((html / "drill.html").read_text(encoding="utf-8"), "html.parser")
    details = soup.select("details.qkv-drill-question")
    expected = sum(len(re.findall(r"^\*\*Short answer\.\*\*", (BOOK / "chapters" / f"{c.slug}.md").read_text(),
                                  flags=re.M))
                   for c in CHAPTERS if c.slug in available_slugs())
    assert len(details) == expected
    ids_by_page: dict[str, set[str]] = {}
    for d in details:
        assert d.summary.get_text().strip(), "a drill question has an empty summary"
        assert d.select_one(".qkv-drill-answer").get_text().strip(), d.summary.get_text()
        target, _, anchor = d.select_one("a.qkv-drill-link")["href"].partition("#")
        page = html / target
        assert page.is_file(), f"drill link to missing page {target}"
        if target not in ids_by_page:
            target_soup = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
            ids_by_page[target] = {t["id"] for t in target_soup.find_all(id=True)}
        assert anchor in ids_by_page[target], f"drill link {target}#{anchor}: no element with that id"
    return len(details)


def check_chapter_quizzes(html: Path) -> None:
    """Assert every built chapter page has a quiz of ≥ 3 questions, one correct option each, all explained."""
    for slug in available_slugs():
        soup = BeautifulSoup((html / "chapters" / f"{slug}.html").read_text(encoding="utf-8"), "html.parser")
        questions = soup.select("section#self-quiz div.qkv-quiz li.qkv-quiz-question")
        assert len(questions) >= 3, f"{slug}: {len(questions)} quiz questions in the built page"
        for q in questions:
            options = q.select("details.qkv-quiz-option")
            assert len(options) >= 3, f"{slug}: {q.get_text()[:60]!r}"
            n_correct = [o["data-correct"] for o in options].count("true")
            assert n_correct == 1, f"{slug}: {n_correct} correct options in {q.get_text()[:60]!r}"
            for o in options:
                body = o.select_one(".qkv-quiz-explanation").get_text().strip()
                verdict = "Correct." if o["data-correct"] == "true" else "Not quite."
                assert body.startswith(verdict) and len(body) > len(verdict) + 5, f"{slug}: {body!r}"


@pytest.mark.slow
@pytest.mark.xdist_group("book")
def test_built_drill_page_links_every_question_to_an_existing_anchor(built_book):
    assert check_drill_page(built_book) >= 3 * len(available_slugs())


@pytest.mark.slow
@pytest.mark.xdist_group("book")
def test_built_chapter_pages_have_quizzes_with_explained_options(built_book):
    check_chapter_quizzes(built_book)
