"""Widgets for the MQA/GQA chapter: a KV-cache calculator."""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np

from qkv.kv_cache import DTYPE_BYTES, kv_cache_bytes
from qkv.widgets.live import live_view

GIB = 2**30


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def kv_cache_table(n_layers: int, n_heads: int, n_kv_heads: int, d_head: int, bytes_per_element: float,
                   context: int, batch: int) -> list[tuple[str, int, int, int]]:
    """Rows (name, KV heads, bytes per token, total bytes at context × batch) for MHA, the chosen setting and MQA."""
    rows = []
    for name, kv in (("MHA", n_heads),
                     (f"GQA-{n_kv_heads}" if 1 < n_kv_heads < n_heads else "your setting", n_kv_heads),
                     ("MQA", 1)):
        rows.append((name, kv, kv_cache_bytes(n_layers, kv, d_head, 1, 1, bytes_per_element),
                     kv_cache_bytes(n_layers, kv, d_head, context, batch, bytes_per_element)))
    return rows


def kv_cache_calculator(n_layers: int = 80, n_heads: int = 64, n_kv_heads: int = 8, d_head: int = 128,
                        dtype: str = "float16", context: int = 4096, batch: int = 1) -> widgets.Widget:
    """KV-cache size for a model geometry: a table (per token, total) and cache size vs context length.

    Defaults: a 70B-class model (80 layers, 64 query heads of 128, GQA with 8 KV heads,
    float16) at 4,096 tokens, batch 1. The number of query heads only sets the MHA
    baseline: the cache depends on KV heads alone.
    """
    style = {"description_width": "90px"}
    layers_w = widgets.BoundedIntText(value=n_layers, min=1, max=512, description="layers", style=style)
    heads_w = widgets.Dropdown(options=[1, 2, 4, 8, 12, 16, 24, 32, 40, 48, 64, 96, 128], value=n_heads,
                               description="query heads", style=style)
    kv_w = widgets.Dropdown(options=_divisors(n_heads), value=n_kv_heads, description="KV heads", style=style)
    dhead_w = widgets.Dropdown(options=[32, 64, 80, 96, 128, 256], value=d_head, description="d_head", style=style)
    dtype_w = widgets.Dropdown(options=list(DTYPE_BYTES), value=dtype, description="cache dtype", style=style)
    context_w = widgets.Dropdown(options=[2**i for i in range(8, 21)], value=context, description="context",
                                 style=style)
    batch_w = widgets.BoundedIntText(value=batch, min=1, max=4096, description="batch", style=style)
    def draw():
        kv = kv_w.value
        bpe = DTYPE_BYTES[dtype_w.value]
        rows = kv_cache_table(layers_w.value, heads_w.value, kv, dhead_w.value, bpe, context_w.value, batch_w.value)
        contexts = np.array([2**i for i in range(8, 21)])
        total_header = f"{context_w.value:,} tok × {batch_w.value}"
        print(f"{'':<13}{'KV heads':>9}{'bytes/token':>13}{total_header:>20}")
        for name, h_kv, per_token, total in rows:
            print(f"{name:<13}{h_kv:>9}{per_token:>13,}{total / GIB:>16.3f} GiB")
        fig, ax = plt.subplots(figsize=(7, 3.2))
        for (name, h_kv, _, _), style_ in zip(rows, ["-", "-o", "--"]):
            sizes = [kv_cache_bytes(layers_w.value, h_kv, dhead_w.value, int(c), batch_w.value, bpe) / GIB
                     for c in contexts]
            ax.loglog(contexts, sizes, style_, label=f"{name} ({h_kv} KV heads)", base=2, markersize=3)
        ax.axvline(context_w.value, color="gray", lw=0.8)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("KV cache (GiB)")
        ax.set_title(f"{layers_w.value} layers, d_head {dhead_w.value}, {dtype_w.value}, batch {batch_w.value}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        plt.show()

    def heads_changed(change):
        # KV heads must divide the query heads; registered before live_view's redraw, so it runs first.
        options = _divisors(heads_w.value)
        keep = kv_w.value if kv_w.value in options else options[-1]
        kv_w.options = options  # (holding notifications here fails validation when 8 no longer divides)
        kv_w.value = keep

    heads_w.observe(heads_changed, names="value")
    controls = widgets.HBox([widgets.VBox([layers_w, heads_w, kv_w, dhead_w]),
                             widgets.VBox([dtype_w, context_w, batch_w])])

    def static() -> str:
        # Two free integer boxes and five dropdowns: far too many settings to pre-render, and the
        # output is a formula, so the static book recomputes it in the page (qkv-kv-cache.js).
        return calculator_static_html(draw, layers_w, heads_w, kv_w, dhead_w, dtype_w, context_w, batch_w)

    return live_view(draw, [layers_w, heads_w, kv_w, dhead_w, dtype_w, context_w, batch_w], header=[controls],
                     title="KV-cache calculator", static=static)


def calculator_static_html(draw, layers_w, heads_w, kv_w, dhead_w, dtype_w, context_w, batch_w) -> str:
    """The calculator for the static book: its controls as HTML, recomputed in the page.

    The script (``book/_ext/static_widgets/qkv-kv-cache.js``) prints the same table as ``draw``
    and draws the same curves as an SVG chart; the default figure rendered here is the view
    without JavaScript.
    """
    from qkv.widgets.static_html import esc, json_script, new_id, recorded_view_html

    uid = new_id("qkv-kv")

    def number(name, w):
        return (f'<div class="qkv-control"><label for="{uid}-{name}">{esc(w.description)}</label>'
                f'<input type="number" id="{uid}-{name}" data-qkv-field="{name}" min="{w.min}" max="{w.max}" '
                f'step="1" value="{w.value}"></div>')

    def select(name, w):
        options = "".join(f'<option value="{esc(v)}"{" selected" if v == w.value else ""}>{esc(label)}</option>'
                          for label, v in zip(w._options_labels, w._options_values))
        return (f'<div class="qkv-control"><label for="{uid}-{name}">{esc(w.description)}</label>'
                f'<select id="{uid}-{name}" data-qkv-field="{name}">{options}</select></div>')

    controls = "".join([number("layers", layers_w), select("heads", heads_w), select("kv", kv_w),
                        select("d_head", dhead_w), select("dtype", dtype_w), select("context", context_w),
                        number("batch", batch_w)])
    fallback = recorded_view_html(draw, "KV-cache calculator, default setting")
    config = {"dtype_bytes": DTYPE_BYTES, "contexts": [2**i for i in range(8, 21)], "gib": GIB}
    return (f'<div class="qkv-static-widget" id="{uid}" data-qkv-widget="kv-cache" role="group" '
            f'aria-label="KV-cache calculator"><div class="qkv-controls">{controls}</div>'
            f'<div class="qkv-frame" aria-live="polite">{fallback}</div>{json_script(config)}</div>')
