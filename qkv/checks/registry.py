"""What a chapter declares about each graded function, in one place the shared machinery reads.

A chapter's checks module calls :func:`declare` once per graded function::

    declare("scaled_dot_product_attention", args=("q", "k", "v", "mask"),
            helpers=("softmax",), properties=(WEIGHTS_SUM_TO_ONE, ...), crash_hints=(...,))

- ``args`` names the positional parameters of the exercise's ``def`` line, so that a crash
  message can say ``mask (2, 6, 6) bool`` even in the grader, where the learner's function
  is a proxy without a signature;
- ``helpers`` are other graded functions it is expected to call: when its check fails, each
  helper's ``self_check`` runs first, and a failing helper is blamed (helper-first);
- ``self_check`` is a quick check of this function on small inputs, used when it is a helper;
- ``properties`` are facts every correct answer satisfies whatever the mistake, each able to
  say in words what the learner's answer broke;
- ``crash_hints`` explain exceptions specific to this function (generic ones live in
  :mod:`qkv.checks.crashes`).

Graded-function names are unique across chapters (``qkv hint NAME`` relies on it too);
:func:`declare` refuses a second, different declaration.

This module imports nothing from the rest of ``qkv.checks``, so every other module can use it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# ----------------------------------------------------------------------------- book sections


@dataclass(frozen=True)
class Reread:
    """A book section that explains a diagnosis: the chapter slug, the section's heading, and
    the key terms of the diagnosis that the section must contain (a test checks them)."""

    chapter: str
    heading: str
    terms: tuple[str, ...] = ()

    @property
    def page(self) -> str:
        """The built English page with the section's anchor (relative to the repository); a
        learner sees the ``file://`` URL of the page instead (:mod:`qkv.book_links`)."""
        from qkv.book_links import page

        return page(self.chapter, self.heading)

    def __str__(self) -> str:
        return f"“{self.heading}” ({self.chapter})"


class Diag(str):
    """A diagnosis message that knows which book section explains it.

    A ``str`` subclass, so it goes wherever a message went before; :class:`CheckFailed`
    takes its ``reread`` from the diagnosis that matched.
    """

    reread: Reread | None

    def __new__(cls, text: str, reread: Reread | None = None) -> Diag:
        obj = super().__new__(cls, text)
        obj.reread = reread
        return obj


# ----------------------------------------------------------------------------- declarations


@dataclass
class Call:
    """One call of a learner's function: its name and its arguments by parameter name."""

    name: str
    args: dict[str, Any]

    def tensors(self) -> dict[str, Any]:
        import torch

        return {k: v for k, v in self.args.items() if isinstance(v, torch.Tensor)}


@dataclass(frozen=True)
class CrashHint:
    """Explains an exception: ``pattern`` is searched in ``"TypeName: message"``; ``hint`` is
    the explanation, or a function of (match, call) that returns one (or None: no opinion)."""

    pattern: str
    hint: str | Callable[[re.Match, Call], str | None]

    def explain(self, text: str, call: Call) -> str | None:
        match = re.search(self.pattern, text)
        if match is None:
            return None
        return self.hint(match, call) if callable(self.hint) else self.hint


@dataclass(frozen=True)
class Property:
    """A fact every correct answer satisfies, whatever the mistake.

    ``says`` states it in words; ``broken(probe)`` returns None when the learner's function
    satisfies it and otherwise a sentence that names what it broke (and, when it can tell,
    the likely mistake). A property that cannot be evaluated (the learner's output has the
    wrong type, a probe call crashes) is skipped: properties add diagnoses, never failures.
    """

    says: str
    broken: Callable[..., str | None]
    reread: Reread | None = None


@dataclass
class Graded:
    """Everything the shared machinery knows about one graded function."""

    name: str
    args: tuple[str, ...] = ()
    helpers: tuple[str, ...] = ()
    self_check: Callable[[Callable], None] | None = None
    properties: tuple[Property, ...] = ()
    crash_hints: tuple[CrashHint, ...] = ()
    chapter: str = ""


GRADED: dict[str, Graded] = {}


def declare(name: str, *, chapter: str, args=(), helpers=(), self_check=None, properties=(),
            crash_hints=()) -> Graded:
    """Declare graded function ``name`` of ``chapter`` (see the module docstring)."""
    spec = Graded(name, tuple(args), tuple(helpers), self_check, tuple(properties), tuple(crash_hints), chapter)
    previous = GRADED.get(name)
    if previous is not None and previous.chapter != chapter:
        raise ValueError(f"graded function {name!r} is declared by both {previous.chapter!r} and {chapter!r}; "
                         "graded-function names must be unique across chapters")
    GRADED[name] = spec
    return spec


def spec_of(name: str) -> Graded | None:
    return GRADED.get(name)
