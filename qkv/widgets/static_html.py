"""The HTML of a widget in the static book: plain HTML controls, the default view, the data.

The markup is read by ``book/_ext/static_widgets/qkv-static-widgets.js`` (added by the book's
Sphinx extension to pages that contain ``.qkv-static-widget``). It needs no server and no
other file: everything a widget shows is inline, so the page works from ``file://``.

Layout of one widget::

    <div class="qkv-static-widget" data-qkv-widget="frames" role="group" aria-label=TITLE>
      <div class="qkv-controls"> one control per live control, data-qkv-control=i </div>
      <p class="qkv-static-note"> (only for coarser grids) </p>
      <div class="qkv-frame" aria-live="polite">
        <div class="qkv-part" data-qkv-part=k> part k's default frame </div> ...
      </div>
      <script type="application/json" class="qkv-data"> {"shape", "images", "parts"} </script>
    </div>

``shape[i]`` is the number of grid values of control ``i``. Each part is ``{"controls": [i, ...],
"frames": [...]}``: frame ``k`` is the grid point whose indices of the part's controls, read in
row-major order (last control fastest), give ``k``. An output is ``["img", image index, alt]``,
``["text", str]`` or ``["html", str]``; images are stored once and shared by frames.
"""

from __future__ import annotations

import base64
import html
import itertools
import json
from collections.abc import Sequence

from qkv.widgets.static_controls import CHECKBOX, RADIO, RANGE, SELECT, ControlGrid
from qkv.widgets.static_frames import Part, grid_points

_ids = itertools.count()
SPELLED_OUT = 8  # a coarse grid of at most this many values is listed in full next to its control


