"""The course map: nine chapters and the capstone, in reading order.

This is the single list the intro page, the tests and the tooling read. A
chapter is *available* when its page is listed in ``book/_toc.yml``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class Chapter:
    number: int
    slug: str  # page book/chapters/<slug>.md, assignment solutions/<slug>/<slug>.ipynb
    title: str
    questions: str  # one line: what the chapter answers


CHAPTERS: tuple[Chapter, ...] = (
    Chapter(1, "attention", "Attention from first principles",
            "what attention computes, self vs cross, k = v?, attention vs a fully connected layer, "
            "dot-product vs additive"),
    Chapter(2, "scaling", "Why divide by √d_k",
            "the variance argument, softmax saturation and vanishing gradients, alternatives"),
    Chapter(3, "masking", "Padding and causal masks",
            "why −inf and not 0, where each mask goes, fully masked rows, float16"),
    Chapter(4, "multihead", "Multi-head attention",
            "why several heads, why d_k = d_model / h costs nothing extra, separate W_Q and W_K"),
    Chapter(5, "mqa_gqa", "MQA, GQA and the KV cache",
            "KV-cache size, why MQA/GQA speed up decoding, converting MHA to GQA"),
    Chapter(6, "transformer", "The rest of the Transformer block",
            "positional encodings, RoPE, residuals, FFN, dropout at test time, weight tying, the LR schedule"),
    Chapter(7, "bert", "BERT",
            "WordPiece granularity, 15% and 80/10/10, [CLS], warm-up, long documents"),
    Chapter(8, "norms", "LayerNorm vs BatchNorm",
            "which axes each normalizes, padding and batch size 1, Pre-LN vs Post-LN, RMSNorm"),
    Chapter(9, "tokenization", "BPE and WordPiece",
            "training and applying BPE, byte-level BPE, WordPiece's likelihood score"),
    Chapter(10, "capstone", "Capstone: a GPT from your own pieces",
            "putting the pieces together, the parameter count, the loss against baselines, the KV cache at work"),
)

BOOK_DIR = Path(__file__).resolve().parent.parent / "book"


def chapter(slug: str) -> Chapter:
    """Return the chapter whose slug is ``slug``; raise KeyError listing the valid slugs."""
    for ch in CHAPTERS:
        if ch.slug == slug:
            return ch
    raise KeyError(f"no chapter {slug!r}; chapters are: {', '.join(c.slug for c in CHAPTERS)}")


def available_slugs(book_dir: Path = BOOK_DIR) -> set[str]:
    """Slugs of the chapters whose pages are listed in the book's table of contents."""
    toc = yaml.safe_load((book_dir / "_toc.yml").read_text())
    files: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.add(str(node["file"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc)
    return {c.slug for c in CHAPTERS if f"chapters/{c.slug}" in files}


def course_map_html(book_dir: Path = BOOK_DIR) -> str:
    """The intro page's course map: an HTML table of every chapter, linked when available.

    Titles, descriptions and headers carry translation markers (``qkv.i18n``), so the Chinese
    edition shows the same table translated.
    """
    import html

    from qkv.i18n import mark

    def text(s: str) -> str:
        return mark(s, html.escape(s), inline=True)

    ready = available_slugs(book_dir)
    rows = []
    for ch in CHAPTERS:
        title = text(ch.title)
        if ch.slug in ready:
            title, status = f'<a href="chapters/{ch.slug}.html">{title}</a>', text("available")
        else:
            status = text("coming")
        rows.append(f"<tr><td>{ch.number}</td><td>{title}</td><td>{text(ch.questions)}</td><td>{status}</td></tr>")
    head = "".join(f"<th>{h}</th>" for h in ("#", text("chapter"), text("questions"), text("status")))
    return f'<table class="table"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
