"""The wiring every book widget shares: controls above an output that one function redraws.

``render`` is called once at build time, so the static book embeds the default view, and
again whenever a control's value changes (which needs a live kernel).
"""

from __future__ import annotations

from typing import Callable, Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt


def live_view(render: Callable[[], None], controls: Sequence[widgets.Widget],
              header: Sequence[widgets.Widget] | None = None) -> widgets.VBox:
    """A VBox of ``header`` (default: ``controls``, side by side) above an Output redrawn by ``render``.

    ``render`` draws into the current output (``plt.show()``, ``display``, ``print``); the
    previous drawing is cleared first.
    """
    out = widgets.Output()

    def redraw(_change=None) -> None:
        before = set(plt.get_fignums())
        with out:
            out.clear_output(wait=True)
            render()
        # The inline backend closes a figure once shown, other backends keep it: close ours.
        for number in set(plt.get_fignums()) - before:
            plt.close(number)

    for control in controls:
        control.observe(redraw, names="value")
    redraw()
    if header is None:
        header = [controls[0] if len(controls) == 1 else widgets.HBox(list(controls))]
    return widgets.VBox([*header, out])
