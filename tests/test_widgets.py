"""Every book widget: the live view in a notebook, and the static view the book build renders.

Live: the default view is drawn at once and redrawn when a control moves; outside the book
build nothing else happens. Static (only with ``QKV_STATIC_WIDGETS=1``, as the book's Sphinx
extension sets for its kernels): the control grids, the recording of one frame, the frame
order, parts, coarse grids and their errors. That every frame of every book widget shows what
the live view shows for its settings is checked on the built book (tests/test_static_widgets.py).
"""

from __future__ import annotations

import base64
import io

import ipywidgets as widgets
import matplotlib
import numpy as np
import pytest
from PIL import Image

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from qkv.gpt2_files import ENDOFTEXT, gpt2_merges  # noqa: E402
from qkv.widgets import (  # noqa: E402
    attention,
    bert,
    masking,
    mqa_gqa,
    multihead,
    norms,
    scaling,
    static_frames,
    tokenization,
    transformer,
)
from qkv.widgets.live import STATIC_BUILD_ENV, LiveView, live_view  # noqa: E402
from qkv.widgets.static_controls import control_grid  # noqa: E402
from qkv.widgets.static_frames import MAX_FRAMES, Part, figure_png, record  # noqa: E402
from static_widget_tools import read_static_widgets  # noqa: E402


def gpt2_playground():
    return tokenization.tokenizer_playground(gpt2_merges(), [ENDOFTEXT], label="GPT-2 BPE")


gpt2_playground.__module__ = "qkv.widgets.tokenization"  # named like the builders in test ids
gpt2_playground.__name__ = "tokenizer_playground"


BUILDERS = [attention.query_heatmap, attention.softmax_temperature, bert.masking_playground,
            masking.padded_batch_masks, mqa_gqa.kv_cache_calculator, multihead.head_maps, multihead.cost_table,
            norms.axes_picture, scaling.dk_explorer, transformer.pe_heatmap, transformer.lr_schedule,
            tokenization.merge_stepper, gpt2_playground]
IDS = [f"{b.__module__.rsplit('.', 1)[1]}.{b.__name__}" for b in BUILDERS]
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _controls(widget):
    found = []
    for child in getattr(widget, "children", ()):
        if isinstance(child, widgets.ValueWidget):
            found.append(child)
        found += _controls(child)
    return found


@pytest.fixture
def shell():
    """An IPython shell that formats rich output as a kernel does: ``display`` goes through it."""
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.testing.globalipapp import start_ipython

    start_ipython()  # once per process: a shell for tests (no history file, no terminal)
    ip = InteractiveShell.instance()
    ip.display_formatter.active_types = ip.display_formatter.format_types  # a terminal shell keeps text only
    return ip


@pytest.fixture
def static_build(monkeypatch, shell):
    """As inside the book build's kernels."""
    monkeypatch.setenv(STATIC_BUILD_ENV, "1")


# ----------------------------------------------------------------------------- live (JupyterLab)


def test_live_view_draws_now_and_on_every_change():
    calls = []
    slider = widgets.IntSlider(value=1)
    view = live_view(lambda: calls.append(slider.value), [slider])
    assert calls == [1] and view.children[0] is slider and isinstance(view.children[1], widgets.Output)
    slider.value = 3
    assert calls == [1, 3]


@pytest.mark.parametrize("build", BUILDERS, ids=IDS)
def test_widget_redraws_when_its_first_control_moves(build, monkeypatch):
    drawn = []
    monkeypatch.setattr(widgets.Output, "clear_output", lambda self, wait=False: drawn.append(1))
    view = build()
    assert drawn == [1], "the default view must be drawn when the widget is built"
    control = _controls(view)[0]
    options = getattr(control, "options", None)
    if options:
        control.index = (control.index + 1) % len(options)
    elif isinstance(control.value, bool):
        control.value = not control.value
    elif isinstance(control.value, str):
        control.value = control.value + " and more"
    else:
        control.value = control.max if control.value != control.max else control.min
    assert len(drawn) >= 2


@pytest.mark.parametrize("build", BUILDERS, ids=IDS)
def test_in_a_notebook_the_widget_is_the_live_widget_only(build, monkeypatch):
    """JupyterLab unchanged: no static rendering is computed or offered outside the book build."""
    monkeypatch.delenv(STATIC_BUILD_ENV, raising=False)
    monkeypatch.setattr(static_frames, "render_frames", lambda *a: pytest.fail("frames rendered in a notebook"))
    monkeypatch.setattr(static_frames, "record", lambda *a: pytest.fail("a static view rendered in a notebook"))
    view = build()
    assert isinstance(view, widgets.VBox)
    assert set(view._repr_mimebundle_()) == {"text/plain", WIDGET_VIEW}


