"""Static detection of banned calls: aliases resolved, references never flagged."""

from __future__ import annotations

import pytest

from autograder.banned import banned_for, find
from autograder.course import assignments
from notebook_tools import reference_answers

SOFTMAX = ["torch.softmax", "torch.nn.functional.softmax", "torch.Tensor.softmax"]


@pytest.mark.parametrize("source, expected", [
    ("def f(x):\n    return torch.softmax(x, -1)", ["torch.softmax"]),
    ("import torch.nn.functional as F\ndef f(x):\n    return F.softmax(x, -1)", ["torch.nn.functional.softmax"]),
    ("from torch.nn import functional as G\nG.softmax(x, 0)", ["torch.nn.functional.softmax"]),
    ("from torch import softmax as s\ns(x, 0)", ["torch.softmax"]),
    ("def f(x):\n    return x.softmax(-1)", ["torch.Tensor.softmax"]),
    ("getattr(torch, 'softmax')(x, 0)", ["torch.Tensor.softmax"]),
    ("import qkv.attention as A", ["qkv"]),
    ("from qkv import attention", ["qkv"]),
    ("__import__('qkv.attention')", ["qkv.attention"]),
    ("importlib.import_module('qkv')", ["qkv"]),
])
def test_banned_spellings_are_found(source, expected):
    assert sorted({h.name for h in find(source, SOFTMAX)}) == expected


@pytest.mark.parametrize("source", [
    "def f(x):\n    e = torch.exp(x - x.amax(-1, keepdim=True))\n    return e / e.sum(-1, keepdim=True)",
    "softmax = my_softmax  # a name, not the built-in\nsoftmax(x)",
    "def f(:",  # a syntax error is the notebook's problem, not a ban
])
def test_honest_code_is_not_flagged(source):
    assert find(source, SOFTMAX) == []


def test_the_static_layer_does_not_see_names_built_at_run_time():
    """A name assembled at run time escapes this first layer; the sandbox's run-time layer refuses
    the operator it reaches (tests/test_attacks.py, test_banned_operations_reached_at_run_time...)."""
    assert find("getattr(torch, 'soft' + 'max')(x, -1)", SOFTMAX) == []


@pytest.mark.parametrize("assignment", assignments())
def test_every_banned_name_has_a_run_time_layer_or_is_a_known_limit(assignment):
    from autograder.banned import RUNTIME_MODULES, RUNTIME_OPS, STATIC_ONLY

    for names in banned_for(assignment).values():
        for name in names:
            assert name in RUNTIME_OPS or name.split(".")[0] in RUNTIME_MODULES or name in STATIC_ONLY, name


def test_run_time_operators_exist_in_this_torch():
    """A misspelt operator would silently block nothing: the first operator of each entry is real."""
    import torch

    from autograder.banned import RUNTIME_OPS

    for name, packets in RUNTIME_OPS.items():
        assert hasattr(torch.ops.aten, packets[0]), (name, packets[0])


@pytest.mark.parametrize("assignment", assignments())
def test_reference_solutions_use_no_banned_call(assignment):
    table = banned_for(assignment)
    assert table, f"qkv/checks/{assignment}.py declares no BANNED table"
    for gid, source in reference_answers(assignment).items():
        assert find(source, table.get("*", []) + table.get(gid, [])) == [], gid
