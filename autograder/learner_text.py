"""Learner text is data: make text a learner controls safe to write anywhere we write it.

A learner controls much of what the grader writes: the messages their code raises, the
names of files in their upload, the cells of their notebook. Every writer passes that text
through one of these functions first, so that it can neither break the writer (a lone
surrogate cannot be encoded as UTF-8) nor act as markup in it (a forged heading in
``report.md``, a formula in ``grades.csv``, an escape sequence on the instructor's terminal).

- :func:`clean` keeps the text's lines but removes what no reader should receive:
  unencodable code points, terminal escape sequences, control and bidirectional-override
  characters;
- :func:`one_line` also flattens it to one bounded line (terminal, CSV, report);
- :func:`markdown_inline` makes that line inert in Markdown and HTML (``report.md``);
- :func:`csv_cell` guards it against spreadsheet formula injection (``grades.csv``).

Hand-written: the standard library escapes HTML but not Markdown, and no maintained package
does this exact set.
"""

from __future__ import annotations

import re
import unicodedata

REPLACEMENT = "\N{REPLACEMENT CHARACTER}"
# ECMA-48 escape sequences (CSI with parameters, OSC up to BEL or ST, and two-byte escapes):
# removed whole, so no "[31m" debris is left behind.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])|\x9b[0-?]*[ -/]*[@-~]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_KEEP = {"\n", "\t"}
_SPACES = re.compile(r"\s+")
# Markdown punctuation that can start a construct on one line: emphasis, code, links, images,
# tables, strike-through, math, roles, e-mail autolinks. Backslash-escaping any ASCII
# punctuation is allowed by CommonMark and always renders as the character itself.
# An underscore between two letters or digits never starts emphasis, so ids such as
# ``test_softmax`` stay as they are.
_MARKDOWN = re.compile(r"([\\`*{}\[\]()#+!|~$@^]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}
# Bare-URL autolinks (GitHub, JupyterLab): a backslash inside "://" (before the first slash)
# or before the dot of "www." breaks the pattern without changing what the reader sees.
# (Renderers that link bare domain names, such as markdown-it's fuzzy linkify, go further
# than GitHub does; a domain shown as a link to itself forges nothing.)
_AUTOLINK = re.compile(r"(?i)(?<=[a-z0-9])://|(?<=\bwww)\.")
# At the start of a line, "-" and "1." (or "1)") open a list.
_LIST_START = re.compile(r"^(-|\d+(?=[.)]))")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def clean(text: object) -> str:
    """``text`` as a string safe to encode and show: lone surrogates become U+FFFD, escape
    sequences, control characters (except newline and tab) and invisible format characters
    (bidirectional overrides, zero-width characters) are removed."""
    if not isinstance(text, str):
        text = str(text)
    text = _SURROGATE.sub(REPLACEMENT, text)
    text = _ANSI.sub("", text.replace("\r\n", "\n"))
    if text.isprintable():
        return text
    return "".join(ch for ch in text if ch in _KEEP or unicodedata.category(ch) not in ("Cc", "Cf"))


def one_line(text: object, limit: int = 300) -> str:
    """:func:`clean`, then every run of white space (line breaks included) becomes one space,
    and text longer than ``limit`` characters is cut with an ellipsis."""
    line = _SPACES.sub(" ", clean(text)).strip()
    return line if len(line) <= limit else line[: max(0, limit - 1)].rstrip() + "…"


def markdown_inline(text: object, limit: int = 300) -> str:
    """:func:`one_line`, escaped so that it renders as exactly that text inside a Markdown
    paragraph, list item or table cell: no heading, link, image, HTML, table break or autolink."""
    line = one_line(text, limit)
    line = "".join(_HTML.get(ch, ch) for ch in line)
    line = _MARKDOWN.sub(r"\\\1", line)
    line = _LIST_START.sub(lambda m: "\\-" if m.group(0) == "-" else m.group(0) + "\\", line)
    return _AUTOLINK.sub(lambda m: "\\" + m.group(0) if m.group(0) == "." else ":\\//", line)


def csv_cell(text: object, limit: int = 2000) -> str:
    """:func:`one_line` for a spreadsheet cell: a value a spreadsheet would run as a formula
    (it starts with ``=``, ``+``, ``-`` or ``@``) is prefixed with an apostrophe."""
    line = one_line(text, limit)
    return "'" + line if line.startswith(FORMULA_STARTS) else line
