"""The static layer over a whole notebook: what runs, across cells, only where a graded function reaches.

Each case is a learner notebook (its cells after the reference's set-up cell) and the banned names
the static layer must find for each graded function (#15 items 3 and 8).
"""

from __future__ import annotations

import pytest

from autograder.static_scan import scan

BANNED = ["torch.softmax", "torch.nn.functional.softmax", "torch.Tensor.softmax", "torch.special.softmax",
          "torch.nn.functional.scaled_dot_product_attention"]
GRADED = ["softmax", "scaled_dot_product_attention", "additive_attention"]
SETUP = {"id": "setup-0", "source": "import math\n\nimport torch"}


def _found(*sources: str) -> dict[str, set[str]]:
    cells = [SETUP] + [{"id": f"cell-{i + 2}", "source": s} for i, s in enumerate(sources)]
    result = scan(cells, {g: BANNED for g in GRADED}, frozenset({"setup-0"}))
    assert set(result.runnable) == {c["id"] for c in cells}
    return {g: {u.name for u in uses} for g, uses in result.uses.items() if uses}


HONEST = ("def softmax(x, dim=-1):\n    e = (x - x.amax(dim, keepdim=True)).exp()\n"
          "    return e / e.sum(dim, keepdim=True)")


@pytest.mark.parametrize("sources", [
    [HONEST],
    # learners compare against the built-in to check themselves: scratch, not a call from a graded function
    [HONEST, "x = torch.randn(3, 4)\nexpected = torch.softmax(x, -1)\nprint(torch.allclose(softmax(x), expected))"],
    [HONEST, "x = torch.randn(3)\nprint(x.softmax(-1), torch.nn.functional.softmax(x, 0))"],
    [HONEST, "for impl in (softmax, torch.softmax):\n    print(impl(torch.ones(2)))"],
    [HONEST, "%timeit torch.softmax(torch.ones(8), -1)"],
    [HONEST, "def compare():\n    return torch.allclose(softmax(torch.ones(2)), torch.softmax(torch.ones(2), -1))\n"
             "compare()"],
    [HONEST, "import qkv\nqkv.hint('softmax')"],
    [HONEST, "import torch.nn.functional as F\nreference = F.softmax  # kept for a comparison below\n"
             "print(reference(torch.ones(2), -1))"],
], ids=["honest", "compare-result", "compare-spellings", "loop-over-implementations", "timeit", "compare-helper",
        "hint", "unused-alias"])
def test_scratch_cells_cost_nothing(sources):
    assert _found(*sources) == {}


