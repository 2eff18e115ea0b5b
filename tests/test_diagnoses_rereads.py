"""Every diagnosis → book-section pair is right (issue 16, weak spot 5, the book side).

A diagnosis carries the section that explains it (``CheckFailed.reread``, from the ``Diag`` that
matched). This test reads the chapter pages: every section a diagnosis can point to exists, and
its text contains the diagnosis's key terms; module-level diagnoses mention at least one of their
section's terms; and the two pointers the issue found wrong (mask polarity, dividing by d_k) now
point to the sections that explain them.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
import torch

from qkv.chapters import CHAPTERS
from qkv.checks import sections
from qkv.checks.registry import Diag, Reread

REPO = Path(__file__).resolve().parent.parent
CHECKS = REPO / "qkv" / "checks"


def section_text(chapter: str, heading: str) -> str | None:
    """The text of the section with this heading (to the next heading of the same or a higher
    level, ignoring '#' lines inside code cells), or None if the page has no such heading."""
    lines = (REPO / "book" / "chapters" / f"{chapter}.md").read_text().split("\n")
    fence = False
    start = level = None
    body: list[str] = []
    for line in lines:
        if line.startswith("```"):
            fence = not fence
        match = None if fence else re.match(r"^(#{1,6}) (.*)$", line)
        if start is None:
            if match and match.group(2).strip() == heading:
                start, level = True, len(match.group(1))
            continue
        if match and len(match.group(1)) <= level:
            break
        body.append(line)
    return "\n".join(body) if start else None


ALL = sections.all_sections()


@pytest.mark.parametrize("name", sorted(ALL))
def test_the_section_exists_and_explains_the_key_terms(name):
    reread = ALL[name]
    assert reread.chapter in {c.slug for c in CHAPTERS}, reread
    text = section_text(reread.chapter, reread.heading)
    assert text is not None, f"{name}: no section {reread.heading!r} on book/chapters/{reread.chapter}.md"
    assert reread.terms, f"{name}: declare the key terms the section must explain"
    missing = [t for t in reread.terms if t.lower() not in text.lower()]
    assert not missing, f"{name}: the section {reread.heading!r} does not mention {missing}"


def test_every_section_a_diagnosis_names_is_declared():
    """Diagnoses refer to sections through qkv.checks.sections constants only (one place to check)."""
    used = set()
    for path in CHECKS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "sections":
                used.add((path.name, node.attr))
    unknown = [(f, a) for f, a in used if a not in ALL and a != "all_sections"]
    assert not unknown, unknown
    assert len({a for _, a in used}) >= 25  # the diagnoses of every chapter point somewhere


def _module_diagnoses():
    for ch in CHAPTERS:
        try:
            module = importlib.import_module(f"qkv.checks.{ch.slug}")
        except ModuleNotFoundError:
            continue
        for name, value in vars(module).items():
            if isinstance(value, Diag):
                yield f"{ch.slug}.{name}", value


@pytest.mark.parametrize("name, diag", list(_module_diagnoses()), ids=lambda x: x if isinstance(x, str) else "")
def test_a_diagnosis_speaks_of_what_its_section_explains(name, diag):
    assert isinstance(diag.reread, Reread), f"{name} has no section"
    assert any(t.lower() in diag.lower() for t in diag.reread.terms), (name, diag.reread.terms, str(diag))


def test_the_reread_link_is_the_anchor_sphinx_gives_the_heading():
    from qkv.selfcheck import anchor

    r = sections.MASK_POLARITY
    assert r.page == f"book/_build/html/chapters/masking.html#{anchor(r.heading)}"


def _failure(check, *args):
    from qkv.checks import CheckFailed

    with pytest.raises(CheckFailed) as info:
        check(*args)
    return info.value


def test_mask_polarity_points_to_the_section_that_states_the_convention():
    """The issue: polarity messages pointed to sections that never explain True/False."""
    from qkv.checks import attention as A
    from qkv.checks import masking as MK
    from qkv.checks import mqa_gqa as G

    q, k, v = A.random_attention_inputs((2,), 4, 6, 8, 5, seed=0)
    mask = torch.rand(4, 6, generator=torch.Generator().manual_seed(5)) > 0.4

    def inverted(q, k, v, m):
        w = torch.softmax((q @ k.transpose(-2, -1) / 8 ** 0.5).masked_fill(m, float("-inf")), -1)
        return w @ v, w

    failures = [
        _failure(A.check_sdpa, inverted, q, k, v, mask),
        _failure(MK.check_causal_mask, lambda n: torch.ones(n, n, dtype=torch.bool).triu(1), 4),
        _failure(G.check_gqa, lambda q, k, v, m=None: torch.softmax(
            (q @ k.repeat_interleave(4, 1).transpose(-2, -1) / 4).masked_fill(m, float("-inf")), -1)
            @ v.repeat_interleave(4, 1),
            *G.random_gqa_inputs(2, 8, 2, 5, 5, 16, seed=0), torch.ones(5, 5, dtype=torch.bool).tril()),
    ]
    for failure in failures:
        assert "polarity" in str(failure)
        assert failure.reread == sections.MASK_POLARITY
    text = section_text(sections.MASK_POLARITY.chapter, sections.MASK_POLARITY.heading)
    assert all(t.lower() in text.lower() for t in ("True", "nn.MultiheadAttention", "scaled_dot_product_attention"))


def test_dividing_by_d_k_points_to_the_scaling_derivation():
    """The issue: it pointed to the step-by-step section instead of the scaling chapter's derivation."""
    from qkv.checks import attention as A
    from qkv.checks import scaling as SC

    q, k, v = A.random_attention_inputs((2,), 4, 6, 8, 5, seed=0)

    def by_d_k(q, k, v, mask=None):
        w = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1], -1)
        return w @ v, w

    qs, ks = SC.random_qk((2, 3), 4, 6, 16, seed=0, dtype=torch.float64)
    for failure in (_failure(A.check_sdpa, by_d_k, q, k, v),
                    _failure(SC.check_attention_logits, lambda q, k, s=None: q @ k.transpose(-2, -1) / q.shape[-1],
                             qs, ks)):
        assert "divided by d_k" in str(failure)
        assert failure.reread == sections.DERIVE_VARIANCE
        assert failure.reread.chapter == "scaling"


