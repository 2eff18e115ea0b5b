"""Checks for the multi-head attention exercise: split_heads, merge_heads, multi_head_attention, attention_flops.

Oracles are independent of any learner code and of qkv's own demo code:
slicing and ``torch.stack``/``torch.cat`` for the head split and merge,
``torch.nn.MultiheadAttention(batch_first=True)`` with copied weights (in float64)
for the layer, and for the FLOP count torch's own per-operator FLOP formulas (those of
``torch.utils.flop_counter.FlopCounterMode``) summed over an explicit computation as it runs.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from qkv.checks import sections
from qkv.checks.core import PATTERN, CheckFailed, call_learner, expect_close, expect_pair, fail
from qkv.checks.graded import check_of
from qkv.checks.patterns import number_mismatch
from qkv.checks.properties import masked_keys_get_zero, rows_sum_to_one
from qkv.checks.registry import CrashHint, Diag, Property, declare

# ----------------------------------------------------------------------------- oracles


def oracle_split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Head h is the feature slice h·d_head:(h+1)·d_head, stacked on a new axis 1."""
    d_head = x.shape[-1] // n_heads
    return torch.stack([x[..., h * d_head:(h + 1) * d_head] for h in range(n_heads)], dim=1)


def oracle_merge_heads(x: torch.Tensor) -> torch.Tensor:
    """Concatenate the heads' features side by side: [head 0 | head 1 | ...]."""
    return torch.cat([x[:, h] for h in range(x.shape[1])], dim=-1)


def oracle_mha(query, key, value, in_w, in_b, out_w, out_b, n_heads, mask=None):
    """(output, head-averaged weights) of nn.MultiheadAttention with the given weights, computed in float64."""
    d_model = query.shape[-1]
    layer = torch.nn.MultiheadAttention(d_model, n_heads, bias=in_b is not None, batch_first=True,
                                        dtype=torch.float64).eval()
    with torch.no_grad():
        layer.in_proj_weight.copy_(in_w.double())
        layer.out_proj.weight.copy_(out_w.double())
        if in_b is not None:
            layer.in_proj_bias.copy_(in_b.double())
            layer.out_proj.bias.copy_(out_b.double())
        attn_mask = None
        if mask is not None:
            # Ours: True = may attend, same for every head. nn.MultiheadAttention: True = blocked,
            # a 3-D mask is laid out (B·H, T_q, T_k) with the batch index major.
            B, T_q, T_k = query.shape[0], query.shape[1], key.shape[1]
            attn_mask = ~mask.bool().expand(B, T_q, T_k).repeat_interleave(n_heads, dim=0)
        out, weights = layer(query.double(), key.double(), value.double(), attn_mask=attn_mask,
                             need_weights=True, average_attn_weights=True)
    return out.to(query.dtype), weights.to(query.dtype)


