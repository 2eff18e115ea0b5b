"""Test helpers: read a static widget's markup (controls, frames) as a reader's browser would.

The reading is independent of ``qkv.widgets.static_html``: it goes by the documented markup
(``data-qkv-control``, the JSON payload) with BeautifulSoup, never through the writer's code.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

from bs4 import BeautifulSoup, Tag


@dataclass
class StaticControl:
    description: str
    kind: str  # select | range | radio | checkbox
    labels: list[str]
    default: int


@dataclass
class StaticFrame:
    part: int
    settings: dict[str, tuple[int, str]]  # control description -> (grid index, label)
    outputs: list[list]  # ["img", image index, alt] | ["text", str] | ["html", str]

    def alts(self) -> list[str]:
        return [o[2] for o in self.outputs if o[0] == "img"]

    def text(self) -> str:
        return "\n".join(o[1] for o in self.outputs if o[0] in ("text", "html"))


def _label_for(root: Tag, control: Tag) -> str:
    label = root.find("label", attrs={"for": control.get("id")})
    return label.get_text(strip=True)


def read_control(root: Tag, control: Tag) -> StaticControl:
    if control.name == "select":
        options = control.find_all("option")
        default = next((i for i, o in enumerate(options) if o.has_attr("selected")), 0)
        return StaticControl(_label_for(root, control), "select", [o.get_text() for o in options], default)
    if control.name == "fieldset":
        radios = control.find_all("input", attrs={"type": "radio"})
        labels = [r.find_next_sibling("span").get_text() for r in radios]
        default = next(i for i, r in enumerate(radios) if r.has_attr("checked"))
        return StaticControl(control.legend.get_text(strip=True), "radio", labels, default)
    if control.get("type") == "range":
        labels = json.loads(control["data-qkv-labels"])
        assert int(control["max"]) == len(labels) - 1 and control["min"] == "0" and control["step"] == "1"
        return StaticControl(_label_for(root, control), "range", labels, int(control["value"]))
    if control.get("type") == "checkbox":
        return StaticControl(_label_for(root, control), "checkbox", ["off", "on"], int(control.has_attr("checked")))
    raise AssertionError(f"unknown static control {control}")


@dataclass
class StaticWidget:
    root: Tag
    kind: str
    controls: list[StaticControl]
    payload: dict

    def frames(self):
        """Every frame of every part, with the control settings it stands for."""
        for k, part in enumerate(self.payload.get("parts", [])):
            mine = [self.controls[i] for i in part["controls"]]
            points = list(itertools.product(*(range(len(c.labels)) for c in mine)))
            assert len(points) == len(part["frames"]), \
                f"part {k}: {len(part['frames'])} frames for {len(points)} points"
            for point, outputs in zip(points, part["frames"]):
                settings = {c.description: (i, c.labels[i]) for c, i in zip(mine, point)}
                yield StaticFrame(k, settings, outputs)

    def shown_outputs(self, part: int) -> Tag:
        return self.root.select_one(f'[data-qkv-part="{part}"]')


def read_static_widgets(html: str | Tag) -> list[StaticWidget]:
    soup = BeautifulSoup(html, "html.parser") if isinstance(html, str) else html
    widgets = []
    for root in soup.select(".qkv-static-widget"):
        payload = json.loads(root.find("script", class_="qkv-data").string)
        controls = sorted(root.select("[data-qkv-control]"), key=lambda c: int(c["data-qkv-control"]))
        widgets.append(StaticWidget(root, root["data-qkv-widget"], [read_control(root, c) for c in controls], payload))
    return widgets
