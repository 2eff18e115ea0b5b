"""ipywidgets for the book pages, one module per chapter.

Each builder goes through :func:`qkv.widgets.live.live_view`: it draws its default view at
once and redraws when a control moves (in JupyterLab). When the book is built it also
renders a static view that responds without a kernel (every frame of its control grid, or a
computation in the page); see :mod:`qkv.widgets.live`.
"""