class _CountFlops(TorchDispatchMode):
    """Sum torch's FLOP formula of every operator that runs (``flop_registry``: the formulas
    ``FlopCounterMode`` uses, 2·m·n·k for a matrix product) into ``total``.

    FlopCounterMode itself counts the same, but its dispatch handler is wrapped in
    ``torch._dynamo.disable``, whose first call imports ``torch._dynamo``: 2–9 s, more than a
    whole self-check may take (issue #10). Nothing here is compiled, so this mode opts out of
    that wrapper (``tests/test_multihead_library.py`` checks both count alike and that no
    ``torch._dynamo`` import happens)."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


# Above this many multiply-adds the explicit computation runs on the meta device (shapes only,
# any size), whose shape functions import sympy the first time (about 1 s); below, on zeros.
_REAL_TENSOR_WORK = 2**30


def oracle_flops(T: int, d_model: int, n_heads: int, d_head: int | None = None) -> int:
    """Count the matrix-product FLOPs of one self-attention layer (batch 1, T tokens) by running
    it: projections, QKᵀ, softmax, weights·V and the output projection."""
    d_head = d_model // n_heads if d_head is None else d_head
    inner = n_heads * d_head
    small = T * inner * (d_model + T) <= _REAL_TENSOR_WORK
    with torch.device("cpu" if small else "meta"):
        x = torch.zeros(1, T, d_model)
        w_q, w_k, w_v = (torch.zeros(d_model, inner) for _ in range(3))
        w_o = torch.zeros(inner, d_model)
    counter = _CountFlops()
    with counter:
        q, k, v = ((x @ w).view(1, T, n_heads, d_head).transpose(1, 2) for w in (w_q, w_k, w_v))
        weights = (q @ k.transpose(-2, -1)).softmax(-1)
        (weights @ v).transpose(1, 2).reshape(1, T, inner) @ w_o
    return int(counter.total)


# ----------------------------------------------------------------------------- misconceptions

NO_TRANSPOSE_SPLIT = Diag("you reshaped straight to (B, H, T, d_head) (or to (B, T, H, d_head) without the transpose): "
                          "that cuts the flattened (T, d_model) block into H pieces, so a head gets several positions' "
                          "features. Reshape to (B, T, H, d_head) first, then swap the T and H axes.",
                          sections.MHA_COMPUTED)
INTERLEAVED_SPLIT = Diag("head h got every H-th feature (features interleaved across heads). Head h must own the "
                         "contiguous block of features h·d_head … (h+1)·d_head − 1: "
                         "reshape the last axis as (H, d_head).",
                         sections.MHA_COMPUTED)
MISSING_TRANSPOSE_SPLIT = Diag("you returned (B, T, H, d_head): the split is right but the transpose is missing; "
                               "move the head axis in front of T, giving (B, H, T, d_head).", sections.MHA_COMPUTED)
NO_TRANSPOSE_MERGE = Diag("heads merged in the wrong order: you reshaped (B, H, T, d_head) straight to "
                          "(B, T, d_model), which mixes the H and T axes. Swap H and T back first, then reshape.",
                          sections.MHA_COMPUTED)
INTERLEAVED_MERGE = Diag("the heads' features are interleaved: the result must be [head 0 | head 1 | …], each head's "
                         "d_head features side by side; put H before d_head when you flatten.", sections.MHA_COMPUTED)


def _split_variant(x, n_heads, mistake):
    B, T, d = x.shape
    if mistake == "no_transpose":
        return x.reshape(B, n_heads, T, d // n_heads)
    if mistake == "interleaved":
        return x.reshape(B, T, d // n_heads, n_heads).permute(0, 3, 1, 2)
    return oracle_split_heads(x, n_heads)


def _merge_variant(x, mistake):
    B, H, T, dh = x.shape
    if mistake == "no_transpose":
        return x.reshape(B, T, H * dh)
    if mistake == "interleaved":
        return x.permute(0, 2, 3, 1).reshape(B, T, H * dh)
    return oracle_merge_heads(x)


def mha_variant(query, key, value, in_w, in_b, out_w, out_b, n_heads, mask=None, *, scale="d_head",
                split="right", merge="right", out_proj=True, transpose_w=True, bias=True, mask_mode="right",
                reduce="mean"):
    """Multi-head attention in float64 with one deliberate mistake, for diagnosis: (output, weights)."""
    q64, k64, v64 = query.double(), key.double(), value.double()
    w_q, w_k, w_v = (w.double() for w in in_w.chunk(3))
    b_q, b_k, b_v = (None,) * 3 if (in_b is None or not bias) else (b.double() for b in in_b.chunk(3))

    def project(x, w, b):
        y = x @ (w.T if transpose_w else w)
        return y if b is None else y + b

    q = _split_variant(project(q64, w_q, b_q), n_heads, split)
    k = _split_variant(project(k64, w_k, b_k), n_heads, split)
    v = _split_variant(project(v64, w_v, b_v), n_heads, split)
    d_model, d_head = query.shape[-1], q.shape[-1]
    logits = q @ k.transpose(-2, -1)
    if scale == "d_head":
        logits = logits / math.sqrt(d_head)
    elif scale == "d_model":
        logits = logits / math.sqrt(d_model)
    if mask is not None and mask_mode != "ignored":
        blocked = ~mask.bool() if mask_mode == "right" else mask.bool()
        logits = logits.masked_fill(blocked.unsqueeze(-3), float("-inf"))
    weights = torch.softmax(logits, dim=-1)
    merged = _merge_variant(weights @ v, merge)
    out = merged
    if out_proj:
        out = merged @ (out_w.double().T if transpose_w else out_w.double())
        if out_b is not None and bias:
            out = out + out_b.double()
    return out, (weights.mean(1) if reduce == "mean" else weights.sum(1))


def mha_diagnoses(*args, mask=None) -> list[tuple[str, tuple]]:
    """Named wrong variants of multi-head attention: (message, (output, weights))."""
    d_model, n_heads = args[0].shape[-1], args[7]
    d_head = d_model // n_heads
    cases = [
        (Diag("you forgot the output projection: after merging the heads, apply out_proj_weight (and out_proj_bias) "
              "to mix the heads' outputs.", sections.MHA_COMPUTED), dict(out_proj=False)),
        (Diag(f"the logits were divided by √d_model = {math.sqrt(d_model):.3g}; each head's q and k have d_head = "
              f"{d_head} components, so divide by √d_head = {math.sqrt(d_head):.3g}.", sections.WHY_SQRT_DK),
         dict(scale="d_model")),
        (Diag(f"the logits were not scaled: divide each head's q @ kᵀ by √d_head = {math.sqrt(d_head):.3g}.",
              sections.WHY_SQRT_DK), dict(scale=None)),
        ("split without transpose: you reshaped the projections straight to (B, H, T, d_head), which mixes "
         "positions and features across heads. Reshape to (B, T, H, d_head), then swap T and H.",
         dict(split="no_transpose", merge="no_transpose")),
        ("split without transpose: you reshaped the projections straight to (B, H, T, d_head), which mixes "
         "positions and features across heads. Reshape to (B, T, H, d_head), then swap T and H.",
         dict(split="no_transpose")),
        ("heads merged in the wrong order: (B, H, T, d_head) was reshaped to (B, T, d_model) without swapping "
         "H and T back first, so positions got mixed.", dict(merge="no_transpose")),
        ("head h must own the contiguous features h·d_head … (h+1)·d_head − 1; yours interleave the heads' "
         "features.", dict(split="interleaved", merge="interleaved")),
        ("the projections used x @ W; nn.MultiheadAttention stores weights as (out, in) and applies x @ W.T + b.",
         dict(transpose_w=False)),
        ("the biases were ignored: add in_proj_bias to q, k, v and out_proj_bias to the output.", dict(bias=False)),
        ("the weights were summed over heads; return their average (divide by n_heads).", dict(reduce="sum")),
    ]
    if mask is not None:
        cases += [
            (Diag("the mask polarity is inverted: True means 'may attend', so fill the logits where the mask is False.",
                  sections.MASK_POLARITY), dict(mask_mode="inverted")),
            (Diag("the mask was ignored: masked keys still receive weight.", sections.MASK_KEYS),
             dict(mask_mode="ignored")),
        ]
    return [(msg, mha_variant(*args, mask, **kw)) for msg, kw in cases]


def flops_diagnoses(T: int, d_model: int, n_heads: int, d_head: int | None = None) -> list[tuple[int, str]]:
    """Named wrong FLOP counts: (value, message)."""
    d_head = d_model // n_heads if d_head is None else d_head
    inner = n_heads * d_head
    proj = 2 * T * d_model * inner * 4
    attn = 4 * n_heads * T * T * d_head
    return [
        ((proj + attn) // 2, "you counted multiply-adds; a multiply-add is 2 FLOPs "
                             "(an (m×k)@(k×n) product costs 2·m·k·n)."),
        (proj + attn - 2 * T * inner * d_model, "you left out the output projection (H·d_head → d_model)."),
        (proj + attn // 2, "you counted only one of the two attention products: "
                           "QKᵀ and weights·V each cost 2·H·T²·d_head."),
        (proj + 4 * n_heads * T * T * d_model, "each head's QKᵀ and weights·V work in d_head dimensions, not d_model."),
        (proj // 4 * 2 + attn, "you counted one input projection instead of three: "
                               "Q, K and V each cost 2·T·d_model·H·d_head."),
        (attn, "you left out the projections (Q, K, V and output): they cost 8·T·d_model·H·d_head FLOPs."),
        (proj, "you left out the attention products QKᵀ and weights·V (4·H·T²·d_head FLOPs)."),
    ]


# ----------------------------------------------------------------------------- checks


@check_of("split_heads")
def check_split_heads(split_heads, x: torch.Tensor, n_heads: int) -> None:
    """Compare ``split_heads(x, n_heads)`` with slicing the features into heads."""
    got = call_learner(split_heads, x, n_heads, name="split_heads")
    B, T, d = x.shape
    what = f"split_heads(x of shape {tuple(x.shape)}, n_heads={n_heads})"
    if isinstance(got, torch.Tensor) and tuple(got.shape) == (B, T, n_heads, d // n_heads) and T != n_heads:
        raise fail(what, MISSING_TRANSPOSE_SPLIT)
    expect_close(got, oracle_split_heads(x, n_heads), what=what, atol=0, rtol=0, diagnoses=lambda: [
        (_split_variant(x, n_heads, "no_transpose"), NO_TRANSPOSE_SPLIT),
        (_split_variant(x, n_heads, "interleaved"), INTERLEAVED_SPLIT),
        (x.reshape(B, T, n_heads, d // n_heads), MISSING_TRANSPOSE_SPLIT),
    ])


@check_of("merge_heads")
def check_merge_heads(merge_heads, x: torch.Tensor) -> None:
    """Compare ``merge_heads(x)`` with concatenating the heads' features."""
    got = call_learner(merge_heads, x, name="merge_heads")
    what = f"merge_heads(x of shape {tuple(x.shape)})"
    expect_close(got, oracle_merge_heads(x), what=what, atol=0, rtol=0, diagnoses=lambda: [
        (_merge_variant(x, "no_transpose"), NO_TRANSPOSE_MERGE),
        (_merge_variant(x, "interleaved"), INTERLEAVED_MERGE),
    ])


