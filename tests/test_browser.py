"""Headless Chromium opens the built attention page from file:// and sees math, figures and widgets."""

from __future__ import annotations

import pytest
from playwright.sync_api import sync_playwright

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.xdist_group("book")]

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def page(built_book, tmp_path_factory):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        pg = context.new_page()
        failed = []
        pg.on("requestfailed", lambda r: failed.append(r.url))
        external = []
        pg.on("request", lambda r: external.append(r.url)
              if not r.url.startswith(("file://", "data:", "blob:")) else None)
        pg.goto((built_book / "chapters" / "attention.html").as_uri())
        pg.wait_for_selector("mjx-container", timeout=30_000)
        pg.wait_for_selector(".qkv-static-widget .qkv-frame img", timeout=30_000)
        pg.wait_for_function("() => !document.querySelector('.MathJax_Processing')"
                             " && document.querySelectorAll('mjx-container').length > 5")
        pg.failed_requests, pg.external_requests = failed, external
        yield pg
        browser.close()


def test_mathjax_typeset_every_formula(page, artifacts):
    assert page.locator("mjx-container").count() > 10
    text = page.locator("article").inner_text()
    for raw in ("$$", "\\frac", "\\operatorname", "\\sqrt{d_k}"):
        assert raw not in text, f"raw TeX left on the page: {raw}"
    page.screenshot(path=str(artifacts / "attention-page.png"), full_page=True)


def test_figures_are_present(page):
    figures = page.locator(".cell_output img")
    assert figures.count() >= 3
    assert all(figures.nth(i).evaluate("img => img.naturalWidth > 100") for i in range(figures.count()))


def test_widgets_rendered_as_static_views(page, artifacts):
    assert page.locator(".qkv-static-widget select").count() >= 1
    assert page.locator('.qkv-static-widget input[type="range"]').count() >= 1
    assert page.locator(".qkv-static-widget .qkv-frame img").count() >= 2
    select = page.locator(".qkv-static-widget select").first
    assert select.locator("option:checked").inner_text() == "7:it"
    page.locator(".qkv-static-widget").first.screenshot(path=str(artifacts / "attention-widget.png"))


def test_page_made_no_network_requests(page):
    assert page.external_requests == []
    assert page.failed_requests == []
