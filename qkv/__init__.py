"""qkv: the course library that the book pages and exercise notebooks import.

Submodules, one topic each:

- ``qkv.chapters``: the course map (the nine chapters and the capstone, their slugs and titles).
- ``qkv.attention``: demo implementations used by the attention chapter.
- ``qkv.checks``: learner-side checks that diagnose common misconceptions.
- ``qkv.widgets``: ipywidgets for the book pages.
- ``qkv.check()`` (``qkv.selfcheck``) and ``qkv.hint()`` (``qkv.hints``): the learner's
  self-check table and progressive hints; ``qkv progress`` (``qkv.progress``) on the command line.
"""

__version__ = "0.1.0"


def check(chapter=None, notebook=None, **kwargs):
    """Check your functions against the chapter's visible tests; see :func:`qkv.selfcheck.check`."""
    from qkv.selfcheck import check as _check  # imported on use: `import qkv` stays light

    return _check(chapter, notebook, **kwargs)


def hint(function, level=None):
    """Print the next hint for a graded function; see :func:`qkv.hints.hint`."""
    from qkv.hints import hint as _hint

    return _hint(function, level)


__all__ = ["check", "hint", "__version__"]
