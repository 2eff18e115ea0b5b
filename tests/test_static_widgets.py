"""The widgets of the built book respond from file://, offline, with no kernel (issue 11).

Headless Chromium opens every chapter page of the built book. For every widget it moves every
control to at least two values other than the default (a checkbox has one), checks that the
figure or text changes each time and that it shows the frame the page data holds for those
values, then moves it back and checks the default view returns. Screenshots of the moved states
go to ``test-artifacts/static-widgets/``. The KV-cache calculator and the BPE playground compute
in the page: their output is compared with the Python widgets' on many inputs.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from pathlib import Path

import pytest
from bs4 import BeautifulSoup
from playwright.sync_api import sync_playwright

from qkv.chapters import available_slugs
from static_widget_tools import StaticWidget, read_static_widgets

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.xdist_group("book")]

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
MB = 2**20


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield chromium
        chromium.close()


class Visit:
    """One chapter page opened from file://, with what it logged and requested."""

    def __init__(self, browser, path: Path):
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(path.as_uri())
        self.page.wait_for_load_state("load")
        self.page.wait_for_function("() => [...document.querySelectorAll('.qkv-static-widget[data-qkv-widget=frames] "
                                    ".qkv-part')].every(p => p.dataset.qkvFrame !== undefined)")
        self.static = read_static_widgets(BeautifulSoup(path.read_text(), "html.parser"))

    def widget(self, index: int):
        return self.page.locator(".qkv-static-widget").nth(index)

    def offline_and_clean(self) -> None:
        outside = [u for u in self.requests if not u.startswith(("file://", "data:"))]
        assert outside == [], f"network requests: {outside}"
        assert self.errors == [], f"console errors: {self.errors}"

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def visit(browser, built_book):
    opened = []

    def open_page(slug: str) -> Visit:
        opened.append(Visit(browser, built_book / "chapters" / f"{slug}.html"))
        return opened[-1]

    yield open_page
    for v in opened:
        v.close()


def _view(widget) -> list[list[str]]:
    """What a part shows, without alt text: image data and text (alt always names the settings)."""
    return widget.evaluate("root => [...root.querySelectorAll('.qkv-frame > .qkv-part')]"
                           ".map(p => [...p.children].map(c => c.tagName === 'IMG' ? c.src : c.textContent))")


def _set(widget, control_index: int, kind: str, value: int) -> None:
    """Move one static control to grid index ``value`` as a reader would (mouse or its own events)."""
    control = widget.locator(f'[data-qkv-control="{control_index}"]')
    if kind == "select":
        control.select_option(index=value)
    elif kind == "radio":
        control.locator("label.qkv-radio").nth(value).click()
    elif kind == "checkbox":
        control.set_checked(bool(value))
    else:  # a range input: set it and fire the events a drag fires
        control.evaluate("(el, v) => { el.value = String(v); el.dispatchEvent(new Event('input', {bubbles: true}));"
                         " el.dispatchEvent(new Event('change', {bubbles: true})); }", value)


def _expected_view(static: StaticWidget, indices: list[int]) -> list[list[str]]:
    """The view the page data holds for the control ``indices`` (row-major frame of each part)."""
    view = []
    for part in static.payload["parts"]:
        frame = 0
        for c in part["controls"]:
            frame = frame * len(static.controls[c].labels) + indices[c]
        view.append([static.payload["images"][o[1]] if o[0] == "img" else
                     (o[1] if o[0] == "text" else BeautifulSoup(o[1], "html.parser").get_text())
                     for o in part["frames"][frame]])
    return view


def _moves(default: int, n: int) -> list[int]:
    """Two values other than the default, far apart (one for a two-state control)."""
    others = [i for i in range(n) if i != default]
    return others if len(others) <= 2 else [others[-1], others[0]]


def _name(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40]