def new_id(prefix: str = "qkv-sw") -> str:
    """An id unique on the page (deterministic: widgets are numbered in execution order)."""
    return f"{prefix}-{next(_ids)}"


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def json_script(payload: object, css_class: str = "qkv-data") -> str:
    """``payload`` in a JSON script tag; ``</`` is escaped so no string can close the tag."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    return f'<script type="application/json" class="{css_class}">{text}</script>'


def control_html(grid: ControlGrid, index: int, uid: str) -> str:
    """A native HTML control for ``grid`` (keyboard operable as is), marked ``data-qkv-control``."""
    cid = f"{uid}-c{index}"
    label = esc(grid.description)
    selected = grid.default
    if grid.kind == SELECT:
        options = "".join(f'<option value="{i}"{" selected" if i == selected else ""}>{esc(text)}</option>'
                          for i, text in enumerate(grid.labels))
        return (f'<div class="qkv-control"><label for="{cid}">{label}</label>'
                f'<select id="{cid}" data-qkv-control="{index}">{options}</select></div>')
    if grid.kind == RANGE:
        labels = esc(json.dumps(grid.labels, ensure_ascii=False))
        text = esc(grid.labels[selected])
        return (f'<div class="qkv-control"><label for="{cid}">{label}</label>'
                f'<input type="range" id="{cid}" data-qkv-control="{index}" min="0" max="{len(grid.values) - 1}" '
                f'step="1" value="{selected}" aria-valuetext="{text}" data-qkv-labels="{labels}">'
                f'<output for="{cid}">{text}</output></div>')
    if grid.kind == RADIO:
        buttons = "".join(
            f'<label class="qkv-radio"><input type="radio" name="{cid}" value="{i}"'
            f'{" checked" if i == selected else ""}><span>{esc(text)}</span></label>'
            for i, text in enumerate(grid.labels))
        return (f'<fieldset class="qkv-control qkv-radios" data-qkv-control="{index}">'
                f'<legend>{label}</legend>{buttons}</fieldset>')
    if grid.kind == CHECKBOX:
        return (f'<div class="qkv-control"><input type="checkbox" id="{cid}" data-qkv-control="{index}"'
                f'{" checked" if grid.values[selected] else ""}><label for="{cid}">{label}</label></div>')
    raise ValueError(f"unknown control kind {grid.kind!r}")


def coarse_note(grids: Sequence[ControlGrid]) -> str:
    """A sentence naming the controls whose static grid is coarser than the live one, or ''."""
    coarse = [g for g in grids if g.coarse]
    if not coarse:
        return ""
    parts = [f"{esc(g.description)} snaps to {', '.join(esc(v) for v in g.labels)} ({len(g.values)} of its "
             f"{g.total} values)" if len(g.values) <= SPELLED_OUT else
             f"{esc(g.description)} snaps to {len(g.values)} of its {g.total} values, from {esc(g.labels[0])} to "
             f"{esc(g.labels[-1])}" for g in coarse]
    return (f'<p class="qkv-static-note">In the static book {"; ".join(parts)}. '
            "Every value works when the page runs in JupyterLab.</p>")


def alt_text(title: str, grids: Sequence[ControlGrid], point: Sequence[int], figure_titles: str) -> str:
    settings = ", ".join(f"{g.description} = {g.labels[i]}" for g, i in zip(grids, point))
    alt = f"{title} ({settings})" if settings else title
    return f"{alt}. {figure_titles}" if figure_titles else alt


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def output_html(kind: str, data: str, alt: str = "") -> str:
    """One output as the page shows it (the script builds the same markup for the other frames)."""
    if kind == "img":
        return f'<img class="qkv-frame-image" src="{data}" alt="{esc(alt)}">'
    if kind == "text":
        return f'<pre class="qkv-frame-text">{esc(data)}</pre>'
    return f'<div class="qkv-frame-html">{data}</div>'


def recorded_view_html(render, alt: str) -> str:
    """What ``render`` shows now, as page markup; images get ``alt`` and their titles as alt text.

    Widgets that compute in the page show this until their script runs (and without JavaScript).
    """
    from qkv.widgets.static_frames import record

    return "".join(output_html("img", png_data_uri(o.data), f"{alt}. {o.alt}") if o.kind == "image"
                   else output_html(o.kind, o.data) for o in record(render))


def frames_view_html(title: str, grids: Sequence[ControlGrid], parts: Sequence[tuple[Part, list[int], list]]) -> str:
    """The static widget: controls, the default view, and every frame of every part as inline data.

    ``parts`` holds, per part, the :class:`~qkv.widgets.static_frames.Part`, the indices of its
    controls among ``grids`` and its frames (one per grid point of those controls).
    """
    uid = new_id()
    images: list[str] = []
    image_index: dict[bytes, int] = {}
    encoded_parts, shown = [], []
    for k, (part, controls, frames) in enumerate(parts):
        sub = [grids[i] for i in controls]
        encoded = []
        for point, outputs in zip(grid_points(sub), frames):
            frame = []
            for out in outputs:
                if out.kind == "image":
                    if out.data not in image_index:
                        image_index[out.data] = len(images)
                        images.append(png_data_uri(out.data))
                    frame.append(["img", image_index[out.data], alt_text(title, sub, point, out.alt)])
                else:
                    frame.append([out.kind, out.data])
            encoded.append(frame)
        default = grid_points(sub).index(tuple(g.default for g in sub))
        inner = "".join(output_html(kind, images[rest[0]] if kind == "img" else rest[0], *rest[1:])
                        for kind, *rest in encoded[default])
        wide = " qkv-wide" if part.wide or len(parts) == 1 else ""
        shown.append(f'<div class="qkv-part{wide}" data-qkv-part="{k}">{inner}</div>')
        encoded_parts.append({"controls": controls, "frames": encoded})
    controls_html = "".join(control_html(g, i, uid) for i, g in enumerate(grids))
    payload = {"shape": [len(g.values) for g in grids], "images": images, "parts": encoded_parts}
    return (f'<div class="qkv-static-widget" id="{uid}" data-qkv-widget="frames" role="group" '
            f'aria-label="{esc(title)}"><div class="qkv-controls">{controls_html}</div>{coarse_note(grids)}'
            f'<div class="qkv-frame" aria-live="polite">{"".join(shown)}</div>{json_script(payload)}</div>')
