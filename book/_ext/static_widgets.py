"""Widgets that respond in the static book: the build side of ``qkv.widgets.live``.

* Before the pages execute, tells their kernels that the HTML book is being built
  (``QKV_STATIC_WIDGETS=1``), so each ``live_view`` widget also renders its static HTML:
  every frame of its control grid, plain HTML controls (``qkv.widgets.static_html``).
  JupyterLab never sets it, so a notebook pays nothing for frames.
* Ships the small scripts and the stylesheet in ``static_widgets/`` and adds them only to
  the pages that have such a widget (Jupyter Book 1.x would add anything under ``_static/``
  to every page).
* Drops the ipywidgets manager (``require.js``, ``embed-amd.js`` and the embedded widget
  state) from pages that no longer show a live widget view: with the static rendering
  preferred (``nb_mime_priority_overrides`` in ``_config.yml``) it would load 4 MB of script
  to draw nothing.
* Warns (an error under ``-W``) on a page that still shows a live widget view: that widget
  would not respond in the static book. Either it was not built with ``live_view``, or the
  execution cache predates the static widgets (then ``make clean`` and rebuild).
"""

from __future__ import annotations

import os
from pathlib import Path

from sphinx.util import logging

logger = logging.getLogger(__name__)

# The variable qkv.widgets.live.STATIC_BUILD_ENV reads (not imported: that pulls in matplotlib).
STATIC_BUILD_ENV = "QKV_STATIC_WIDGETS"
ASSETS = Path(__file__).resolve().parent / "static_widgets"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
# Script per kind of static widget (data-qkv-widget="...").
SCRIPTS = {"frames": "qkv-frames.js", "kv-cache": "qkv-kv-cache.js", "bpe": "qkv-bpe.js"}
STYLESHEET = "qkv-static-widgets.css"


def _announce_build(app) -> None:
    if app.builder.format == "html":
        os.environ[STATIC_BUILD_ENV] = "1"  # inherited by the kernels myst-nb starts


def _add_assets_path(app, config) -> None:
    config.html_static_path = [*config.html_static_path, str(ASSETS)]


def _is_ipywidgets_script(script, ipywidgets_js) -> bool:
    filename = str(getattr(script, "filename", "") or "")
    attributes = getattr(script, "attributes", {}) or {}
    # Sphinx stores a local script as "_static/<name>"; nb_ipywidgets_js names it "<name>".
    return filename.removeprefix("_static/") in ipywidgets_js or attributes.get("type") == WIDGET_STATE


def _per_page_assets(app, pagename, templatename, context, doctree) -> None:
    body = context.get("body") or ""
    if 'class="qkv-static-widget"' in body:
        app.add_css_file(STYLESHEET)
        for kind, script in SCRIPTS.items():
            if f'data-qkv-widget="{kind}"' in body:
                app.add_js_file(script, loading_method="defer")
    if WIDGET_VIEW in body:
        logger.warning(f"{pagename}: a widget has no static rendering and will not respond in the static book; "
                       "build it with qkv.widgets.live.live_view, or if it is, the execution cache predates "
                       "static widgets: run `make clean` and rebuild", type="qkv", subtype="live_widget")
        return
    scripts = context.get("script_files")
    if scripts:
        ipywidgets_js = set(getattr(app.config, "nb_ipywidgets_js", {}) or {})
        scripts[:] = [s for s in scripts if not _is_ipywidgets_script(s, ipywidgets_js)]


def setup(app):
    app.connect("builder-inited", _announce_build)
    app.connect("config-inited", _add_assets_path)
    # After myst-nb adds a page's widget scripts (priority 500), before offline_assets (900)
    # replaces the script list.
    app.connect("html-page-context", _per_page_assets, priority=800)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