def test_kv_calculator_accepts_query_heads_that_the_kv_heads_do_not_divide():
    view = mqa_gqa.kv_cache_calculator(n_heads=64, n_kv_heads=8)
    heads, kv = [c for c in _controls(view) if c.description in ("query heads", "KV heads")]
    heads.value = 12  # 8 KV heads cannot serve 12 query heads
    assert kv.value in kv.options and 12 % kv.value == 0


def test_tokenizer_playground_shows_gpt2s_tokens_of_the_typed_text(capsys):
    from qkv.gpt2_files import gpt2_tiktoken, gpt2_vocab, to_gpt2_ids

    view = gpt2_playground()  # outside a kernel the Output widget lets the ids line through to stdout
    box = _controls(view)[0]
    for text in ("hello world", "你好 <|endoftext|> it's 2026!"):
        capsys.readouterr()
        box.value = text
        line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("ids ("))
        ids = [int(i) for i in line.split("[", 1)[1].rstrip("]").split(",")]
        assert to_gpt2_ids(ids, gpt2_vocab()) == gpt2_tiktoken().encode(text, allowed_special="all")


# ----------------------------------------------------------------------------- control grids


def test_grid_of_each_control_kind_comes_from_the_control():
    dropdown = control_grid(widgets.Dropdown(options=[("a", 1), ("b", 2), ("c", 3)], value=2, description="d"))
    assert (dropdown.kind, dropdown.values, dropdown.labels, dropdown.default) == (
        "select", [1, 2, 3], ["a", "b", "c"], 1)
    toggles = control_grid(widgets.ToggleButtons(options=[1, 2, 4, 8], value=4))
    assert (toggles.kind, toggles.values, toggles.default) == ("radio", [1, 2, 4, 8], 2)
    ints = control_grid(widgets.IntSlider(value=6, min=0, max=10, step=3))
    assert (ints.kind, ints.values, ints.labels, ints.default) == ("range", [0, 3, 6, 9], ["0", "3", "6", "9"], 2)
    floats = control_grid(widgets.FloatSlider(value=0.15, min=0.0, max=0.6, step=0.05))
    assert (floats.values == [round(0.05 * k, 10) for k in range(13)] and floats.labels[3] == "0.15"
            and floats.default == 3)
    logs = control_grid(widgets.FloatLogSlider(value=1.0, base=10, min=-1, max=1, step=0.5))
    assert np.allclose(logs.values, [0.1, 10 ** -0.5, 1, 10 ** 0.5, 10]) and logs.default == 2
    assert logs.labels == ["0.1", "0.316", "1", "3.16", "10"]  # the slider's readout format, .3g
    box = control_grid(widgets.Checkbox(value=True, description="causal"))
    assert (box.kind, box.values, box.labels, box.default, box.description) == (
        "checkbox", [False, True], ["off", "on"], 1, "causal")
    selection = control_grid(widgets.SelectionSlider(options=[4, 16, 64], value=16))
    assert (selection.kind, selection.values, selection.default, selection.total) == ("range", [4, 16, 64], 1, 3)


def test_a_coarse_grid_keeps_the_default_and_rejects_values_the_control_cannot_take():
    slider = widgets.IntSlider(value=20, min=0, max=99, description="position")
    coarse = control_grid(slider, [0, 20, 50, 99])
    assert coarse.coarse and coarse.total == 100 and coarse.default == 1
    with pytest.raises(ValueError, match="current value 20 is not on the static grid"):
        control_grid(slider, [0, 50, 99])
    with pytest.raises(ValueError, match="outside the slider's range"):
        control_grid(slider, [0, 20, 120])
    with pytest.raises(ValueError, match="not an integer"):
        control_grid(slider, [0, 20, 2.5])
    with pytest.raises(ValueError, match="not one of its values"):
        control_grid(widgets.Dropdown(options=[1, 2], value=1, description="d"), [1, 3])
    with pytest.raises(ValueError, match="share a label"):
        control_grid(widgets.FloatSlider(value=0.1, min=0, max=1, step=0.001), [0.1, 0.1001])


def test_free_text_has_no_grid_and_says_what_to_do(static_build):
    text = widgets.Text(value="x", description="text")
    with pytest.raises(TypeError, match="no finite set of values.*custom static rendering"):
        control_grid(text)
    with pytest.raises(TypeError, match="'text'"):
        live_view(lambda: None, [text], title="t")