@pytest.mark.parametrize("slug", sorted(available_slugs()))
def test_every_control_moves_the_figure_and_moves_it_back(slug, visit, artifacts):
    v = visit(slug)
    shots = artifacts / "static-widgets"
    shots.mkdir(exist_ok=True)
    frames_widgets = [(i, s) for i, s in enumerate(v.static) if s.kind == "frames"]
    assert v.static, f"{slug} has no static widget"
    for i, static in frames_widgets:
        widget = v.widget(i)
        widget.scroll_into_view_if_needed()
        defaults = [c.default for c in static.controls]
        default_view = _view(widget)
        assert default_view == _expected_view(static, defaults), "the page first shows the default frame"
        for c, control in enumerate(static.controls):
            previous = default_view
            for value in _moves(control.default, len(control.labels)):
                _set(widget, c, control.kind, value)
                indices = defaults[:c] + [value] + defaults[c + 1:]
                now = _view(widget)
                assert now != previous, \
                    f"{slug}: moving {control.description!r} to {control.labels[value]!r} changed nothing"
                assert now == _expected_view(static, indices), f"{slug}: {control.description!r} shows another frame"
                shot = f"{slug}-{i}-{_name(control.description)}-{_name(control.labels[value])}.png"
                widget.screenshot(path=str(shots / shot))
                previous = now
            _set(widget, c, control.kind, control.default)
            assert _view(widget) == default_view, \
                f"{slug}: {control.description!r} back to default is not the default view"
    v.offline_and_clean()


def test_controls_work_from_the_keyboard(visit):
    def focus_and_press(v, control: str, key: str):
        widget = v.page.locator(".qkv-static-widget").filter(has=v.page.locator(control)).first
        before = _view(widget)
        widget.locator(control).first.focus()
        v.page.keyboard.press(key)
        return before, _view(widget), widget.locator(control).first

    v = visit("attention")  # a dropdown (query) and a range slider (scale s)
    before, after, select = focus_and_press(v, "select", "ArrowDown")
    assert before != after and select.input_value() == "8"  # default 7:it, then one down
    before, after, slider = focus_and_press(v, 'input[type="range"]', "ArrowRight")
    assert before != after and slider.get_attribute("aria-valuetext") == "1.26"
    assert slider.locator("xpath=following-sibling::output").text_content() == "1.26"
    v.offline_and_clean()
    v = visit("multihead")  # toggle buttons: a radio group, arrow keys move the choice
    before, after, _ = focus_and_press(v, ".qkv-radios input:checked", "ArrowRight")
    assert before != after and v.page.locator(".qkv-radios input:checked").first.get_attribute("value") == "3"
    v.offline_and_clean()
    v = visit("masking")  # a checkbox: Space toggles it
    before, after, box = focus_and_press(v, 'input[type="checkbox"]', "Space")
    assert before != after and not box.is_checked()
    v.offline_and_clean()


# Per book widget (by title): what each frame must show for its settings, computed independently
# of the widget code (closed forms, torch built-ins).
def _softmax_max(index):
    import torch

    s = 10 ** round(-1.5 + 0.1 * index, 10)  # the documented static grid: every second slider step
    p = torch.softmax(s * torch.tensor([2.0, 1.0, 0.5, 0.1, -1.0], dtype=torch.float64), 0)
    return f"s = {s:.2f}: max p = {p.max():.3f}"


def _masks_panel(s, alt):
    if not s:
        return "legend: may attend, key is padding, query is padding, future key (causal)" in alt
    (b,) = [int(d[-1]) for d in s if d.startswith("length")]
    n, causal = int(s[f"length {b}"][1]), s["causal (decoder self-attention)"][0]
    return f"sequence {b}: length {n} {n * (n + 1) // 2 if causal else n * n} of 36 pairs allowed" in alt


