"""The values an ipywidgets control can take, as a finite grid the static book renders frames for.

A :class:`ControlGrid` is read from the live control itself: a Dropdown's options, a slider's
``min``/``max``/``step``, a Checkbox's two states. A coarser grid may be given per control (a
sequence of values); it must contain the control's current value, which is the view the page
shows first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import ipywidgets as widgets
from ipywidgets.widgets.widget_selection import _Selection

# How a control is drawn in the static HTML.
SELECT, RANGE, RADIO, CHECKBOX = "select", "range", "radio", "checkbox"
_SLIDERS = (widgets.IntSlider, widgets.FloatSlider, widgets.FloatLogSlider)


@dataclass
class ControlGrid:
    """One control's static grid: ``values[i]`` is shown as ``labels[i]``; ``default`` indexes
    the control's value when the grid was read. ``total`` counts the values the live control
    offers (its options or slider steps); fewer ``values`` mark a coarser static grid."""

    control: widgets.ValueWidget
    kind: str
    description: str
    values: list[Any]
    labels: list[str]
    default: int
    total: int

    @property
    def coarse(self) -> bool:
        return len(self.values) < self.total

    def set(self, index: int) -> None:
        """Give the live control the value of grid point ``index`` (its observers run)."""
        self.control.value = self.values[index]


def _description(control: widgets.ValueWidget) -> str:
    return (control.description or control.tooltip or type(control).__name__).strip()


def _format(value: float, fmt: str) -> str:
    # ipywidgets' readout formats are d3-format strings; the ones used here (".2f", ".3g", "d")
    # mean the same in Python's format mini-language.
    try:
        return format(value, fmt)
    except ValueError:
        return str(value)


def _index(values: Sequence[Any], value: Any, message: str = "") -> int:
    """Index of ``value`` in ``values`` (floats compare with a relative tolerance of 1e-9)."""
    for i, v in enumerate(values):
        if v == value and type(v) is type(value):
            return i
    for i, v in enumerate(values):
        if isinstance(v, float) and isinstance(value, (int, float)) and not isinstance(value, bool) \
                and math.isclose(v, value, rel_tol=1e-9, abs_tol=1e-12):
            return i
    for i, v in enumerate(values):
        if v == value:
            return i
    raise ValueError(message or f"{value!r} is not among {list(values)!r}")


def _slider_values(control) -> list[float]:
    """Every value the slider's steps reach, from min to max; a FloatLogSlider steps its exponent."""
    lo, hi, step = control.min, control.max, control.step
    if not step or step <= 0:
        raise ValueError(f"{type(control).__name__} {_description(control)!r} has step {step!r}: "
                         "give live_view a grid of values for it")
    n = int(math.floor((hi - lo) / step + 1e-9))
    if isinstance(control, widgets.IntSlider):
        return [lo + k * step for k in range(n + 1)]
    exponents = [round(lo + k * step, 10) for k in range(n + 1)]  # 0.15, not 0.15000000000000002
    if isinstance(control, widgets.FloatLogSlider):
        return [control.base ** e for e in exponents]
    return exponents


def _enumerate(control: widgets.ValueWidget) -> tuple[str, list[Any], Callable[[Any], str]]:
    """(kind, every value the live control offers, value -> label)."""
    if isinstance(control, _Selection):
        values, labels = list(control._options_values), list(control._options_labels)
        if isinstance(control, (widgets.ToggleButtons, widgets.RadioButtons)):
            kind = RADIO
        elif isinstance(control, widgets.SelectionSlider):
            kind = RANGE
        else:
            kind = SELECT
        return kind, values, lambda v: labels[_index(values, v)]
    if isinstance(control, _SLIDERS):
        return RANGE, _slider_values(control), lambda v: _format(v, control.readout_format)
    if isinstance(control, (widgets.Checkbox, widgets.ToggleButton)):
        return CHECKBOX, [False, True], lambda v: "on" if v else "off"
    raise TypeError(f"control {_description(control)!r} ({type(control).__name__}) has no finite set of values "
                    "for the static book: give live_view a custom static rendering for it")


def _checked(control: widgets.ValueWidget, offered: list[Any], value: Any) -> Any:
    """``value`` as the control holds it; ValueError if the control cannot take it."""
    name = _description(control)
    if isinstance(control, _SLIDERS):
        lo, hi = control.min, control.max
        if isinstance(control, widgets.FloatLogSlider):
            lo, hi = control.base ** lo, control.base ** hi
        if isinstance(control, widgets.IntSlider) and int(value) != value:
            raise ValueError(f"grid value {value!r} of {name!r} is not an integer")
        if not lo - 1e-12 <= value <= hi + 1e-12:
            raise ValueError(f"grid value {value!r} of {name!r} is outside the slider's range [{lo}, {hi}]")
        return value
    return offered[_index(offered, value, f"grid value {value!r} of {name!r} is not one of its values {offered!r}")]


def control_grid(control: widgets.ValueWidget, values: Sequence[Any] | None = None) -> ControlGrid:
    """The static grid of ``control``: every value it offers, or ``values`` (a coarser grid).

    Raises:
        TypeError: for a control whose values cannot be enumerated (Text, IntText, ...).
        ValueError: for a grid value the control cannot take, two grid values with one label,
            or a grid without the control's current value.
    """
    name = _description(control)
    kind, offered, label_of = _enumerate(control)
    grid = list(offered) if values is None else [_checked(control, offered, v) for v in values]
    labels = [label_of(v) for v in grid]
    if len(set(labels)) != len(labels):
        raise ValueError(f"control {name!r}: grid values share a label in {labels!r}; drop the duplicates")
    default = _index(grid, control.value, f"control {name!r}: its current value {control.value!r} is not on the "
                                          f"static grid {grid!r}; add it, since the page first shows that value")
    return ControlGrid(control, kind, name, grid, labels, default, len(offered))