def test_too_many_frames_stop_the_build_with_the_grid_sizes(static_build):
    a, b = (widgets.IntSlider(value=0, min=0, max=40, description="a"),
            widgets.IntSlider(value=0, min=0, max=40, description="b"))
    with pytest.raises(ValueError, match=rf"1681 frames \(a 41, b 41 values\) exceed .* {MAX_FRAMES}"):
        live_view(lambda: None, [a, b], title="t")


# ----------------------------------------------------------------------------- recording one frame


def test_record_keeps_prints_figures_and_html_in_order(shell):
    from IPython.display import HTML, display

    def render():
        print("before")
        fig, ax = plt.subplots(figsize=(2, 1))
        ax.set_title("a title")
        plt.show()
        display(HTML("<b>table</b>"))
        print("after", 1)
        print("and more")

    outputs = record(render)
    assert [o.kind for o in outputs] == ["text", "image", "html", "text"]
    assert outputs[0].data == "before\n" and outputs[3].data == "after 1\nand more\n"
    assert outputs[1].alt == "a title" and outputs[1].data[:8] == b"\x89PNG\r\n\x1a\n"
    assert outputs[2].data == "<b>table</b>"
    assert plt.get_fignums() == []


def test_record_refuses_to_run_without_an_ipython_shell(monkeypatch):
    """Outside a shell, display() would print "<IPython.core.display.HTML object>" into the frame."""
    from IPython.core.interactiveshell import InteractiveShell

    monkeypatch.setattr(InteractiveShell, "initialized", classmethod(lambda cls: False))
    with pytest.raises(RuntimeError, match="inside an IPython kernel"):
        record(lambda: print("a frame"))


def test_frame_png_keeps_the_figures_colours_and_crops_to_its_ink():
    colours = ["#2b8cbe", "#bdbdbd", "#f2f2f2", "#fdae6b"]  # the masking widget's: #f2f2f2 must not become white
    fig = plt.figure(figsize=(4, 3), dpi=static_frames.DPI)
    ax = fig.add_axes((0.25, 0.25, 0.5, 0.5))
    ax.imshow(np.arange(4).reshape(2, 2), cmap=matplotlib.colors.ListedColormap(colours), vmin=0, vmax=3)
    ax.set_title("x")
    fig.canvas.draw()
    reference = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    image = Image.open(io.BytesIO(figure_png(fig)))
    plt.close(fig)
    assert image.mode == "P"
    pixels = np.asarray(image.convert("RGB")).astype(int)
    assert pixels.shape[0] < reference.shape[0] and pixels.shape[1] < reference.shape[1]  # whitespace cropped
    found = {tuple(p) for p in pixels.reshape(-1, 3)}
    for colour in colours:
        rgb = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
        assert min(max(abs(a - b) for a, b in zip(rgb, f)) for f in found) <= 2, colour
    # Every pixel of the crop is within a small error of the figure as Agg drew it.
    ys, xs = np.nonzero((reference != 255).any(-1))
    top, left = ys.min() - static_frames.PAD_PX, xs.min() - static_frames.PAD_PX
    crop = reference[top:top + pixels.shape[0], left:left + pixels.shape[1]]
    assert np.abs(crop - pixels).max() <= 24 and np.abs(crop - pixels).mean() < 0.5


# ----------------------------------------------------------------------------- static views


def test_frames_follow_the_controls_in_row_major_order(static_build):
    a = widgets.Dropdown(options=["x", "y"], value="y", description="a")
    b = widgets.IntSlider(value=1, min=0, max=2, description="b")
    calls = []

    def render():
        calls.append((a.value, b.value))
        print(f"{a.value}{b.value}")

    view = live_view(render, [a, b], title="pairs")
    (static,) = read_static_widgets(view.static_html)
    assert [(c.description, c.labels, c.default) for c in static.controls] == [
        ("a", ["x", "y"], 1), ("b", ["0", "1", "2"], 1)]
    assert [(f.settings, f.text()) for f in static.frames()] == [
        ({"a": (i, "xy"[i]), "b": (j, str(j))}, f"{'xy'[i]}{j}\n") for i in range(2) for j in range(3)]
    assert (a.value, b.value) == ("y", 1), "the live controls go back to their defaults"
    assert calls[-1] == ("y", 1) and len(calls) == 6 + 1  # every frame once, then the live default view
    assert static.shown_outputs(0).get_text() == "y1\n"
    assert "text/html" in view._repr_mimebundle_() and isinstance(view, LiveView)


