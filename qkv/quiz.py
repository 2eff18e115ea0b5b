"""Multiple-choice self-quizzes rendered as static HTML for the book.

A chapter's quiz is a list of questions, each a dict::

    {"question": "Is k = v in self-attention?",
     "options": [
         {"text": "Yes, always.", "correct": False, "why": "They come from different projections."},
         {"text": "No.", "correct": True, "why": "..."},
     ]}

Text is markdown (``$...$`` math, ``code``, *emphasis*) and may cite works of
``book/references.bib`` with the page's roles, ``{cite:t}`key``` and ``{cite:p}`key``` (see
``qkv.citations``): they render as on the page, linked to the chapter's bibliography entry, and
an unknown key is an error. Every option is a ``<details>``
element whose hidden body says "Correct." or "Not quite." followed by the explanation, so
the quiz works in the static, offline book with no kernel and no JavaScript. Math is
emitted the way Sphinx emits it (``<span class="math">\\(...\\)</span>``), which is what the
book's MathJax configuration typesets.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt
from mdit_py_plugins.dollarmath import dollarmath_plugin
from mdit_py_plugins.myst_role import myst_role_plugin

from qkv.citations import BIBFILE, CitationError, cite_html
from qkv.i18n import mark

MIN_OPTIONS = 2
MAX_OPTIONS = 6  # options are lettered A–F

# Scoped to .qkv-quiz so that it cannot restyle the rest of the page; no external assets.
_STYLE = """<style>
.qkv-quiz ol.qkv-quiz-questions { padding-left: 1.5em; }
.qkv-quiz li.qkv-quiz-question { margin-bottom: 1.2em; }
.qkv-quiz details.qkv-quiz-option { border: 1px solid #ccc; border-radius: 4px; margin: 0.3em 0; padding: 0.2em 0.6em; }
.qkv-quiz details.qkv-quiz-option > summary { cursor: pointer; }
.qkv-quiz .qkv-quiz-verdict-correct { color: #1a7f37; }
.qkv-quiz .qkv-quiz-verdict-wrong { color: #b3261e; }
</style>"""


def _math_html(content: str, options: dict[str, Any]) -> str:
    """Render a math token as Sphinx does, so MathJax's ``processHtmlClass: math`` picks it up."""
    if options.get("display_mode"):
        return f'<div class="math notranslate nohighlight">\\[{html.escape(content)}\\]</div>'
    return f'<span class="math notranslate nohighlight">\\({html.escape(content)}\\)</span>'


# Raw HTML in the source is escaped (html=False): quiz and page text is data, never markup.
_MD = MarkdownIt("commonmark", {"html": False}).enable("table")
dollarmath_plugin(_MD, allow_space=True, allow_digits=True)
# The plugin's own rules wrap math in a second element; emit exactly Sphinx's markup instead.
for _rule, _display in [("math_inline", False), ("math_inline_double", True),
                        ("math_block", True), ("math_block_label", True)]:
    _MD.add_render_rule(_rule, lambda self, tokens, idx, options, env, _d=_display:
                        _math_html(tokens[idx].content, {"display_mode": _d}))
# MyST roles: only the citation roles can be resolved outside Sphinx; any other role is an error.
myst_role_plugin(_MD)
_MD.add_render_rule("myst_role", lambda self, tokens, idx, options, env:
                    cite_html(tokens[idx].meta["name"], tokens[idx].content,
                              page=env["citation_page"], bibfile=env["bibfile"]))


def markdown_to_html(text: str, *, inline: bool = False, citation_page: str = "",
                     bibfile: Path = BIBFILE) -> str:
    """Render MyST-style markdown (with ``$...$`` / ``$$...$$`` math) to an HTML string.

    ``inline=True`` renders without the enclosing ``<p>`` (for a ``<summary>`` or a sentence).
    ``<`` and ``&`` in the text are escaped; raw HTML is shown as text, not interpreted.
    ``{cite:t}`key``` / ``{cite:p}`key``` link to ``<citation_page>#cite-<key>`` (``''``: the
    same page), resolved from ``bibfile``; an unknown key or another role raises
    ``qkv.citations.CitationError``.
    """
    env = {"citation_page": citation_page, "bibfile": bibfile}
    if inline:
        return _MD.renderInline(text, env).strip()
    return _MD.render(text, env).strip()


def validate_quiz(questions: list[dict[str, Any]]) -> None:
    """Check a quiz's data; raise ``ValueError`` naming the question and option at fault.

    Rules: a non-empty list; each question has a non-empty ``question`` string and at least
    ``MIN_OPTIONS`` and at most ``MAX_OPTIONS`` options; each option has non-empty ``text`` and ``why`` strings and a
    boolean ``correct``; exactly one option per question is correct; no unknown keys;
    every citation resolves (an unknown key raises ``CitationError``, a ``ValueError``).
    """
    if not isinstance(questions, list) or not questions:
        raise ValueError("a quiz is a non-empty list of questions (dicts with 'question' and 'options')")
    for qi, q in enumerate(questions, start=1):
        where = f"question {qi}"
        if not isinstance(q, dict):
            raise ValueError(f"{where}: expected a dict with 'question' and 'options', got {type(q).__name__}")
        unknown = set(q) - {"question", "options"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}; allowed are 'question' and 'options'")
        if not isinstance(q.get("question"), str) or not q["question"].strip():
            raise ValueError(f"{where}: 'question' must be a non-empty string")
        options = q.get("options")
        if not isinstance(options, list) or not MIN_OPTIONS <= len(options) <= MAX_OPTIONS:
            raise ValueError(f"{where} ({q['question'][:40]!r}): give {MIN_OPTIONS} to {MAX_OPTIONS} options "
                             "as a list of dicts")
        n_correct = 0
        for oi, opt in enumerate(options, start=1):
            at = f"{where}, option {oi}"
            if not isinstance(opt, dict):
                raise ValueError(f"{at}: expected a dict with 'text', 'correct' and 'why'")
            unknown = set(opt) - {"text", "correct", "why"}
            if unknown:
                raise ValueError(f"{at}: unknown keys {sorted(unknown)}; allowed are 'text', 'correct', 'why'")
            if not isinstance(opt.get("text"), str) or not opt["text"].strip():
                raise ValueError(f"{at}: 'text' must be a non-empty string")
            if not isinstance(opt.get("correct"), bool):
                raise ValueError(f"{at}: 'correct' must be True or False")
            if not isinstance(opt.get("why"), str) or not opt["why"].strip():
                raise ValueError(f"{at} ({opt['text'][:40]!r}): every option needs an explanation in 'why' "
                                 "saying why it is right or wrong")
            n_correct += opt["correct"]
        if n_correct != 1:
            raise ValueError(f"{where} ({q['question'][:40]!r}): exactly one option must have correct=True, "
                             f"found {n_correct}")
        for text in [q["question"]] + [opt[k] for opt in options for k in ("text", "why")]:
            try:
                markdown_to_html(text)
            except CitationError as err:
                raise CitationError(f"{where} ({q['question'][:40]!r}): {err}") from err


def _translatable(text: str, *, inline: bool = False) -> str:
    """``text`` rendered from markdown inside a marker the Chinese edition translates (qkv.i18n)."""
    return mark(text, markdown_to_html(text, inline=inline), inline=inline)


def render_quiz(questions: list[dict[str, Any]]) -> str:
    """Validate ``questions`` (see ``validate_quiz``) and return the quiz as static HTML.

    Structure: ``div.qkv-quiz > ol > li.qkv-quiz-question``, holding the prompt and one
    ``details.qkv-quiz-option`` per option (``data-correct="true"|"false"``) whose body starts
    with "Correct." or "Not quite." and continues with the explanation. Every text is wrapped in
    a translation marker (``qkv.i18n``), so the Chinese edition shows the same quiz translated.
    """
    validate_quiz(questions)
    correct = _translatable("Correct.", inline=True)
    wrong = _translatable("Not quite.", inline=True)
    parts = [f'<div class="qkv-quiz">{_STYLE}',
             f"<p>{_translatable('Click an option to see whether it is right, and why.', inline=True)}</p>",
             '<ol class="qkv-quiz-questions">']
    for q in questions:
        parts.append('<li class="qkv-quiz-question">')
        parts.append(f'<div class="qkv-quiz-prompt">{_translatable(q["question"])}</div>')
        for letter, opt in zip("ABCDEF", q["options"]):
            verdict = (f'<strong class="qkv-quiz-verdict-correct">{correct}</strong>' if opt["correct"]
                       else f'<strong class="qkv-quiz-verdict-wrong">{wrong}</strong>')
            parts.append(
                f'<details class="qkv-quiz-option" data-correct="{str(opt["correct"]).lower()}">'
                f'<summary>{letter}. {_translatable(opt["text"], inline=True)}</summary>'
                f'<p class="qkv-quiz-explanation">{verdict} {_translatable(opt["why"], inline=True)}</p>'
                "</details>")
        parts.append("</li>")
    parts.append("</ol></div>")
    return "\n".join(parts)


def show_quiz(questions: list[dict[str, Any]]):
    """Return the rendered quiz as an ``IPython.display.HTML`` object (the last line of a book cell)."""
    from IPython.display import HTML  # only needed inside a kernel; keeps `import qkv.quiz` light

    return HTML(render_quiz(questions))
