"""Render a widget's every frame for the static book: one output list per point of its control grid.

A *frame* is what ``render`` shows for one setting of the controls: its figures (as small
palette PNGs), printed text and displayed HTML, in the order they were produced. Frames are
rendered once, while the book's kernel executes the page, and travel in the page inside the
widget's ``text/html`` output (see :mod:`qkv.widgets.static_html`), so they are kept by the
book's execution cache like any other output.
"""

from __future__ import annotations

import base64
import contextlib
import io
import itertools
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import ipywidgets as widgets
import matplotlib.pyplot as plt
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image, ImageChops

from qkv.widgets.static_controls import ControlGrid, control_grid

# The inline backend's resolution (matplotlib's default figure.dpi), so frames look like the live view.
DPI = 100
PAD_PX = 10  # the inline backend's bbox_inches="tight" pads by 0.1 inch
# Frames of one widget beyond this make pages too heavy and builds too slow: pass a coarser grid.
MAX_FRAMES = 400


@dataclass
class Output:
    """One output of a frame: ``kind`` is "image" (``data`` is PNG bytes), "text" or "html"."""

    kind: str
    data: bytes | str
    alt: str = ""  # for an image: the text of its titles, to complete its alt text


@dataclass
class _Recorder:
    """Collects what ``render`` prints, displays and shows, in order (see :func:`record`)."""

    outputs: list[Output] = field(default_factory=list)

    def write(self, text: str) -> int:
        if text:
            if self.outputs and self.outputs[-1].kind == "text":
                self.outputs[-1].data += text
            else:
                self.outputs.append(Output("text", text))
        return len(text)

    def flush(self) -> None:
        pass

    def add_bundle(self, data: Mapping[str, object]) -> None:
        if "text/html" in data:
            self.outputs.append(Output("html", str(data["text/html"])))
        elif "image/png" in data:
            png = data["image/png"]
            self.outputs.append(Output("image", base64.b64decode(png) if isinstance(png, str) else png))
        elif "text/plain" in data:
            self.write(str(data["text/plain"]) + "\n")


def _figure_titles(fig) -> str:
    titles = [fig._suptitle.get_text()] if fig._suptitle is not None else []
    for ax in fig.axes:
        titles += [ax.get_title(loc) for loc in ("left", "center", "right")]
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes)]
    titles += ["legend: " + ", ".join(t.get_text() for t in legend.get_texts()) for legend in legends if legend]
    return "; ".join(" ".join(t.split()) for t in titles if t.strip())


def figure_png(fig) -> bytes:
    """The figure as a PNG cropped to its ink (like ``bbox_inches="tight"``), 256-colour palette.

    Plots have few colours, so an 8-bit palette (no dithering) keeps them sharp at about a
    third of the RGB size: frames are many, and every one travels inside the page.
    """
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    fig.set_dpi(DPI)
    canvas.draw()
    width, height = canvas.get_width_height(physical=True)
    image = Image.frombuffer("RGBA", (width, height), canvas.buffer_rgba(), "raw", "RGBA", 0, 1).convert("RGB")
    background = Image.new("RGB", image.size, image.getpixel((0, 0)))
    box = ImageChops.difference(image, background).getbbox()
    if box is not None:
        left, top, right, bottom = box
        image = image.crop((max(left - PAD_PX, 0), max(top - PAD_PX, 0),
                            min(right + PAD_PX, width), min(bottom + PAD_PX, height)))
    # Maximum coverage keeps flat colours apart (#f2f2f2 cells on white); the fast octree merges them.
    palette = image.quantize(256, method=Image.Quantize.MAXCOVERAGE, dither=Image.Dither.NONE)
    buffer = io.BytesIO()
    palette.save(buffer, format="png")
    return buffer.getvalue()