def test_parts_render_only_their_own_controls(static_build):
    a = widgets.IntSlider(value=0, min=0, max=3, description="a")
    b = widgets.Checkbox(value=False, description="b")
    parts = [Part(lambda: print("a", a.value), [a]), Part(lambda: print("b", b.value), [b]),
             Part(lambda: print("legend"), [], wide=True)]
    (static,) = read_static_widgets(live_view(lambda: None, [a, b], title="t", parts=parts).static_html)
    frames = list(static.frames())
    assert [(f.part, f.text()) for f in frames] == [(0, f"a {i}\n") for i in range(4)] + [
        (1, "b False\n"), (1, "b True\n"), (2, "legend\n")]
    assert "qkv-wide" in static.shown_outputs(2)["class"] and "qkv-wide" not in static.shown_outputs(0)["class"]


def test_a_coarse_grid_is_announced_next_to_the_controls(static_build):
    position = widgets.IntSlider(value=20, min=0, max=99, description="position")
    html = live_view(lambda: print(position.value), [position], title="t", grid={position: [0, 20, 99]}).static_html
    (static,) = read_static_widgets(html)
    note = static.root.select_one(".qkv-static-note").get_text()
    assert "position snaps to 0, 20, 99 (3 of its 100 values)" in note and "JupyterLab" in note
    assert [f.text() for f in static.frames()] == ["0\n", "20\n", "99\n"]
    many = widgets.IntSlider(value=0, min=0, max=99, description="many")
    html = live_view(lambda: None, [many], title="t", grid={many: list(range(0, 100, 10))}).static_html
    note = read_static_widgets(html)[0].root.select_one(".qkv-static-note").get_text()
    assert "many snaps to 10 of its 100 values, from 0 to 90" in note


@pytest.mark.parametrize("name", ["norms.axes_picture", "multihead.head_maps"])  # a dropdown, toggle buttons
def test_the_page_first_shows_the_default_frame(name, static_build):
    view = BUILDERS[IDS.index(name)]()
    (static,) = read_static_widgets(view.static_html)
    default = {c.description: c.default for c in static.controls}
    (frame,) = [f for f in static.frames() if all(default[d] == i for d, (i, _) in f.settings.items())]
    shown = static.shown_outputs(0).find("img")
    assert shown["alt"] == frame.alts()[0]
    assert shown["src"] == static.payload["images"][frame.outputs[0][1]]
    assert Image.open(io.BytesIO(base64.b64decode(shown["src"].split(",", 1)[1]))).format == "PNG"


def test_kv_calculator_static_view_has_every_control_and_the_default_table(static_build):
    view = mqa_gqa.kv_cache_calculator()
    (static,) = read_static_widgets(view.static_html)
    assert static.kind == "kv-cache"
    fields = {el["data-qkv-field"]: el for el in static.root.select("[data-qkv-field]")}
    assert list(fields) == ["layers", "heads", "kv", "d_head", "dtype", "context", "batch"]
    live = {c.description: c for c in _controls(view)}
    assert [o.get_text() for o in fields["heads"].find_all("option")] == [str(v) for v in live["query heads"].options]
    assert [o.get_text() for o in fields["dtype"].find_all("option")] == list(mqa_gqa.DTYPE_BYTES)
    assert (fields["layers"]["min"], fields["layers"]["max"], fields["batch"]["max"]) == ("1", "512", "4096")
    table = static.root.find("pre").get_text()
    per_token = {name: 2 * 80 * kv * 128 * 2 for name, kv in (("MHA", 64), ("GQA-8", 8), ("MQA", 1))}
    for n in per_token.values():
        assert f"{n:,}" in table and f"{n * 4096 / 2**30:.3f} GiB" in table
    assert static.payload["dtype_bytes"] == mqa_gqa.DTYPE_BYTES


def test_tokenizer_static_view_carries_the_merges_it_was_given(static_build):
    merges = gpt2_merges()
    (static,) = read_static_widgets(gpt2_playground().static_html)
    assert static.kind == "bpe" and static.payload["specials"] == [ENDOFTEXT]
    flat = np.frombuffer(base64.b64decode(static.payload["merges"]), dtype="<u2")
    assert static.payload["merges_dtype"] == "u16" and len(flat) == 2 * len(merges)
    assert [tuple(p) for p in flat.reshape(-1, 2).tolist()] == merges
    assert static.root.find("input")["value"] == "Tokenizers split unbelievably long words into pieces: 1234567!"
    ids = tokenization.encode("Tokenizers split unbelievably long words into pieces: 1234567!", merges, [ENDOFTEXT])
    assert str(ids) in static.root.find("pre").get_text()  # the view without JavaScript: the default, rendered