def _sampling_frame(s, alt, text) -> bool:
    """The capstone's sampling widget: the bars name their prompt and temperature; the text continues
    the prompt and counts the positions the model ran over, T0 + n - 1 with the KV cache and
    n·T0 + n(n-1)/2 without it."""
    if "KV cache" not in s:
        return f"next token after {s['prompt'][1]!r} at temperature {float(s['temperature'][1]):g}" in alt
    n = int(s["new tokens"][1])
    m = re.search(rf"{n} new tokens after a prompt of (\d+): the model ran over ([\d,]+) token positions", text)
    if m is None or not text[1:].startswith(s["prompt"][1]):  # text[0]: the quote repr() chose
        return False
    t0, positions = int(m.group(1)), int(m.group(2).replace(",", ""))
    cached = s["KV cache"][1] == "on"
    return positions == (t0 + n - 1 if cached else n * t0 + n * (n - 1) // 2) and \
        ("(with the KV cache)" in text) == cached


EXPECTED = {
    "Attention weights of the toy sentence, one query highlighted":
        lambda s, alt, text: f"weights of query '{s['query'][1]}' (sum = 1.000)" in alt,
    "Softmax of five logits multiplied by s": lambda s, alt, text: _softmax_max(s["scale s"][0]) in alt,
    "BERT's masking of a sentence": lambda s, alt, text: f"rate = {s['rate'][1]}, seed = {s['seed'][1]}:" in alt,
    "Combined attention masks of a padded batch of three sequences": lambda s, alt, text: _masks_panel(s, alt),
    "Attention maps of every head of one layer":
        lambda s, alt, text: f"H = {s['heads H'][1]}: one (T, T)" in alt
        and re.findall(r"head \d+ \(d_head = (\d+)\)", alt) == [str(24 // int(s["heads H"][1]))] * int(s["heads H"][1]),
    "Cost of one self-attention layer":
        lambda s, alt, text: f"T = {s['T'][1]} tokens, d_model = {s['d_model'][1]}" in text
        and f"<td>{int(s['heads H'][1]) * int(s['T'][1]) ** 2:,}</td>" in text,
    "Elements that share normalization statistics in a (B, T, C) batch":
        lambda s, alt, text: f"{s['norm'][1]}: the ★ is normalized with the "
        f"{ {'LayerNorm': 6, 'RMSNorm': 6, 'BatchNorm': 15, 'masked BatchNorm': 10}[s['norm'][1]]}"
        " orange elements" in alt,
    "Logits, gradient norm and softmax weights, unscaled and scaled by 1/√d_k":
        lambda s, alt, text: f"logits, d_k = {s['d_k'][1]};" in alt,
    "Sinusoidal positional encoding table":
        lambda s, alt, text: f"PE[{s['position'][1]}]" in alt and f"pair {s['pair i'][1]}: wavelength 2π/ω = "
        f"{2 * math.pi * 10000 ** (2 * int(s['pair i'][1]) / 64):.1f}" in alt,
    "Noam learning-rate schedule":
        lambda s, alt, text: f"peak at step {s['warmup'][1]}: lr = (d_model·warmup)^-0.5 = "
        f"{(int(s['warmup'][1]) * int(s['d_model'][1])) ** -0.5:.2e}" in alt,
    "BPE merges applied to a small corpus": lambda s, alt, text: f"after {s['merges'][1]} merges:" in alt,
    "sampling from the trained GPT": lambda s, alt, text: _sampling_frame(s, alt, text),
}
# Frames per widget: every option and step, or the documented coarser grid of its builder.
FRAME_COUNTS = {"Attention weights of the toy sentence, one query highlighted": 10,
                "Softmax of five logits multiplied by s": 31, "BERT's masking of a sentence": 13 * 3,
                "Combined attention masks of a padded batch of three sequences": 3 * 7 * 2 + 1,
                "Attention maps of every head of one layer": 4, "Cost of one self-attention layer": 10 * 6 * 6,
                "Elements that share normalization statistics in a (B, T, C) batch": 4,
                "Logits, gradient norm and softmax weights, unscaled and scaled by 1/√d_k": 5,
                "Sinusoidal positional encoding table": 5 * 5, "Noam learning-rate schedule": 6 * 3,
                "BPE merges applied to a small corpus": 21,
                # text: every control; bars: prompt, temperature
                "sampling from the trained GPT": 3 * 4 * 2 * 3 * 2 + 3 * 4}


def test_every_frame_of_every_widget_shows_its_settings(built_book):
    seen = set()
    for slug in available_slugs():
        for static in read_static_widgets((built_book / "chapters" / f"{slug}.html").read_text()):
            if static.kind != "frames":
                continue
            title = static.root["aria-label"]
            seen.add(title)
            frames = list(static.frames())
            assert len(frames) == FRAME_COUNTS[title], title
            for frame in frames:
                alt = " | ".join(frame.alts())
                assert EXPECTED[title](frame.settings, alt, frame.text()), \
                    f"{title}: frame {frame.settings} shows {alt[:300]}"
                for a in frame.alts():  # alt text: the widget, then every control value of the frame
                    assert a.startswith(title) and all(f"{d} = {label}" in a
                                                       for d, (_, label) in frame.settings.items())
            note = static.root.select_one(".qkv-static-note")
            for control in static.controls:  # a control with fewer values than live says which
                if f"{control.description} snaps to" in (note.get_text() if note else ""):
                    assert (f"snaps to {', '.join(control.labels)} ({len(control.labels)} of its" in note.get_text() or
                            f"snaps to {len(control.labels)} of its" in note.get_text()
                            and f"from {control.labels[0]} to {control.labels[-1]}" in note.get_text())
    assert seen == set(EXPECTED), f"widgets without a frame check: {seen ^ set(EXPECTED)}"


# ----------------------------------------------------------------------------- KV-cache calculator

KV_SETTINGS = [
    dict(n_layers=80, n_heads=64, n_kv_heads=8, d_head=128, dtype="float16", context=4096, batch=1),
    dict(n_layers=32, n_heads=32, n_kv_heads=32, d_head=128, dtype="bfloat16", context=131072, batch=8),
    # 0.0625 GiB: a tie
    dict(n_layers=1, n_heads=8, n_kv_heads=1, d_head=128, dtype="float16", context=131072, batch=1),
    dict(n_layers=126, n_heads=128, n_kv_heads=8, d_head=128, dtype="fp8 / int8", context=1048576, batch=64),
    dict(n_layers=512, n_heads=96, n_kv_heads=12, d_head=256, dtype="float32", context=1048576, batch=4096),  # > 2**53
    dict(n_layers=24, n_heads=12, n_kv_heads=3, d_head=64, dtype="int4", context=256, batch=3),
    dict(n_layers=7, n_heads=40, n_kv_heads=5, d_head=80, dtype="int4", context=512, batch=5),
]


def _python_table(settings) -> str:
    from qkv.widgets import mqa_gqa

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # outside a kernel the live Output lets prints through
        mqa_gqa.kv_cache_calculator(**settings)
    return re.sub(r"\x1b\[2K\r?", "", printed.getvalue())  # the Output's clear_output, as a terminal escape


def test_kv_calculator_prints_the_python_table_for_every_setting(visit, artifacts):
    from qkv.kv_cache import DTYPE_BYTES, kv_cache_bytes

    v = visit("mqa_gqa")
    (i,) = [i for i, s in enumerate(v.static) if s.kind == "kv-cache"]
    widget = v.widget(i)
    field = lambda name: widget.locator(f'[data-qkv-field="{name}"]')  # noqa: E731
    for n, st in enumerate(KV_SETTINGS):
        field("layers").fill(str(st["n_layers"]))
        field("heads").select_option(str(st["n_heads"]))
        field("kv").select_option(str(st["n_kv_heads"]))
        field("d_head").select_option(str(st["d_head"]))
        field("dtype").select_option(st["dtype"])
        field("context").select_option(str(st["context"]))
        field("batch").fill(str(st["batch"]))
        field("batch").dispatch_event("change")
        assert widget.locator("pre").text_content() == _python_table(st), st
        curves = widget.locator("polyline").evaluate_all("ps => ps.map(p => JSON.parse(p.dataset.gib))")
        for curve, kv in zip(curves, (st["n_heads"], st["n_kv_heads"], 1)):
            expected = [kv_cache_bytes(st["n_layers"], kv, st["d_head"], 2**e, st["batch"], DTYPE_BYTES[st["dtype"]])
                        / 2**30 for e in range(8, 21)]
            assert curve == pytest.approx(expected, rel=1e-12)
        (artifacts / "static-widgets").mkdir(exist_ok=True)
        widget.screenshot(path=str(artifacts / "static-widgets" / f"mqa_gqa-kv-cache-{n}.png"))
    v.offline_and_clean()


def test_kv_calculator_keeps_kv_heads_dividing_the_query_heads_and_clamps_the_boxes(visit):
    v = visit("mqa_gqa")
    widget = v.page.locator('.qkv-static-widget[data-qkv-widget="kv-cache"]')
    field = lambda name: widget.locator(f'[data-qkv-field="{name}"]')  # noqa: E731
    field("heads").select_option("12")  # 8 KV heads cannot serve 12 query heads: as live, the largest divisor
    assert field("kv").evaluate("s => [...s.options].map(o => o.value)") == ["1", "2", "3", "4", "6", "12"]
    assert field("kv").input_value() == "12"
    field("layers").fill("0")
    field("layers").dispatch_event("change")
    assert field("layers").input_value() == "1"  # BoundedIntText(min=1) clamps the same way
    assert widget.locator("pre").text_content() == _python_table(dict(n_layers=1, n_heads=12, n_kv_heads=12))
    v.offline_and_clean()


# ----------------------------------------------------------------------------- BPE playground


def _corpus() -> list[str]:
    from qkv.corpora import CHINESE_SAMPLE, ENGLISH_SAMPLE, english_corpus

    prose = english_corpus()[:30_000]
    chunks = [prose[k:k + 600] for k in range(0, len(prose), 600)]
    edge = ["", " ", "  \n\n\t x", "I'll've  it's 'tis 'S", "2025 2026 ３４５ Ⅻ ½", "emoji 🙂👍🏽, family 👨‍👩‍👧",
            "naïve café, ẞ, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "Ελληνικά, русский, עברית, العربية, हिन्दी, 日本語のテキスト",
            "zero\u200bwidth\ufeffbom\xa0nbsp\x85nel\x1cfs\u3000ideo", "a<|endoftext|>b<|endoftext|><|endoftext|>",
            "<|endoftext", "tabs\tand\r\nwindows\rlines", "ÿ\x00\x01\x7f control", CHINESE_SAMPLE, ENGLISH_SAMPLE]
    return edge + chunks


def test_bpe_playground_encodes_like_python_on_a_corpus(visit):
    from qkv.bpe import build_vocab, encode, token_strings
    from qkv.gpt2_files import ENDOFTEXT, gpt2_merges

    merges = gpt2_merges()
    vocab = build_vocab(merges, [ENDOFTEXT])
    v = visit("tokenization")
    (i,) = [i for i, s in enumerate(v.static) if s.kind == "bpe"]
    root = v.widget(i)
    texts = _corpus()
    got = root.evaluate("(root, texts) => texts.map(t => { const ids = root.qkvTokenizer.encode(t);"
                        " return [ids, root.qkvTokenizer.tokenStrings(ids)]; })", texts)
    mismatches = [(t[:60], ids[:10]) for t, (ids, _) in zip(texts, got) if ids != encode(t, merges, [ENDOFTEXT])]
    assert mismatches == [], f"{len(mismatches)} of {len(texts)} texts encode differently, e.g. {mismatches[:2]}"
    assert all(strings == token_strings(ids, vocab) for ids, strings in got)
    assert sum(len(ids) for ids, _ in got) > 5000  # the corpus is not trivial
    v.offline_and_clean()


def test_bpe_playground_shows_title_tokens_and_ids_as_the_live_widget(visit, artifacts):
    from qkv.bpe import build_vocab, encode, token_strings
    from qkv.gpt2_files import ENDOFTEXT, gpt2_merges

    merges = gpt2_merges()
    vocab = build_vocab(merges, [ENDOFTEXT])
    v = visit("tokenization")
    root = v.page.locator('.qkv-static-widget[data-qkv-widget="bpe"]')
    box = root.locator("input")
    for n, text in enumerate(["hello world", "你好, 世界 <|endoftext|> it's 1234567!", "tabs\tand  two  spaces",
                              "Tokenizers split unbelievably long words into pieces: 1234567!"]):
        box.fill(text)
        ids = encode(text, merges, [ENDOFTEXT])
        title = (f"GPT-2 BPE: {len(ids)} tokens for {len(text)} characters "
                 f"({len(ids) / max(len(text), 1):.2f} per character)")
        assert root.locator(".qkv-tokens-title").text_content() == title
        shown = root.locator(".qkv-token").all_text_contents()
        assert shown == [t.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥") for t in token_strings(ids, vocab)]
        assert root.locator("pre").text_content() == f"ids (this course's numbering: bytes are 0-255): {ids}\n"
        (artifacts / "static-widgets").mkdir(exist_ok=True)
        root.screenshot(path=str(artifacts / "static-widgets" / f"tokenization-bpe-{n}.png"))
    box.press("End")
    box.press("Backspace")  # typing updates at once, from the keyboard
    assert root.locator(".qkv-tokens-title").text_content().startswith("GPT-2 BPE: 12 tokens for 61 characters")
    # not Unicode: Python raises
    box.evaluate("el => { el.value = 'x\\ud800y'; el.dispatchEvent(new Event('input')); }")
    assert root.locator(".qkv-tokens-title").text_content().startswith(
        "cannot encode: text contains a lone surrogate U+D800")
    v.offline_and_clean()


def test_python_float_formatting_ties_are_reproduced(visit):
    v = visit("tokenization")
    cases = [0.125, 0.375, 0.625, 2.875, 0.135, 1 / 3, 0.5, 0.005, 12.345]
    got = v.page.evaluate("xs => xs.map(x => window.qkvBpe.pyFixed2(x))", cases)
    assert got == [f"{x:.2f}" for x in cases]
    v2 = visit("mqa_gqa")
    totals = [2**26, 3 * 2**26, 2**30 + 2**26, 5 * 2**27, 123456789, 2**60 + 2**26]
    got = v2.page.evaluate("ts => ts.map(t => window.qkvKvCache.fixed3(BigInt(t), 2 ** 30))", [str(t) for t in totals])
    assert got == [f"{t / 2**30:.3f}" for t in totals]


# ----------------------------------------------------------------------------- pages and budget


def test_pages_load_only_the_scripts_they_use(built_book):
    for page in [built_book / "intro.html", *sorted((built_book / "chapters").glob("*.html"))]:
        soup = BeautifulSoup(page.read_text(), "html.parser")
        srcs = {Path(s["src"].split("?")[0]).name for s in soup.find_all("script", src=True)}
        kinds = {w["data-qkv-widget"] for w in soup.select(".qkv-static-widget")}
        wanted = {{"frames": "qkv-frames.js", "kv-cache": "qkv-kv-cache.js", "bpe": "qkv-bpe.js"}[k] for k in kinds}
        assert {s for s in srcs if s.startswith("qkv-")} == wanted, page.name
        # No live widget view is left, so the 4 MB ipywidgets manager and its state are not loaded.
        assert not {"embed-amd.js", "require.js"} & srcs, page.name
        assert not soup.find_all("script", type="application/vnd.jupyter.widget-state+json"), page.name
        assert not soup.find_all("script", type="application/vnd.jupyter.widget-view+json"), page.name
    for name in ("qkv-frames.js", "qkv-kv-cache.js", "qkv-bpe.js", "qkv-static-widgets.css"):
        assert (built_book / "_static" / name).is_file()


def test_the_book_and_its_pages_stay_within_budget(built_book):
    total = sum(p.stat().st_size for p in built_book.rglob("*") if p.is_file())
    assert total <= 40 * MB, f"built book {total / MB:.1f} MB > 40 MB"
    pages = {p.name: p.stat().st_size for p in (built_book / "chapters").glob("*.html")}
    heavy = {name: f"{size / MB:.1f} MB" for name, size in pages.items() if size > 6 * MB}
    assert heavy == {}, f"chapter pages over 6 MB: {heavy}"
