"""Author-year citations in round brackets: "Vaswani et al. (2017)" and "(Vaswani et al., 2017)".

sphinxcontrib-bibtex's ``author_year`` style uses square brackets and separates the works of
one parenthetical citation with commas, which is ambiguous next to "Author, Year". This
registers the same style with round brackets and "; " between works, as the plugin
``author_year_round`` that ``_config.yml`` selects with ``bibtex_reference_style``.
``qkv/citations.py`` renders quiz and drill citations with the same separators; the built-book
test compares the two.
"""

from dataclasses import dataclass, field

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


def setup(app):
    # Registered in setup (runs before builder-inited, where sphinxcontrib-bibtex looks the style up).
    register_plugin("sphinxcontrib.bibtex.style.referencing", "author_year_round",
                    RoundAuthorYearReferenceStyle, force=True)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
