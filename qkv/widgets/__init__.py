"""ipywidgets for the book pages, one module per chapter.

Each builder returns a widget whose first (default) view is drawn at build time,
so the static book shows it; moving the controls needs a live kernel.
"""
