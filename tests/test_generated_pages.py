"""Which files a generated page is re-read for (book/_ext/generated_pages.py)."""

from __future__ import annotations

import sys
from pathlib import Path

BOOK = Path(__file__).resolve().parent.parent / "book"
sys.path.insert(0, str(BOOK / "_ext"))

import generated_pages  # noqa: E402


def _page(folder: Path, front: str) -> Path:
    page = folder / "page.md"
    page.write_text(f"---\n{front}---\n\n# A page\n")
    return page


def test_a_page_that_names_its_inputs_depends_on_those_only(tmp_path):
    src = tmp_path / "book"
    (src / "chapters").mkdir(parents=True)
    (src / "chapters" / "a.md").write_text("# A\n")
    (src / "_toc.yml").write_text("root: intro\n")
    (tmp_path / "results").mkdir()
    for name in ("one.json", "two.json", "notes.txt"):
        (tmp_path / "results" / name).write_text("{}")
    page = _page(src, 'mystnb:\n  execution_mode: force\ngenerated_from: ["../results/*.json"]\n')
    assert generated_pages.is_generated(page)
    assert generated_pages.inputs(src, page) == [(tmp_path / "results" / n).resolve() for n in ("one.json", "two.json")]


def test_a_page_that_names_none_depends_on_the_chapters_toc_and_library(tmp_path):
    src = tmp_path / "book"
    (src / "chapters").mkdir(parents=True)
    (src / "chapters" / "a.md").write_text("# A\n")
    (src / "_toc.yml").write_text("root: intro\n")
    page = _page(src, "mystnb:\n  execution_mode: force\n")
    found = generated_pages.inputs(src, page)
    assert src / "_toc.yml" in found and src / "chapters" / "a.md" in found
    assert BOOK.parent / "qkv" / "book_links.py" in found


def test_the_instructors_page_depends_on_the_saved_benchmarks():
    page = BOOK / "instructors.md"
    found = generated_pages.inputs(BOOK, page)
    results = (BOOK.parent / "benchmarks" / "results").resolve()
    assert found and all(p.parent == results and p.suffix == ".json" for p in found)
    assert {p.name for p in found} >= {"grading.json", "grading-scaling.json"}