def test_a_helper_s_section_comes_with_its_blame():
    """When a broken helper is blamed, the reread is the helper's diagnosis's section."""
    from qkv.checks import attention as A

    def naive(x, dim=-1):
        e = x.exp()
        return e / e.sum(dim, keepdim=True)

    def sdpa(q, k, v, mask=None):
        w = naive(q @ k.transpose(-2, -1) / 8 ** 0.5, -1)
        return w @ v, w

    from qkv.checks import CheckFailed

    ns = {"A": A, "sdpa": sdpa, "softmax": naive,
          "args": A.random_attention_inputs((2,), 4, 6, 8, 5, seed=0, scale=20.0)}
    with pytest.raises(CheckFailed) as info:
        exec("A.check_sdpa(sdpa, *args)", ns)
    assert info.value.reread == sections.STABLE_SOFTMAX


def test_the_graders_reread_output_links_to_the_built_page_or_says_how_to_build_it(tmp_path, monkeypatch):
    """What the grader adds after a failed test (autograder.feedback.reread_output), through
    nbconvert's output sanitiser (as the feedback export runs it) and finish_page's
    link_book_sections: the section's title in any case; with the page built, a file:// link to
    it with the anchor; else the command that builds the book."""
    from nbconvert.filters.strings import clean_html

    from autograder.feedback import link_book_sections, reread_output
    from qkv import book_links

    monkeypatch.setattr(book_links, "BOOK", tmp_path / "book")
    heading = sections.MASK_POLARITY.heading
    title = f"“{heading}” (chapter 3, Padding and causal masks)"
    output = reread_output("masking", heading)
    assert output["output_type"] == "display_data"
    assert output["data"]["text/plain"] == (f"Reread {title} in the book: "
                                            "book/_build/html/chapters/masking.html#how-do-you-mask-padding-in-self-attention")
    exported = clean_html(output["data"]["text/html"])
    unbuilt = link_book_sections(exported)
    assert f"<em>{title}</em> (the book is not built: run <code>make book</code> in {tmp_path}" in unbuilt
    assert "<a " not in unbuilt
    page = tmp_path / "book" / "_build" / "html" / "chapters" / "masking.html"
    page.parent.mkdir(parents=True)
    page.write_text("<html></html>")
    url = f"{page.as_uri()}#how-do-you-mask-padding-in-self-attention"
    assert link_book_sections(exported) == (
        f'<strong>Reread</strong> <a href="{url}" target="_blank">{title}</a> in the book.')
    # Only the book's own chapters are linked: a crafted link elsewhere stays as the title, unlinked.
    crafted = link_book_sections('<a href="qkv-book/chapters/etc.html#passwd">x</a>')
    assert "<a " not in crafted and "<em>x</em>" in crafted


