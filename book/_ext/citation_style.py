"""Author-year citations in round brackets: "Vaswani et al. (2017)" and "(Vaswani et al., 2017)".

sphinxcontrib-bibtex's ``author_year`` style uses square brackets and separates the works of
one parenthetical citation with commas, which is ambiguous next to "Author, Year". This
registers the same style with round brackets and "; " between works, as the plugin
``author_year_round`` that ``_config.yml`` selects with ``bibtex_reference_style``.
``qkv/citations.py`` renders quiz and drill citations with the same separators; the built-book
test compares the two.
"""

import functools
from dataclasses import dataclass, field

import pybtex.plugin
from sphinxcontrib.bibtex.plugin import register_plugin
from sphinxcontrib.bibtex.style.referencing import BracketStyle
from sphinxcontrib.bibtex.style.referencing.author_year import AuthorYearReferenceStyle


def _round(sep: str) -> BracketStyle:
    return BracketStyle(left="(", right=")", sep=sep)


@dataclass
class RoundAuthorYearReferenceStyle(AuthorYearReferenceStyle):
    bracket_textual: BracketStyle = field(default_factory=lambda: _round(", "))
    bracket_parenthetical: BracketStyle = field(default_factory=lambda: _round("; "))
    bracket_author: BracketStyle = field(default_factory=lambda: _round(", "))
    bracket_label: BracketStyle = field(default_factory=lambda: _round(", "))
    bracket_year: BracketStyle = field(default_factory=lambda: _round(", "))


def _memoize_pybtex_plugin_lookups() -> None:
    """Look each pybtex plugin up once per build.

    sphinxcontrib-bibtex formats every bibliography again on every build, even with nothing
    changed, and each time pybtex resolves its style, name and label plugins through
    ``importlib.metadata.entry_points``, which reads every installed package's metadata: 45
    lookups, ~1.5 s of a no-change rebuild on 2 cores (cProfile). The answer depends only on
    what is installed, so it is cached; registering a plugin at run time clears the cache.
    pybtex offers no cache of its own (``pybtex.plugin._load_entry_point`` is its lookup).
    """
    if hasattr(pybtex.plugin._load_entry_point, "cache_clear"):
        return
    lookup = functools.lru_cache(maxsize=None)(pybtex.plugin._load_entry_point)
    register = pybtex.plugin.register_plugin

    @functools.wraps(register)
    def register_plugin(*args, **kwargs):
        lookup.cache_clear()
        return register(*args, **kwargs)

    pybtex.plugin._load_entry_point = lookup
    pybtex.plugin.register_plugin = register_plugin


def setup(app):
    _memoize_pybtex_plugin_lookups()
    # Registered in setup (runs before builder-inited, where sphinxcontrib-bibtex looks the style up).
    register_plugin("sphinxcontrib.bibtex.style.referencing", "author_year_round",
                    RoundAuthorYearReferenceStyle, force=True)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
