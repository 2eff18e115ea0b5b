"""Keep the built book free of references to CDNs.

Jupyter Book 1.x always loads sphinx-thebe, which writes an inline script naming
thebe's CDN address into every page (and loads it when a live-code button is
pressed; we have none). No configuration switches it off, so this extension drops
those scripts from each page's context before the page is written.
"""


def _is_thebe(script) -> bool:
    filename = str(getattr(script, "filename", "") or "")
    body = str(getattr(script, "attributes", {}).get("body", ""))
    return "thebe" in filename or "THEBE_JS_URL" in body


def _drop_thebe(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if scripts:
        context["script_files"] = [s for s in scripts if not _is_thebe(s)]


def setup(app):
    app.connect("html-page-context", _drop_thebe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
