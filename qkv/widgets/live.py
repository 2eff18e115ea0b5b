"""The wiring every book widget shares: controls above an output that one function redraws.

``render`` is called once when the widget is built, so a notebook shows the default view at
once, and again whenever a control's value changes (which needs a live kernel).

The static book has no kernel. When the book is being built (the Sphinx extension
``book/_ext/static_widgets.py`` sets :data:`STATIC_BUILD_ENV` for the kernels it starts), the
widget also carries a ``text/html`` rendering that works without one: every frame of its
control grid rendered once, plain HTML controls, and a small script from the repository that
shows the frame matching the controls (:mod:`qkv.widgets.static_frames`). Widgets whose
inputs cannot be enumerated (free text, free numbers) supply their own static rendering
instead. In JupyterLab nothing of this runs: the same call returns the same live widget.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import ipywidgets as widgets
import matplotlib.pyplot as plt

if TYPE_CHECKING:
    from qkv.widgets.static_frames import Part

# Set to "1" by the book's Sphinx extension for the kernels that execute the pages.
STATIC_BUILD_ENV = "QKV_STATIC_WIDGETS"


def building_static_book() -> bool:
    """True inside a kernel started by the book build (HTML builder), False in JupyterLab."""
    return os.environ.get(STATIC_BUILD_ENV) == "1"


class LiveView(widgets.VBox):
    """A VBox whose display also offers ``text/html`` (the static rendering) when one was built.

    Front ends with a widget manager (JupyterLab, Voilà) show the live widget; the book's HTML
    build prefers ``text/html`` (``nb_mime_priority_overrides`` in ``book/_config.yml``).
    """

    def __init__(self, children: Sequence[widgets.Widget], static_html: str | None = None, **kwargs):
        super().__init__(list(children), **kwargs)
        self.static_html = static_html  # a plain attribute, not a trait: never synced to a front end

    def _repr_mimebundle_(self, **kwargs):
        bundle = super()._repr_mimebundle_(**kwargs)
        if self.static_html is not None and bundle is not None:
            bundle["text/html"] = self.static_html
        return bundle


def live_view(render: Callable[[], None], controls: Sequence[widgets.Widget],
              header: Sequence[widgets.Widget] | None = None, *, title: str = "widget",
              grid: Mapping[widgets.Widget, Sequence] | None = None,
              parts: Sequence[Part] | None = None,
              static: Callable[[], str] | None = None) -> LiveView:
    """A VBox of ``header`` (default: ``controls``, side by side) above an Output redrawn by ``render``.

    ``render`` draws into the current output (``plt.show()``, ``display``, ``print``); the
    previous drawing is cleared first.

    For the static book (only while the book is built, see :func:`building_static_book`):

    * ``title`` names what the widget shows; it starts every frame's alt text.
    * ``grid`` maps a control to the values the static book renders for it, for controls whose
      full range would make too many frames; the static control then snaps to those values and
      says so. Every other control contributes all its values (options, slider steps).
    * ``parts`` (:class:`qkv.widgets.static_frames.Part`) splits the static view into pieces
      that each depend on some controls only, such as one panel per sequence: far fewer frames
      than the product of all the controls. Default: one part, ``render`` over all controls.
    * ``static``, if given, returns the whole static HTML instead of rendered frames (for
      inputs that cannot be enumerated, such as free text).

    Raises:
        ValueError: when building the book, for a grid value the control cannot take, a grid
            that misses the control's current (default) value, or more frames than
            :data:`qkv.widgets.static_frames.MAX_FRAMES` (then pass a coarser ``grid``).
        TypeError: when building the book, for a control whose values cannot be enumerated
            (free text, free numbers) in a widget without a custom ``static`` rendering.
    """
    out = widgets.Output()
    quiet = False  # True while the static frames are rendered: the live output keeps its view

    def redraw(_change=None) -> None:
        if quiet:
            return
        before = set(plt.get_fignums())
        with out:
            out.clear_output(wait=True)
            render()
        # The inline backend closes a figure once shown, other backends keep it: close ours.
        for number in set(plt.get_fignums()) - before:
            plt.close(number)

    for control in controls:
        control.observe(redraw, names="value")

    static_html = None
    if building_static_book():
        if static is not None:
            static_html = static()
        else:
            from qkv.widgets.static_frames import Part, render_static_view

            quiet = True
            try:
                static_html = render_static_view(controls, parts or [Part(render, controls, wide=True)],
                                                 title=title, grid=grid or {})
            finally:
                quiet = False
    redraw()
    if header is None:
        header = [controls[0] if len(controls) == 1 else widgets.HBox(list(controls))]
    return LiveView([*header, out], static_html=static_html)