@pytest.mark.parametrize("sources, expected", [
    (["def softmax(x, dim=-1):\n    return torch.softmax(x, dim)"], {"softmax": {"torch.softmax"}}),
    # an alias defined in another cell (#15 item 3)
    (["import torch.nn.functional as F\nsm = F.softmax", "def softmax(x, dim=-1):\n    return sm(x, dim)"],
     {"softmax": {"torch.nn.functional.softmax"}}),
    # star imports bind the built-in's own name (#15 item 3)
    (["from torch.special import *\nsm = softmax", "def softmax(x, dim=-1):\n    return sm(x, dim)"],
     {"softmax": {"torch.special.softmax"}}),
    (["from torch.nn.functional import *"],
     {"softmax": {"torch.nn.functional.softmax"},
      "scaled_dot_product_attention": {"torch.nn.functional.scaled_dot_product_attention"}}),
    # IPython prompts and indentation: the raw cell does not parse, the runner runs it (#15 item 3)
    ([">>> def softmax(x, dim=-1):\n...     return torch.softmax(x, dim)"], {"softmax": {"torch.softmax"}}),
    (["    def softmax(x, dim=-1):\n        return torch.nn.functional.softmax(x, dim)"],
     {"softmax": {"torch.nn.functional.softmax"}}),
    (["%%time\ndef softmax(x, dim=-1):\n    return torch.softmax(x, dim)"], {"softmax": {"torch.softmax"}}),
    (["exec('sm = torch.special.softmax')", "def softmax(x, dim=-1):\n    return sm(x, dim)"],
     {"softmax": {"torch.special.softmax"}}),
    # the ways a function holds a banned function without naming it in its body
    (["def softmax(x, dim=-1, f=torch.softmax):\n    return f(x, dim)"], {"softmax": {"torch.softmax"}}),
    (["@lambda f: torch.softmax\ndef softmax(x, dim=-1):\n    pass"], {"softmax": {"torch.softmax"}}),
    (["def make():\n    return lambda x, dim=-1: torch.softmax(x, dim)\nsoftmax = make()"],
     {"softmax": {"torch.softmax"}}),
    (["class S:\n    def __call__(self, x, dim=-1):\n        return x.softmax(dim)\nsoftmax = S()"],
     {"softmax": {"torch.Tensor.softmax"}}),
    (["def setup():\n    global sm\n    sm = torch.softmax\nsetup()", "def softmax(x, dim=-1):\n    return sm(x, dim)"],
     {"softmax": {"torch.softmax"}}),
    (["def softmax(x, dim=-1):\n    return getattr(torch, 'softmax')(x, dim)"], {"softmax": {"torch.softmax"}}),
    (["softmax = torch.nn.functional.softmax"], {"softmax": {"torch.nn.functional.softmax"}}),
    # a helper: only the functions that reach it pay
    (["def helper(x):\n    return torch.nn.functional.softmax(x, -1)",
      "def scaled_dot_product_attention(q, k, v, mask=None):\n    return helper(q @ k.mT) @ v, None"],
     {"scaled_dot_product_attention": {"torch.nn.functional.softmax"}}),
    # stored where any function may find it
    (["import builtins\nbuiltins.sm = torch.softmax", "def softmax(x, dim=-1):\n    return sm(x, dim)"],
     {g: {"torch.softmax"} for g in GRADED}),
    # the course library
    (["import qkv.attention as A", "def softmax(x, dim=-1):\n    return A.softmax(x, dim)"], {"softmax": {"qkv"}}),
    (["def softmax(x, dim=-1):\n    return __import__('qkv.attention').attention.softmax(x, dim)"],
     {"softmax": {"qkv", "torch.Tensor.softmax"}}),  # `.softmax(...)` on what the scan cannot name: the method
], ids=["direct", "cross-cell-alias", "star-special", "star-functional", "prompts", "indented", "time-magic",
        "exec-string", "default-argument", "decorator", "factory", "class", "global", "getattr", "rebound-name",
        "helper", "builtins", "qkv-alias", "qkv-import"])
def test_banned_names_reachable_from_a_graded_function_are_found(sources, expected):
    assert _found(*sources) == expected


def test_a_cell_that_cannot_be_read_does_not_run():
    cells = [SETUP, {"id": "softmax", "source": "def softmax(x:\n    return torch.softmax(x)"}]
    result = scan(cells, {"softmax": BANNED}, frozenset({"setup-0"}))
    assert "not valid Python (line 1" in result.problems["softmax"]
    assert result.runnable["softmax"].startswith("raise SyntaxError(")


def test_the_sandbox_runs_exactly_the_code_that_was_read():
    from qkv.notebook_contract import transform

    source = "%%time\nimport torch\ndef softmax(x, dim=-1):\n    return x"
    result = scan([{"id": "softmax", "source": source}], {"softmax": BANNED})
    assert result.runnable["softmax"] == transform(source) and "run_cell_magic" in result.runnable["softmax"]
    compile(result.runnable["softmax"], "<cell>", "exec")  # the runner runs it as it is


def test_the_message_says_where_the_banned_name_is():
    cells = [SETUP, {"id": "cell-3", "source": "def helper(x):\n    return torch.softmax(x, -1)"},
             {"id": "softmax", "source": "def softmax(x, dim=-1):\n    return helper(x)"}]
    [use] = scan(cells, {"softmax": BANNED}, frozenset({"setup-0"})).uses["softmax"]
    assert use.describe() == ("calls torch.softmax (line 2 of cell 3, in `helper`, which softmax can reach), "
                              "which this exercise asks you to implement yourself")


def test_the_reference_solutions_reach_no_banned_name():
    from autograder.banned import banned_for
    from autograder.course import assignments
    from autograder.verify import Reference
    from notebook_tools import REPO, reference_answers

    for assignment in assignments():
        reference = Reference.load(REPO / "solutions" / assignment / f"{assignment}.ipynb")
        table = banned_for(assignment)
        cells = [{"id": f"setup-{i}", "source": s} for i, s in enumerate(reference.setup)]
        cells += [{"id": gid, "source": source} for gid, source in reference_answers(assignment).items()]
        result = scan(cells, {g: table.get("*", []) + table.get(g, []) for g in reference.graded_names},
                      frozenset(c["id"] for c in cells if c["id"].startswith("setup-")))
        assert {g: u for g, u in result.uses.items() if u} == {} and result.problems == {}, assignment
