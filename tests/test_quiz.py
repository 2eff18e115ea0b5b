"""qkv.quiz: validation of quiz data, the static HTML it renders, and every chapter's quiz data."""

from __future__ import annotations

import ast
import copy
import re
from pathlib import Path

import pytest
from bs4 import BeautifulSoup

from qkv.chapters import CHAPTERS, available_slugs
from qkv.quiz import markdown_to_html, render_quiz, validate_quiz

BOOK = Path(__file__).resolve().parent.parent / "book"

GOOD = [
    {"question": "Is $a < b$ here?",
     "options": [
         {"text": "Yes", "correct": True, "why": "Because 1 < 2."},
         {"text": "No", "correct": False, "why": "It is not greater."},
         {"text": "Maybe", "correct": False, "why": "Nothing is random here."},
     ]},
    {"question": "Second?",
     "options": [
         {"text": "One", "correct": False, "why": "Wrong one."},
         {"text": "Two", "correct": True, "why": "Right one."},
     ]},
]


def _broken(edit) -> list[dict]:
    quiz = copy.deepcopy(GOOD)
    edit(quiz)
    return quiz


@pytest.mark.parametrize("edit, message", [
    (lambda q: q[0]["options"][1].update(correct=True), r"exactly one option must have correct=True, found 2"),
    (lambda q: q[1]["options"][1].update(correct=False), r"question 2 .*exactly one option .* found 0"),
    (lambda q: q[0]["options"][2].pop("why"), r"question 1, option 3 .*explanation"),
    (lambda q: q[0]["options"][0].update(why="  "), r"question 1, option 1 .*explanation"),
    (lambda q: q[1]["options"].pop(), r"question 2 .*give 2 to 6 options"),
    (lambda q: q[0].update(hint="x"), r"question 1: unknown keys \['hint'\]"),
    (lambda q: q[0]["options"][0].update(correct="yes"), r"'correct' must be True or False"),
    (lambda q: q[1].update(question=""), r"question 2: 'question' must be a non-empty string"),
    (lambda q: q.clear(), r"non-empty list"),
])
def test_invalid_quiz_raises_value_error_naming_the_fault(edit, message):
    with pytest.raises(ValueError, match=message):
        render_quiz(_broken(edit))


def test_valid_quiz_passes_validation():
    validate_quiz(GOOD)  # raises on failure


def test_rendered_quiz_has_one_details_per_option_with_verdict_and_explanation():
    soup = BeautifulSoup(render_quiz(GOOD), "html.parser")
    questions = soup.select("div.qkv-quiz li.qkv-quiz-question")
    assert len(questions) == 2
    for q_html, q_data in zip(questions, GOOD):
        options = q_html.select("details.qkv-quiz-option")
        assert len(options) == len(q_data["options"])
        for letter, opt_html, opt_data in zip("ABC", options, q_data["options"]):
            assert opt_html.summary.get_text() == f"{letter}. {opt_data['text']}"
            body = opt_html.select_one("p.qkv-quiz-explanation").get_text()
            verdict = "Correct." if opt_data["correct"] else "Not quite."
            assert body == f"{verdict} {opt_data['why']}"
            assert opt_html["data-correct"] == str(opt_data["correct"]).lower()
    # Static HTML only: the quiz must work without a kernel or JavaScript.
    assert soup.find("script") is None


def test_quiz_text_is_escaped_not_interpreted():
    quiz = copy.deepcopy(GOOD)
    quiz[0]["question"] = "Is <b>this</b> & that bold?"
    quiz[0]["options"][0]["why"] = "a <script>alert(1)</script> & b"
    out = render_quiz(quiz)
    assert "&lt;b&gt;this&lt;/b&gt; &amp; that" in out
    assert "&lt;script&gt;" in out and "<script>" not in out
    soup = BeautifulSoup(out, "html.parser")
    assert soup.select_one(".qkv-quiz-prompt").get_text().strip() == "Is <b>this</b> & that bold?"


def test_math_is_emitted_as_sphinx_math_spans_with_escaped_content():
    out = markdown_to_html("where $a < b$ holds", inline=True)
    assert out == r'where <span class="math notranslate nohighlight">\(a &lt; b\)</span> holds'
    block = markdown_to_html("$$\nx^2\n$$")
    assert block == '<div class="math notranslate nohighlight">\\[\nx^2\n\\]</div>'


def _chapter_quiz(slug: str) -> list[dict]:
    """The QUIZ list literal of the code cell in a chapter's Self-quiz section."""
    text = (BOOK / "chapters" / f"{slug}.md").read_text(encoding="utf-8")
    section = re.search(r"^## Self-quiz\n(.*?)^## ", text, flags=re.S | re.M)
    assert section, f"{slug}.md has no '## Self-quiz' section followed by another section"
    cell = re.search(r"```\{code-cell\} ipython3\n:tags: \[remove-input\]\n(.*?)\n```", section.group(1), flags=re.S)
    assert cell, f"{slug}.md: the Self-quiz section needs a code cell tagged remove-input that calls show_quiz"
    for node in ast.parse(cell.group(1)).body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["QUIZ"]:
            return ast.literal_eval(node.value)
    raise AssertionError(f"{slug}.md: the Self-quiz cell must assign a literal list to QUIZ")


@pytest.mark.parametrize("slug", sorted(available_slugs()))
def test_every_chapter_quiz_has_3_to_5_questions_of_3_to_4_options(slug):
    quiz = _chapter_quiz(slug)
    validate_quiz(quiz)
    assert 3 <= len(quiz) <= 5, f"{slug}: {len(quiz)} questions"
    for q in quiz:
        assert 3 <= len(q["options"]) <= 4, f"{slug}: {q['question']!r} has {len(q['options'])} options"


def test_correct_answers_are_not_always_at_the_same_letter():
    positions = {next(i for i, o in enumerate(q["options"]) if o["correct"])
                 for c in CHAPTERS if c.slug in available_slugs() for q in _chapter_quiz(c.slug)}
    assert len(positions) >= 3, f"correct options only ever at positions {sorted(positions)}"