def test_the_graders_reread_output_in_the_chinese_edition(tmp_path, monkeypatch):
    """reread_output for the Chinese edition: the heading as its catalog translates it, a link
    into that edition's page with the English anchor, and the English page when only that one
    is built. A link recorded before links named their edition goes to the English page; an
    edition the book does not have is never used as a path."""
    from nbconvert.filters.strings import clean_html

    from autograder.feedback import link_book_sections, reread_output
    from qkv import book_links

    book = tmp_path / "book"
    monkeypatch.setattr(book_links, "BOOK", book)
    heading = sections.MASK_POLARITY.heading
    catalog = book / "locales" / "zh_CN" / "LC_MESSAGES" / "chapters" / "masking.po"
    catalog.parent.mkdir(parents=True)
    catalog.write_text(f'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n\n'
                       f'msgid "{heading}"\nmsgstr "如何在自注意力中屏蔽填充？"\n', encoding="utf-8")
    title = "“如何在自注意力中屏蔽填充？” (chapter 3, Padding and causal masks)"
    anchor = "how-do-you-mask-padding-in-self-attention"
    output = reread_output("masking", heading, "zh_CN")
    assert output["data"]["text/plain"] == (f"Reread {title} in the book: "
                                            f"book/_build/zh_CN/_build/html/chapters/masking.html#{anchor}")
    exported = clean_html(output["data"]["text/html"])
    en_page = book / "_build" / "html" / "chapters" / "masking.html"
    zh_page = book / "_build" / "zh_CN" / "_build" / "html" / "chapters" / "masking.html"
    en_page.parent.mkdir(parents=True)
    en_page.write_text("<html></html>")
    only_english = (f'<strong>Reread</strong> <a href="{en_page.as_uri()}#{anchor}" target="_blank">{title}</a>'
                    " in the book.")
    assert link_book_sections(exported) == only_english
    zh_page.parent.mkdir(parents=True)
    zh_page.write_text("<html></html>")
    assert link_book_sections(exported) == only_english.replace(en_page.as_uri(), zh_page.as_uri())
    legacy = link_book_sections(f'<a href="qkv-book/chapters/masking.html#{anchor}">t</a>')
    assert legacy == f'<a href="{en_page.as_uri()}#{anchor}" target="_blank">t</a>'
    for crafted in ("qkv-book/etc/chapters/masking.html", "qkv-book/zh_CN/chapters/passwd.html"):
        linked = link_book_sections(f'<a href="{crafted}#x">t</a>')
        assert "etc" not in linked and "passwd" not in linked, linked


def test_the_report_and_the_lms_comment_name_the_section_to_reread(tmp_path):
    """The instructor's report gives, per question, the section its failing students were sent
    to most often; the one-line LMS comment names each failed question's section."""
    from autograder.lms import summary_line
    from autograder.report import CSV_FIELDS, Result, write_report

    why = "“Why does attention divide the logits by √d_k?” (chapter 2, Why divide by √d_k)"
    steps = "“How is attention computed, step by step?” (chapter 1, Attention from first principles)"

    def questions(earned):
        return {"test_softmax": (3.0, 3.0, ""), "test_sdpa": (earned, 3.0, "" if earned else "wrong")}

    results = [Result("ada", "attention", 6, 6, "graded", questions=questions(3.0)),
               Result("ben", "attention", 3, 6, "graded", questions=questions(0.0), rereads={"test_sdpa": why}),
               Result("cy", "attention", 3, 6, "graded", questions=questions(0.0), rereads={"test_sdpa": why}),
               Result("dee", "attention", 3, 6, "graded", questions=questions(0.0), rereads={"test_sdpa": steps})]
    write_report(results, "attention", tmp_path / "report.md", None)
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    # Escaped as all report text is (markdown_inline): the parentheses of the title.
    assert ("| test_sdpa | 3 | 1/4 | wrong (3) | “Why does attention divide the logits by √d_k?” "
            "\\(chapter 2, Why divide by √d_k\\) (2) |") in report
    assert "| test_softmax | 3 | 4/4 |  |  |" in report
    assert summary_line(results[1]) == f"Score 3/6. test_softmax: passed; test_sdpa: 0/3 (wrong; reread {why})."
    assert "rereads" not in CSV_FIELDS
