"""Progressive hints: ``qkv.hint("softmax")`` shows the next hint for a graded function.

Each graded function has two or three hints in its chapter's ``qkv.checks.<ch>.HINTS``,
written to lead towards the answer without giving its code away (tests/test_hints.py checks
that no hint contains a line of the reference solution). The level reached is kept per
process, so calling ``qkv.hint`` again in the same kernel gives the next hint.
"""

from __future__ import annotations

import difflib

from qkv.chapters import CHAPTERS

_shown: dict[str, int] = {}  # function -> last level shown in this process


def all_hints() -> dict[str, tuple[str, list[str]]]:
    """function -> (chapter slug, its hints), across every chapter's ``HINTS``."""
    from qkv.selfcheck import checks_constant

    out: dict[str, tuple[str, list[str]]] = {}
    for ch in CHAPTERS:
        for function, hints in checks_constant(ch.slug, "HINTS").items():
            out[function] = (ch.slug, list(hints))
    return out


def hint_text(function: str, level: int | None = None) -> str:
    """The text :func:`hint` prints: hint ``level`` (1-based) of ``function``, or the next one.

    Without ``level``, each call moves one level further; after the last it says so and
    repeats the last. An unknown name gives a message listing close matches.
    """
    hints = all_hints()
    if function not in hints:
        close = difflib.get_close_matches(function, list(hints), n=5, cutoff=0.5)
        suggestion = f" Did you mean: {', '.join(close)}?" if close else ""
        return (f"No hints for {function!r}: it is not a graded function of any chapter.{suggestion} "
                "Use the function's name as in its `def` line, for example qkv.hint(\"softmax\").")
    chapter, texts = hints[function]
    n = len(texts)
    if level is None:
        after_last = _shown.get(function, 0) >= n
        level = min(_shown.get(function, 0) + 1, n)
    else:
        if not 1 <= level <= n:
            return f"{function} has hints 1 to {n}; level {level} does not exist."
        after_last = False
    _shown[function] = max(_shown.get(function, 0), level)
    text = f"Hint {level} of {n} for {function} ({chapter}): {texts[level - 1]}"
    if after_last:
        text = f"That was the last hint for {function}; here it is again.\n" + text
    elif level == n:
        text += "\n(This is the last hint. Still stuck? Reread the section named by qkv.check().)"
    return text


def hint(function: str, level: int | None = None) -> None:
    """Print the next hint for ``function`` (or hint number ``level``, counting from 1)."""
    print(hint_text(function, level))


def reset() -> None:
    """Forget which hints were shown (the next call starts again at hint 1)."""
    _shown.clear()
