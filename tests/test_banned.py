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


@pytest.mark.parametrize("source, expected", [
    ("i, j = torch.tril_indices(n, n)", ["torch.tril_indices"]),
    ("m = torch.ones(n, n, dtype=torch.bool).tril()", ["torch.Tensor.tril"]),
    ("from torch import triu_indices as t\nt(n, n, 1)", ["torch.triu_indices"]),
    ("torch.linalg.solve_triangular(a, eye, upper=False)", ["torch.linalg.solve_triangular"]),
])
def test_the_masking_exercise_bans_every_built_in_triangle(source, expected):
    """The causal mask is the exercise: tril, triu and their _indices forms (stop 21's red team
    built the mask with torch.tril_indices for full marks)."""
    assert sorted({h.name for h in find(source, banned_for("masking")["*"])}) == expected


@pytest.mark.parametrize("assignment", assignments())
@pytest.mark.parametrize("source, expected", [
    ("import torch._decomp\nf = torch._decomp.decomposition_table[torch.ops.aten._softmax.default]",
     ["torch._decomp"]),
    ("import torch._refs\nf = getattr(torch._refs, 'soft' + 'max')", ["torch._refs"]),
    ("from torch._refs import tril", ["torch._refs"]),
    ("import torch._prims as p", ["torch._prims"]),
])
def test_torchs_private_implementations_are_banned_everywhere(assignment, source, expected):
    """torch._refs / _decomp / _prims compute softmax, tril and the norms from allowed operators,
    past the refused kernels (a stop-21 red team's full marks): banned in every exercise."""
    assert sorted({h.name for h in find(source, banned_for(assignment)["*"])}) == expected


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


# Operators whose names contain a banned family's name but compute something else, or only
# take part in training (backward passes are excluded by name).
NOT_THE_BUILT_IN = {"_trilinear": "a trilinear product", "upsample_trilinear3d": "3-d interpolation",
                    "_cudnn_init_dropout_state": "a random state, no dropout applied",
                    "_fill_mem_eff_dropout_mask_": "fills a mask for GPU attention, no dropout applied"}
FAMILIES = ("softmax", "attention", "tril", "triu", "layer_norm", "batch_norm", "rms_norm", "group_norm",
            "instance_norm", "dropout", "repeat_interleave")


def test_every_torch_operator_of_a_banned_family_is_blocked_at_run_time():
    """Every aten operator of this torch whose name says it computes a banned built-in (softmax,
    attention, tril, a norm, dropout, ...) is in RUNTIME_OPS: the red team of stop 21 reached a
    softmax through aten::_sparse_log_softmax, which was missing from the list."""
    import torch

    from autograder.banned import RUNTIME_OPS

    listed = {packet for packets in RUNTIME_OPS.values() for packet in packets}
    ops = {name.split("::")[1].split(".")[0] for name in torch._C._dispatch_get_all_op_names()
           if name.startswith("aten::")}
    family = {op for op in ops if any(f in op for f in FAMILIES) and "backward" not in op}
    assert family - listed - set(NOT_THE_BUILT_IN) == set()
    assert {"_sparse_log_softmax", "tril_indices", "triu_indices", "softmax", "scaled_dot_product_attention"} <= family


def test_every_run_time_operator_exists_in_this_torch():
    """A misspelt operator would silently block nothing."""
    import torch

    from autograder.banned import RUNTIME_OPS

    for name, packets in RUNTIME_OPS.items():
        for packet in packets:
            assert hasattr(torch.ops.aten, packet), (name, packet)


@pytest.mark.parametrize("assignment", assignments())
def test_reference_solutions_use_no_banned_call(assignment):
    table = banned_for(assignment)
    assert table, f"qkv/checks/{assignment}.py declares no BANNED table"
    for gid, source in reference_answers(assignment).items():
        assert find(source, table.get("*", []) + table.get(gid, [])) == [], gid
