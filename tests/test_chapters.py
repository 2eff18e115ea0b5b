"""The course map (qkv.chapters) agrees with the book's table of contents and the assignments."""


import pytest

from autograder.course import assignments
from qkv.chapters import BOOK_DIR, CHAPTERS, available_slugs, chapter


def test_nine_chapters_and_the_capstone_in_curriculum_order():
    assert [c.slug for c in CHAPTERS] == ["attention", "scaling", "masking", "multihead", "mqa_gqa",
                                          "transformer", "bert", "norms", "tokenization", "capstone"]
    assert [c.number for c in CHAPTERS] == list(range(1, 11))


def test_every_available_chapter_has_a_page_and_an_assignment():
    ready = available_slugs()
    assert "attention" in ready
    for slug in ready:
        assert (BOOK_DIR / "chapters" / f"{slug}.md").is_file()
        assert slug in assignments()


def test_every_chapter_page_is_in_the_toc():
    pages = {p.stem for p in (BOOK_DIR / "chapters").glob("*.md")}
    assert pages == available_slugs()


def test_unknown_chapter_error_lists_valid_slugs():
    with pytest.raises(KeyError, match="attention, scaling"):
        chapter("attn")
