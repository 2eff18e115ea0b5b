"""Learner-side checks: compare a learner's function with an independent oracle
and, when they disagree, name the likely misconception.

These checks are for feedback. A grade that counts is decided by the autograder.

- :mod:`qkv.checks.core`: calling the learner (crash diagnosis, in-place changes) and comparing;
- :mod:`qkv.checks.graded`: helpers first, properties, every finding reported (``@check_of``);
- :mod:`qkv.checks.registry`: what a chapter declares about each graded function (``declare``);
- :mod:`qkv.checks.patterns`, :mod:`qkv.checks.crashes`: generic diagnoses of wrong results and of exceptions;
- :mod:`qkv.checks.properties`: properties shared by several chapters;
- :mod:`qkv.checks.sections`: the book sections diagnoses point to;
- one module per chapter (``qkv.checks.attention`` ...): oracles, named mistakes, properties, ``REREAD``, ``HINTS``.
"""

from qkv.checks.core import CheckFailed, NotAttempted, call_learner, expect_close
from qkv.checks.graded import check_of
from qkv.checks.registry import Diag, Property, Reread, declare

__all__ = ["CheckFailed", "Diag", "NotAttempted", "Property", "Reread", "call_learner", "check_of", "declare",
           "expect_close"]
