"""autograder.feedback.FeedbackExporter renders what nbconvert's HTMLExporter renders.

The exporter skips nbconvert's BeautifulSoup pass on pages it would not change (for speed); the
oracle is nbconvert's own ``HTMLExporter.from_notebook_node`` with the same configuration
(nbgrader's feedback template), on pages with and without what that pass rewrites.
"""

from __future__ import annotations

import os

import nbformat
import nbgrader.converters.generate_feedback as generate_feedback
import pytest
from bs4 import BeautifulSoup
from nbconvert.exporters import HTMLExporter
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output
from traitlets.config import Config

from autograder.feedback import FeedbackExporter

# A 1x1 transparent PNG.
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="


def _config() -> Config:
    """The exporter configuration nbgrader's GenerateFeedback sets (its __init__)."""
    here = os.path.dirname(generate_feedback.__file__)
    c = Config()
    c.HTMLExporter.template_name = "feedback"
    c.HTMLExporter.extra_template_basedirs = [
        os.path.abspath(os.path.join(here, "..", "server_extensions", "formgrader", "templates"))]
    c.HTMLExporter.extra_template_paths = [os.path.abspath(os.path.join(
        here, "..", "server_extensions", "formgrader", "static", "node_modules", "bootstrap", "dist", "css"))]
    return c


class _Stock(FeedbackExporter):
    """The same exporter with nbconvert's own rendering (its BeautifulSoup pass always on)."""

    def _render(self, nb, resources=None, **kw):
        return HTMLExporter.from_notebook_node(self, nb, resources, **kw)


def _notebooks() -> dict[str, nbformat.NotebookNode]:
    plain = new_notebook(cells=[
        new_markdown_cell("# Softmax\nWrite $\\mathrm{softmax}(x)_i$ **stably**."),
        new_code_cell("def softmax(x, dim=-1):\n    return x.exp() / x.exp().sum(dim, keepdim=True)",
                      outputs=[new_output("stream", name="stdout", text="ok\n")]),
        new_code_cell("assert softmax(x).sum() == 1", metadata={"nbgrader": {
            "grade": True, "solution": False, "grade_id": "test_softmax", "points": 3, "score": 3.0,
            "schema_version": 3, "locked": True}}),
    ])
    markdown_image = new_notebook(cells=[new_markdown_cell(f"see ![](data:image/png;base64,{PIXEL})")])
    output_image = new_notebook(cells=[new_code_cell("plot()", outputs=[
        new_output("display_data", data={"image/png": PIXEL, "text/plain": "<Figure>"})])])
    for nb in (plain, markdown_image, output_image):
        nb.metadata["language_info"] = {"name": "python", "pygments_lexer": "ipython3"}
    return {"plain": plain, "markdown image": markdown_image, "output image": output_image}


def _resources() -> dict:
    """What nbgrader's GetGrades preprocessor hands the feedback template."""
    return {"nbgrader": {"score": 3.0, "max_score": 11.0, "late_penalty": 0.0, "notebook": "attention"}}


def _normal(text: str) -> str:
    return str(BeautifulSoup(text, features="html.parser"))


@pytest.mark.parametrize("name", list(_notebooks()))
def test_pages_equal_nbconverts_own_rendering(name):
    nb = _notebooks()[name]
    ours, _ = FeedbackExporter(config=_config()).from_notebook_node(nb, _resources())
    stock, _ = _Stock(config=_config()).from_notebook_node(nb, _resources())
    assert _normal(ours) == _normal(stock)
    assert ("<img" in ours) == (name != "plain")  # the image cases take the path that parses the page
