"""Learner-side checks: compare a learner's function with an independent oracle
and, when they disagree, name the likely misconception.

These checks are for feedback. A grade that counts is decided by the autograder.
"""

from qkv.checks.core import CheckFailed, NotAttempted, call_learner, expect_close

__all__ = ["CheckFailed", "NotAttempted", "call_learner", "expect_close"]
