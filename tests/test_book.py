"""The built book: strict build, offline assets only, static widgets, the course map."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
from bs4 import BeautifulSoup

from qkv.chapters import CHAPTERS, available_slugs

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("book")]

BOOK = Path(__file__).resolve().parent.parent / "book"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _pages(html: Path):
    return sorted(p for p in html.rglob("*.html") if "_static" not in p.parts)


def _is_external(url: str | None) -> bool:
    return bool(url) and (urlparse(url).scheme in ("http", "https") or url.startswith("//"))


def test_no_page_loads_an_external_script_or_stylesheet(built_book):
    pages = _pages(built_book)
    assert len(pages) >= 2
    offenders = []
    for page in pages:
        soup = BeautifulSoup(page.read_text(), "html.parser")
        for tag in soup.find_all("script"):
            if _is_external(tag.get("src")) or "https://" in (tag.string or ""):
                offenders.append((page.name, str(tag)[:120]))
        for tag in soup.find_all("link"):
            if _is_external(tag.get("href")) and {"stylesheet", "preload", "modulepreload"} & set(tag.get("rel", [])):
                offenders.append((page.name, str(tag)[:120]))
        for tag in soup.find_all(["img", "iframe"]):
            if _is_external(tag.get("src")):
                offenders.append((page.name, str(tag)[:120]))
    assert offenders == []


def test_mathjax_comes_from_the_vendored_copy(built_book):
    soup = BeautifulSoup((built_book / "chapters" / "attention.html").read_text(), "html.parser")
    srcs = [s.get("src", "").split("?")[0] for s in soup.find_all("script") if s.get("src")]
    for needed in ("../_static/mathjax/tex-mml-chtml.js", "../_static/qkv-frames.js"):
        assert needed in srcs
        assert (built_book / "chapters" / needed).resolve().is_file()
    fonts = list((built_book / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))
    assert len(fonts) > 10


def test_widgets_are_static_views_with_their_default_figure(built_book):
    soup = BeautifulSoup((built_book / "chapters" / "attention.html").read_text(), "html.parser")
    assert not soup.find_all("script", type="application/vnd.jupyter.widget-view+json")
    widgets = soup.select(".qkv-static-widget")
    assert len(widgets) == 2
    for widget in widgets:
        assert widget.select(".qkv-controls select, .qkv-controls input")
        assert widget.select_one(".qkv-frame img")["src"].startswith("data:image/png;base64,")
        assert widget.find("script", class_="qkv-data")


def test_every_written_chapter_has_executed_output(built_book):
    for slug in available_slugs():
        soup = BeautifulSoup((built_book / "chapters" / f"{slug}.html").read_text(), "html.parser")
        assert soup.select(".cell_output"), slug
        assert soup.select(".qkv-static-widget"), f"{slug} has no widget"
        assert "Traceback" not in soup.get_text(), f"{slug} shows a traceback"


def test_intro_maps_every_chapter(built_book):
    soup = BeautifulSoup((built_book / "intro.html").read_text(), "html.parser")
    rows = soup.select("table.table tbody tr")
    assert [r.find_all("td")[0].get_text() for r in rows] == [str(c.number) for c in CHAPTERS]
    ready = available_slugs()
    for row, ch in zip(rows, CHAPTERS):
        status = row.find_all("td")[3].get_text()
        link = row.find("a")
        if ch.slug in ready:
            assert status == "available" and link["href"] == f"chapters/{ch.slug}.html"
            assert (built_book / link["href"]).is_file()
        else:
            assert status == "coming" and link is None


def _rebuild() -> str:
    """A strict build of the English edition into book/_build; its log without colour codes."""
    jb = Path(sys.executable).parent / "jupyter-book"
    proc = subprocess.run([str(jb), "build", str(BOOK), "-W", "-n", "--keep-going"],
                          capture_output=True, text=True, timeout=1800)
    log = _ANSI.sub("", proc.stdout + proc.stderr)
    assert proc.returncode == 0, log[-6000:]
    return log


def _executed(log: str) -> set[str]:
    return {Path(m).stem for m in re.findall(r"(\S+\.md): Executed notebook", log)}


def test_generated_pages_rerun_when_a_page_they_read_changes_and_only_then(built_book):
    """The course map and the drill are computed from the chapters (book/_ext/generated_pages.py):
    a rebuild with nothing changed reads and runs no page (issue 11's no-change budget), and a
    changed chapter re-runs both, so the drill never shows an old short answer."""
    quiet = _rebuild()
    assert _executed(quiet) == set()
    assert re.search(r"updating environment: (\[[^]]*\] )?0 added, 0 changed, 0 removed", quiet), quiet[-3000:]

    os.utime(BOOK / "chapters" / "attention.md")  # saved again: same text, so its cached outputs still apply
    touched = _rebuild()
    assert _executed(touched) == {"intro", "drill"}, touched[-3000:]

    os.utime(BOOK.parent / "benchmarks" / "results" / "grading.json")  # a benchmark saved again
    measured = _rebuild()
    assert _executed(measured) == {"instructors"}, measured[-3000:]


def test_instructors_page_quotes_the_saved_benchmark_runs(built_book):
    """The speed numbers on the instructors page are the saved runs' (benchmarks/results/), not
    retyped: what the benchmark printed, and the ratio and per-core rate computed from its
    measurements."""
    import json

    results = BOOK.parent / "benchmarks" / "results"
    speed = json.loads((results / "grading.json").read_text())
    scaling = json.loads((results / "grading-scaling.json").read_text())
    text = " ".join(BeautifulSoup((built_book / "instructors.html").read_text(), "html.parser").get_text().split())
    for line in speed["printed"] + scaling["printed"]:
        assert " ".join(line.split()) in text, line
    assert f"The ratio, {speed['stock_seconds'] / speed['qkv_seconds']:.1f}× here" in text
    best = max(rate for _, rate in scaling["rates"])
    assert f"about {best / scaling['cores']:.1f} notebooks per second per core" in text
    assert "{glue" not in text and "Traceback" not in text