@check_of("merge_heads")
def check_round_trip(split_heads, merge_heads, x: torch.Tensor, n_heads: int) -> None:
    """merge_heads(split_heads(x)) must give x back exactly."""
    split = call_learner(split_heads, x, n_heads, name="split_heads")
    back = call_learner(merge_heads, split, name="merge_heads")
    expect_close(back, x, what=f"merge_heads(split_heads(x of shape {tuple(x.shape)}, {n_heads}))", atol=0, rtol=0)


@check_of("multi_head_attention")
def check_mha(mha, query, key, value, in_w, in_b, out_w, out_b, n_heads: int, mask=None) -> None:
    """Compare ``multi_head_attention`` with nn.MultiheadAttention (copied weights); diagnose classic mistakes."""
    args = (query, key, value, in_w, in_b, out_w, out_b, n_heads)
    result = call_learner(mha, *args, *(() if mask is None else (mask,)), name="multi_head_attention")
    want_out, want_w = oracle_mha(*args, mask)
    out, weights = expect_pair(result, what="multi_head_attention", shapes=(want_out.shape, want_w.shape))
    what = (f"multi_head_attention(query{tuple(query.shape)}, key{tuple(key.shape)}, n_heads={n_heads}"
            + (f", mask{tuple(mask.shape)})" if mask is not None else ")"))
    B, T_q, T_k = query.shape[0], query.shape[1], key.shape[1]
    if isinstance(weights, torch.Tensor) and tuple(weights.shape) == (B, n_heads, T_q, T_k):
        raise CheckFailed(f"{what}: weights: you returned one map per head (B, H, T_q, T_k); return their average "
                          f"over the heads, shape {(B, T_q, T_k)}, as nn.MultiheadAttention does.")
    cases = None

    def diag(index):
        nonlocal cases
        cases = cases if cases is not None else mha_diagnoses(*args, mask=mask)
        return [(res[index], msg) for msg, res in cases]

    # The output first: most mistakes (projection, scale, head order) show there.
    expect_close(out, want_out, what=f"{what}: output", diagnoses=lambda: diag(0))
    expect_close(weights, want_w, what=f"{what}: weights", diagnoses=lambda: diag(1))


