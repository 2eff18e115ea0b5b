"""Every book widget draws its default view at once and redraws when a control moves."""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib
import pytest

matplotlib.use("Agg")

from qkv.widgets import attention, bert, masking, mqa_gqa, multihead, norms, scaling, transformer  # noqa: E402
from qkv.widgets.live import live_view  # noqa: E402

BUILDERS = [attention.query_heatmap, attention.softmax_temperature, bert.masking_playground,
            masking.padded_batch_masks, mqa_gqa.kv_cache_calculator, multihead.head_maps, multihead.cost_table,
            norms.axes_picture, scaling.dk_explorer, transformer.pe_heatmap, transformer.lr_schedule]


def _controls(widget):
    found = []
    for child in getattr(widget, "children", ()):
        if isinstance(child, widgets.ValueWidget):
            found.append(child)
        found += _controls(child)
    return found


def test_live_view_draws_now_and_on_every_change():
    calls = []
    slider = widgets.IntSlider(value=1)
    view = live_view(lambda: calls.append(slider.value), [slider])
    assert calls == [1] and view.children[0] is slider and isinstance(view.children[1], widgets.Output)
    slider.value = 3
    assert calls == [1, 3]


@pytest.mark.parametrize("build", BUILDERS, ids=lambda b: f"{b.__module__.rsplit('.', 1)[1]}.{b.__name__}")
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
    else:
        control.value = control.max if control.value != control.max else control.min
    assert len(drawn) >= 2


def test_kv_calculator_accepts_query_heads_that_the_kv_heads_do_not_divide():
    view = mqa_gqa.kv_cache_calculator(n_heads=64, n_kv_heads=8)
    heads, kv = [c for c in _controls(view) if c.description in ("query heads", "KV heads")]
    heads.value = 12  # 8 KV heads cannot serve 12 query heads
    assert kv.value in kv.options and 12 % kv.value == 0