def record(render: Callable[[], None]) -> list[Output]:
    """Run ``render`` and return its outputs in order: printed text, ``display`` calls, figures.

    ``plt.show()`` (and any figure still open when ``render`` returns) becomes a PNG output and
    the figure is closed. ``display(...)`` is captured through the IPython shell.

    Raises:
        RuntimeError: outside an IPython shell (a kernel), where ``display`` would print a repr
            such as ``<IPython.core.display.HTML object>`` that would be recorded as the frame.
    """
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell

    if not InteractiveShell.initialized():
        raise RuntimeError("static widget frames are rendered inside an IPython kernel (the book build's); "
                           "no IPython shell is running here: run the page in a kernel, or create one with "
                           "IPython.core.interactiveshell.InteractiveShell.instance()")
    recorder = _Recorder()
    before = set(plt.get_fignums())

    def show_new_figures(*_args, **_kwargs) -> None:
        for number in sorted(set(plt.get_fignums()) - before):
            fig = plt.figure(number)
            recorder.outputs.append(Output("image", figure_png(fig), _figure_titles(fig)))
            plt.close(fig)

    class Publisher(DisplayPublisher):
        def publish(self, data, metadata=None, *args, **kwargs):
            recorder.add_bundle(data)

        def clear_output(self, wait=False):
            recorder.outputs.clear()

    shell = InteractiveShell.instance()
    saved_show, saved_stdout, saved_publisher = plt.show, sys.stdout, shell.display_pub
    plt.show = show_new_figures
    sys.stdout = recorder
    shell.display_pub = Publisher(shell=shell)
    try:
        render()
        show_new_figures()
    finally:
        plt.show, sys.stdout, shell.display_pub = saved_show, saved_stdout, saved_publisher
        for number in set(plt.get_fignums()) - before:
            plt.close(number)
    return recorder.outputs


@dataclass
class Part:
    """A piece of a widget's static view that depends on some of its controls only.

    Most widgets are one part (``render`` and all controls). A view made of independent
    panels (one per sequence of a batch, say) renders each panel for its own controls, which
    multiplies far fewer frames; ``wide`` parts take a whole row, the others sit side by side.
    """

    render: Callable[[], None]
    controls: Sequence[widgets.ValueWidget]
    wide: bool = False


def grid_points(grids: Sequence[ControlGrid]) -> list[tuple[int, ...]]:
    """Every grid point as a tuple of value indices, in row-major order (last control fastest)."""
    return list(itertools.product(*(range(len(g.values)) for g in grids)))


def render_frames(render: Callable[[], None], grids: Sequence[ControlGrid]) -> list[list[Output]]:
    """Every frame, one per point of :func:`grid_points`.

    The controls are set to each grid point in turn (their observers run, e.g. one control
    updating another's options) and put back to their default values at the end.
    """
    frames = []
    try:
        for point in grid_points(grids):
            for grid, index in zip(grids, point):
                if grid.control.value != grid.values[index]:
                    grid.set(index)
            frames.append(record(render))
    finally:
        for grid in grids:
            grid.set(grid.default)
    return frames


def render_static_view(controls: Sequence[widgets.ValueWidget], parts: Sequence[Part], *, title: str,
                       grid: Mapping[widgets.Widget, Sequence]) -> str:
    """The static HTML of a widget: its controls and every frame of every part.

    ``grid`` gives a coarser list of values for some controls (see :func:`control_grid`).

    Raises:
        ValueError: for a grid or part naming a control the widget does not have, or more than
            :data:`MAX_FRAMES` frames in all (then pass a coarser grid).
    """
    from qkv.widgets.static_html import frames_view_html

    position = {id(c): i for i, c in enumerate(controls)}
    strangers = [c for c in list(grid) + [c for p in parts for c in p.controls] if id(c) not in position]
    if strangers:
        raise ValueError(f"{len(strangers)} control(s) in grid or parts are not among the widget's controls")
    grids = [control_grid(c, grid.get(c)) for c in controls]
    part_controls = [[position[id(c)] for c in part.controls] for part in parts]
    count = sum(len(grid_points([grids[i] for i in idx])) for idx in part_controls)
    if count > MAX_FRAMES:
        sizes = ", ".join(f"{g.description} {len(g.values)}" for g in grids)
        raise ValueError(f"{count} frames ({sizes} values) exceed the static book's limit of {MAX_FRAMES}: "
                         "give live_view a coarser grid for the largest controls")
    # Each value set on a control would send the front end a state message; hundreds of them in
    # one cell can overrun the kernel's output channel (ZeroMQ drops what exceeds its queue, and
    # a build once waited on a lost message). The front end needs the final state only.
    with contextlib.ExitStack() as held:
        for control in controls:
            held.enter_context(control.hold_sync())
        frames = [render_frames(part.render, [grids[i] for i in idx]) for part, idx in zip(parts, part_controls)]
    return frames_view_html(title, grids, list(zip(parts, part_controls, frames)))