def random_mha_inputs(batch: int, t_q: int, t_k: int, d_model: int, *, dtype=torch.float32, seed: int = 0,
                      bias: bool = True):
    """(query, key, value, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias), fixed seed.

    Weights are scaled by 1/√d_model like a default-initialised layer, so that logits are O(1).
    """
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)

    query, key, value = randn(batch, t_q, d_model), randn(batch, t_k, d_model), randn(batch, t_k, d_model)
    s = 1.5 / math.sqrt(d_model)
    in_w, out_w = randn(3 * d_model, d_model, scale=s), randn(d_model, d_model, scale=s)
    in_b, out_b = (randn(3 * d_model, scale=0.5), randn(d_model, scale=0.5)) if bias else (None, None)
    return query, key, value, in_w, in_b, out_w, out_b


@check_of("attention_flops")
def check_attention_flops(attention_flops, T: int, d_model: int, n_heads: int, d_head: int | None = None) -> None:
    """Compare ``attention_flops`` with torch's FLOP count of an explicit computation (:func:`oracle_flops`)."""
    args = (T, d_model, n_heads) if d_head is None else (T, d_model, n_heads, d_head)
    got = call_learner(attention_flops, *args, name="attention_flops")
    what = f"attention_flops(T={T}, d_model={d_model}, n_heads={n_heads}" + (
        f", d_head={d_head})" if d_head is not None else ")")
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if not isinstance(got, numbers.Real):
        raise CheckFailed(f"{what}: expected a number (int), got {type(got).__name__}.")
    want = oracle_flops(T, d_model, n_heads, d_head)
    if got == want:
        return
    for wrong, message in flops_diagnoses(T, d_model, n_heads, d_head):
        if got == wrong:
            raise CheckFailed(f"{what} = {got}: {message}")
    why = number_mismatch(got, want, {"T": T, "d_model": d_model, "n_heads": n_heads,
                                      "d_head": d_head or d_model // n_heads})
    raise CheckFailed(f"{what} = {got}, expected {want} (torch.utils.flop_counter counts {want}): {why}",
                      reason=f"the count differs from the expected one: {why}", what=what, detail=why, level=PATTERN)


@check_of("attention_flops")
def check_attention_flops_known_values(attention_flops) -> None:
    """T=4, d_model=8, 2 heads: projections 4·(2·4·8·8) = 2048, QKᵀ and weights·V 2·(2·2·4·4·4) = 512."""
    for args, want in [((4, 8, 2), 2560), ((1, 1, 1), 12), ((4, 8, 2, 8), 5120)]:
        got = call_learner(attention_flops, *args, name="attention_flops")
        if got != want:
            for wrong, message in flops_diagnoses(*args):
                if got == wrong:
                    raise CheckFailed(f"attention_flops{args} = {got}: {message}")
            raise CheckFailed(f"attention_flops{args} = {got}, expected {want}.")


# ----------------------------------------------------------------------------- properties


def _mha_call(p, query, key, value, mask):
    args = (query, key, value, p.get("in_w"), p.get("in_b"), p.get("out_w"), p.get("out_b"), p.get("n_heads"))
    return p.call(*args, *(() if mask is None else (mask,)))


def _mha_properties(p) -> str | None:
    """Weights: rows sum to 1, masked keys 0. Permuting the keys and values together must not change
    the output (attention works on sets); positions mixed with features break that."""
    query, key, value, mask = p.get("query"), p.get("key"), p.get("value"), p.get("mask")
    result = _mha_call(p, query, key, value, mask)
    if not (isinstance(result, tuple) and len(result) == 2 and all(isinstance(r, torch.Tensor) for r in result)):
        return None
    out, weights = result
    B, T_q, T_k = query.shape[0], query.shape[1], key.shape[1]
    if tuple(weights.shape) == (B, T_q, T_k):
        keep = None if mask is None else mask.bool().expand(B, T_q, T_k)
        found = rows_sum_to_one(weights, keep) or (masked_keys_get_zero(weights, keep) if keep is not None else None)
        if found:
            return found
    if mask is not None or T_k < 2:
        return None
    perm = torch.roll(torch.arange(T_k), 1)
    moved = _mha_call(p, query, key[:, perm], value[:, perm], None)
    if isinstance(moved, tuple) and isinstance(moved[0], torch.Tensor) and moved[0].shape == out.shape and \
            not torch.allclose(moved[0].double(), out.double(), atol=1e-4, rtol=1e-3):
        return Diag("reordering the keys and values together changed your output, but attention treats them as a "
                    "set: positions got mixed with features or heads (a reshape straight to (B, H, T, d_head) "
                    "without the transpose, or a merge that skips swapping H and T back).", sections.MHA_COMPUTED)
    return None


def _flops_properties(p) -> str | None:
    """With d_head = d_model / n_heads, the count does not depend on the number of heads."""
    T, d_model, d_head = p.get("T"), p.get("d_model"), p.get("d_head")
    if d_head is not None or d_model % 2 or T is None:
        return None
    one = p.call(T, d_model, 1)
    two = p.call(T, d_model, 2)
    if isinstance(one, torch.Tensor):
        one = one.item()
    if isinstance(two, torch.Tensor):
        two = two.item()
    if isinstance(one, (int, float)) and isinstance(two, (int, float)) and one != two:
        return Diag(f"with d_head = d_model / n_heads the cost does not depend on the number of heads, but yours "
                    f"gives {one} for 1 head and {two} for 2 heads: some term uses d_model where the per-head width "
                    "d_head belongs (or counts the heads twice).", sections.HEAD_DIM)
    return None


def _split_self_check(fn) -> None:
    check_split_heads(fn, torch.arange(2 * 3 * 8, dtype=torch.float32).reshape(2, 3, 8), 2)
    check_split_heads(fn, torch.randn(2, 4, 12, generator=torch.Generator().manual_seed(0)), 4)


def _merge_self_check(fn) -> None:
    check_merge_heads(fn, torch.randn(2, 3, 5, 4, generator=torch.Generator().manual_seed(1)))
    check_merge_heads(fn, torch.randn(1, 4, 4, 2, generator=torch.Generator().manual_seed(2)))


_MASK_HEAD_AXIS = CrashHint(
    r"The size of tensor a \(\d+\) must match the size of tensor b \(\d+\) at non-singleton dimension",
    lambda m, call: ("the mask has no head axis: the scores are (B, H, T_q, T_k), and broadcasting lines a 3-dim "
                     "mask (B, ·, T_k) up from the right, so its batch axis meets the heads. Give the mask a head "
                     "axis: mask[:, None] (or mask.unsqueeze(1)).")
    if isinstance(call.args.get("mask"), torch.Tensor) and call.args["mask"].dim() == 3 else None)

declare("split_heads", chapter="multihead", args=("x", "n_heads"), self_check=_split_self_check)
declare("merge_heads", chapter="multihead", args=("x",), self_check=_merge_self_check)
declare("multi_head_attention", chapter="multihead",
        args=("query", "key", "value", "in_proj_weight", "in_proj_bias", "out_proj_weight", "out_proj_bias",
              "n_heads", "mask"),
        helpers=("split_heads", "merge_heads"),
        properties=(Property("weights sum to 1 and skip masked keys; keys and values are a set", _mha_properties),),
        crash_hints=(_MASK_HEAD_AXIS,))
declare("attention_flops", chapter="multihead", args=("T", "d_model", "n_heads", "d_head"),
        properties=(Property("the cost does not depend on the number of heads when d_head = d_model / n_heads",
                             _flops_properties),))


# ----------------------------------------------------------------------------- learner guidance

# Graded function -> the heading of the book section to reread when it fails.
REREAD = {
    "split_heads": "How is multi-head attention computed?",
    "merge_heads": "How is multi-head attention computed?",
    "multi_head_attention": "How is multi-head attention computed?",
    "attention_flops": "Why does each head work in a lower dimension?",
}

# Graded function -> progressive hints: each leads further without giving the code away.
HINTS = {
    "split_heads": [
        "Head h owns a contiguous block of d_head features. Which axis of x has to be cut into (H, d_head)?",
        "After that reshape the shape is (B, T, H, d_head); the answer wants H before T. Which operation swaps "
        "two axes without touching the data?",
        "Do not reshape directly to (B, H, T, d_head): a reshape keeps the memory order, so it would cut across "
        "positions instead of across features.",
    ],
    "merge_heads": [
        "merge_heads undoes split_heads: apply the inverse steps in the reverse order.",
        "First bring the T axis back in front of H, then flatten (H, d_head) into one axis of H·d_head.",
        "After a transpose the tensor is not contiguous, so view fails; reshape copies when it must.",
    ],
    "multi_head_attention": [
        "in_proj_weight stacks W_Q, W_K and W_V along its first axis; each is (d_model, d_model) and is applied "
        "like a Linear layer: x times its transpose, plus the matching slice of the bias.",
        "Split q, k and v into heads, run scaled dot-product attention on every head at once, and divide the "
        "logits by the square root of the width of one head, not of d_model.",
        "Merge the heads back and apply the output projection. Masks are the same for every head: give them a "
        "head axis so they broadcast. Average the weights over the heads.",
    ],
    "attention_flops": [
        "Count only the matrix products; an (m×k) by (k×n) product costs 2·m·k·n FLOPs (one multiply and one add "
        "per term).",
        "There are four projections (Q, K, V and output), each between d_model and H·d_head features on T tokens.",
        "Each head then computes a T×T score matrix and multiplies it by a T×d_head value matrix: two products per "
        "head, both of width d_head.",
    ],
}


# What answers may not call (read by the grader's static check; see autograder/banned.py).
BANNED = {
    "*": ["torch.nn.MultiheadAttention", "torch.nn.functional.multi_head_attention_forward",
          "torch.nn.functional.scaled_dot_product_attention", "torch.utils.flop_counter"],
}
