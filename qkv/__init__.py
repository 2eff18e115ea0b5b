"""qkv: the course library that the book pages and exercise notebooks import.

Submodules, one topic each:

- ``qkv.chapters``: the course map (the nine chapters, their slugs and titles).
- ``qkv.attention``: demo implementations used by the attention chapter.
- ``qkv.checks``: learner-side checks that diagnose common misconceptions.
- ``qkv.widgets``: ipywidgets for the book pages.
"""

__version__ = "0.1.0"
