"""What feedback may say about a hidden test: the fixed wording of our messages, nothing else.

A hidden test's inputs must not reach the learner (grading-threat-model.md, guarantee 5). Its
failure message is built by the checks from those inputs (``…divided by d_k = 4``, a shape, the
learner's output), and it may quote the learner's own exception text, which can echo anything the
function received. So instead of guessing which parts of a message are derived from the inputs,
:func:`hidden_safe` keeps only the parts that are *not*: runs of text that are a whole literal
piece of a message in our own code (a string constant, or the constant part of an f-string, in
``qkv/checks`` and in the grader) and holds at least one letter. Everything else, numbers and
quoted values included, becomes ``…``::

    "your result equals attention with the logits divided by d_k = 4; divide by √d_k instead ..."
 -> "your result equals attention with the logits divided by d_k = …; divide by √d_k instead ..."

The reason of a crash never holds the learner's own exception text (only its type and our
explanation), so a learner cannot assemble a message out of our fragments either.
"""

from __future__ import annotations

import ast
import builtins
import functools
import re
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
SOURCES = (*sorted((_ROOT / "qkv" / "checks").glob("*.py")),
           *sorted((_ROOT / "autograder").glob("*.py")))
MIN_FRAGMENT = 4  # shorter literal pieces (", ", ": ") carry no wording worth keeping
MIN_PARTIAL = 12  # the shortest prefix of a piece kept where the whole piece does not match
MAX_TEXT = 4000  # longer messages are cut (a failure reason is a sentence or two)
ELLIPSIS = "…"
_FORMAT_FIELD = re.compile(r"\{[^{}]*\}|%[-#0 +]*\d*(?:\.\d+)?[sdrfgex]")
# A quoted value ('lo w', "low"), not an apostrophe inside a word.
_QUOTED = re.compile(r"(?<![\w'])'[^'\n]*'(?!\w)|\"[^\"\n]*\"")
_DIGIT = re.compile(r"\d")


def _pieces(path: Path) -> set[str]:
    """The literal pieces of text in one source file: string constants, split where a format
    field (``{x}``, ``%s``) would insert something, and the constant parts of f-strings."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return set()
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.update(_FORMAT_FIELD.split(node.value))
        elif isinstance(node, ast.JoinedStr):
            for part in node.values:
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    out.update(_FORMAT_FIELD.split(part.value))
    return out


@functools.lru_cache(maxsize=1)
def _fragments() -> dict[str, list[str]]:
    """Literal pieces worth keeping, indexed by their first two characters, longest first."""
    pieces: set[str] = set()
    for path in SOURCES:
        pieces |= _pieces(path)
    pieces |= {name for name in dir(builtins) if name.endswith(("Error", "Exception", "Warning"))}
    index: dict[str, list[str]] = {}
    for piece in pieces:
        for line in piece.splitlines():
            if len(line) >= MIN_FRAGMENT and any(ch.isalpha() for ch in line):
                index.setdefault(line[:2], []).append(line)
    for bucket in index.values():
        bucket.sort(key=len, reverse=True)
    return index


def _common_prefix(a: str, b: str, start: int) -> int:
    """The length of the longest prefix of ``a`` that ``b`` holds at ``start``."""
    n = 0
    for ch, other in zip(a, b[start:start + len(a)]):
        if ch != other:
            break
        n += 1
    return n


def _match(text: str, i: int, candidates: list[str]) -> str | None:
    """Our wording at ``text[i:]``: a whole fragment, else the longest prefix of one that ends
    at a word boundary and holds at least ``MIN_PARTIAL`` characters. A prefix is still our own
    text; it is needed where the checks already redacted part of a message ("receive weight
    (…)" against the source's "receive weight (up to "), which no whole fragment matches."""
    best = ""
    for fragment in candidates:  # longest first
        if len(fragment) <= len(best):
            break  # no later candidate can say more than the prefix already found
        if text.startswith(fragment, i):
            return fragment
        n = _common_prefix(fragment, text, i)
        while n > len(best) and (text[i + n - 1].isalnum() and i + n < len(text) and text[i + n].isalnum()):
            n -= 1  # never end inside a word: "weigh" of "weight"
        if n > len(best) and n >= MIN_PARTIAL and any(ch.isalpha() for ch in fragment[:n]):
            best = fragment[:n]
    return best or None


def hidden_safe(text: str) -> str:
    """``text`` with everything but our own fixed wording replaced by ``…`` (see the module
    docstring). Linear in the length of ``text`` (cut at ``MAX_TEXT``) times the few fragments
    sharing its two first characters."""
    index = _fragments()
    text = _QUOTED.sub(ELLIPSIS, str(text)[:MAX_TEXT])
    out: list[str] = []
    i = 0
    while i < len(text):
        match = _match(text, i, index.get(text[i:i + 2], []))
        if match is None:
            if not out or out[-1] != ELLIPSIS:
                out.append(ELLIPSIS)
            i += 1
            continue
        out.append(_DIGIT.sub(ELLIPSIS, match) if len(match) < 12 else match)
        i += len(match)
    # "… …" and "…, …" say nothing more than "…"
    return re.sub(r"…(?:[\s,;:()\[\]]*…)+", ELLIPSIS, "".join(out)).strip()


def hidden_failure_message(failure: BaseException) -> str:
    """The message feedback shows for a failed hidden test: its input-free reason (a crash's
    reason names the exception's type and our explanation, never the learner's own text; see
    ``qkv.checks.core.crash_failure``), reduced to our fixed wording."""
    prefix = "Your function passed the visible tests but failed a hidden test"
    reason = getattr(failure, "reason", None)
    if reason:
        return f"{prefix}: {hidden_safe(reason)}"
    return f"{prefix} ({type(failure).__name__})."
