"""Explain why a learner's function raised: the likely mistake behind common exceptions.

:func:`explain` reads the exception's type name and message (all that survives the grader's
sandbox, which re-raises a learner exception as the nearest built-in type with the same
message) together with the arguments of the call (their names from the exercise's ``def``
line and their shapes), and returns one sentence naming the likely mistake, e.g.
"``cache_k`` (2, 2, 5, 8) and ``k_t`` (2, 2, 1, 8) differ only in dim 2: join them along
dim=2 (you used dim=1)".

Function-specific hints (declared with the function, :class:`~qkv.checks.registry.CrashHint`)
are tried first; the generic rules below apply to any function.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import torch

from qkv.checks.registry import Call, CrashHint, spec_of


def describe(value: Any) -> str:
    """A short description of an argument: ``(2, 4, 8) float32`` for a tensor, ``None``, ``3`` ..."""
    if isinstance(value, torch.Tensor):
        return f"{tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, dict):
        keys = list(value)[:6]
        return f"dict with keys {keys}{' …' if len(value) > 6 else ''}"
    if isinstance(value, (list, tuple)):
        return repr(value) if len(value) < 6 and len(repr(value)) < 60 else f"{type(value).__name__} of {len(value)}"
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else f"str of {len(value)} characters"
    return repr(value)


def _dims_differing(a: torch.Tensor, b: torch.Tensor) -> list[int]:
    return [i for i, (x, y) in enumerate(zip(a.shape, b.shape)) if x != y] if a.dim() == b.dim() else []


# ----------------------------------------------------------------------------- generic rules


def _cat_wrong_dim(m: re.Match, call: Call) -> str | None:
    used = int(m.group(1))
    tensors = list(call.tensors().items())
    for i, (na, a) in enumerate(tensors):
        for nb, b in tensors[i + 1:]:
            diff = _dims_differing(a, b)
            if len(diff) == 1 and diff[0] != used % max(a.dim(), 1):
                d = diff[0]
                neg = d - a.dim()
                return (f"`{na}` {tuple(a.shape)} and `{nb}` {tuple(b.shape)} differ only in dim {d} (= {neg}): "
                        f"concatenate along dim={d}, not dim={used}.")
    return (f"torch.cat joins tensors along one dim and every other dim must be equal: check the dim you "
            f"concatenate along (dim={used} here) and the shapes of the pieces.")


def _cat_ndims(m: re.Match, call: Call) -> str | None:
    a, b = int(m.group(1)), int(m.group(2))
    named = [f"`{n}` has {t.dim()}" for n, t in call.tensors().items() if t.dim() in (a, b)]
    extra = f" ({', '.join(named)})" if named else ""
    return (f"the tensors you concatenate have {a} and {b} dims{extra}: give the smaller one the missing axis first "
            "(x[:, :, None] or unsqueeze), so that only the concatenation axis differs.")


def _broadcast(m: re.Match, call: Call) -> str | None:
    a, b, dim = int(m.group(1)), int(m.group(2)), int(m.group(3))
    tensors = call.tensors()
    if not tensors:
        return None
    reversed_ = [f"`{n}` {tuple(t.shape)}" for n, t in tensors.items()
                 if t.dim() >= 3 and {t.shape[0], t.shape[-1]} == {a, b} and t.shape[0] != t.shape[-1]]
    if reversed_:
        return (f"sizes {a} and {b} sit at the two ends of {' and '.join(reversed_)}: a batched tensor seems to have "
                "had all its axes reversed. x.T on a tensor with more than 2 dims reverses *every* axis; swap only "
                "the last two with x.transpose(-2, -1) (or x.mT).")
    top = max(t.dim() for t in tensors.values())
    for name, t in tensors.items():
        if t.dim() < top or (t.dim() == top and "mask" in name):
            aligned = (1,) * (top - t.dim()) + tuple(t.shape)
            if dim < len(aligned) and aligned[dim] in (a, b) and aligned[dim] != 1 and t.dim() < top + 1:
                return (f"`{name}` {tuple(t.shape)} has fewer axes than the tensor it was combined with; broadcasting "
                        f"lines shapes up from the right, so its size-{aligned[dim]} axis met a size-"
                        f"{b if aligned[dim] == a else a} axis. Insert the missing axis where it belongs "
                        "(e.g. x[:, None] or unsqueeze) so that equal axes line up.")
    keep = " (`dim` is an argument: reduce with keepdim=True)" if "dim" in call.args else ""
    return (f"two tensors with incompatible shapes were combined elementwise (size {a} against size {b}). The usual "
            "causes: a reduction without keepdim=True (x.sum(dim) drops the axis, so it no longer broadcasts "
            f"back){keep}, an axis that needs a None/unsqueeze, or two tensors in different layouts "
            "(B, T, H, d) vs (B, H, T, d).")


def _matmul(m: re.Match, call: Call) -> str | None:
    text = m.group(0)
    tensors = call.tensors()
    k_like = [n for n, t in tensors.items() if t.dim() >= 2 and n.startswith("k")]
    parts = ["a matrix product needs the last dim of the left operand to equal the second-to-last dim of the "
             "right one."]
    if k_like:
        parts.append(f"For scores, transpose the keys: q @ {k_like[0]}.transpose(-2, -1) (one score per (query, key)).")
    weights = [n for n in call.args if "weight" in n or n.startswith("w_") or n == "params"]
    if weights:
        parts.append("A weight stored as (out_features, in_features), like nn.Linear's, is applied as x @ W.T "
                     "(or F.linear(x, W)).")
    if "batch1 must be a 3D tensor" in text or "batch2 must be a 3D tensor" in text:
        parts = ["torch.bmm takes 3-D tensors only; use @ (torch.matmul), which broadcasts over any leading dims."]
    return " ".join(parts)


def _dim_out_of_range(m: re.Match, call: Call) -> str | None:
    hi, got = int(m.group(2)), int(m.group(3))
    ndim = hi + 1
    named = [f"`{n}` {tuple(t.shape)}" for n, t in call.tensors().items() if t.dim() == ndim]
    who = f" ({', '.join(named)})" if named else ""
    return (f"dim {got} does not exist on a {ndim}-dim tensor{who}. The function must also accept inputs with fewer "
            "leading axes (no batch axis): index dims from the end (-1, -2) rather than from the front.")


def _unpack(m: re.Match, call: Call) -> str | None:
    expected = int(m.group(1))
    got = m.group(2)
    named = [f"`{n}` {tuple(t.shape)}" for n, t in call.tensors().items()
             if got is None or t.dim() == int(got)]
    who = f" ({', '.join(named[:2])})" if named else ""
    return (f"a shape was unpacked into {expected} names "
            f"but the tensor has {'more' if got is None else got} dims{who}. "
            "Read only the sizes you need, from the end (d = x.shape[-1], T = x.shape[-2]), so that inputs with "
            "more or fewer leading axes work.")


def _dtypes(m: re.Match, call: Call) -> str | None:
    dtypes = {n: str(t.dtype).removeprefix("torch.") for n, t in call.tensors().items() if t.dtype.is_floating_point}
    have = ", ".join(f"{n} is {d}" for n, d in dtypes.items())
    return ("tensors of different dtypes were combined. A tensor you create (torch.tensor, torch.ones, torch.arange, "
            "torch.rand) is float32/int64 unless you say otherwise: create it with dtype=x.dtype "
            "(or torch.ones_like(x))"
            + (f"; here {have}." if have else "."))


def _not_implemented_for(m: re.Match, call: Call) -> str | None:
    op, dtype = m.group(1), m.group(2)
    if dtype in ("Long", "Int", "Short", "Char", "Byte", "Bool"):
        return (f"an integer (or bool) tensor reached `{op.split('_')[0]}`, which needs floating point: torch.arange "
                "and comparisons give integer/bool tensors; convert with .float()/.to(x.dtype) or pass "
                "dtype=torch.float64 when you create it. (~ on a mask needs a bool tensor: mask.bool().)")
    if dtype in ("Half", "BFloat16"):
        return (f"`{op.split('_')[0]}` has no {dtype} kernel on this CPU: compute in float32 (x.float()) and cast the "
                "result back with .to(x.dtype).")
    return None


def _none_arg(m: re.Match, call: Call) -> str | None:
    nones = [n for n, v in call.args.items() if v is None]
    if not nones:
        return None
    names = ", ".join(f"`{n}`" for n in nones)
    return (f"{names} {'is' if len(nones) == 1 else 'are'} None in this call: an optional argument must be used only "
            "when it is given (if weight is not None: ...).")


def _signature(m: re.Match, call: Call) -> str | None:
    called = m.group(1)
    spec = spec_of(called) or spec_of(call.name)
    if spec is None or not spec.args:
        return None
    who = "your function" if called == call.name else f"your code called `{called}`, which"
    return (f"{who} does not take the exercise's arguments: keep the def line {spec.name}({', '.join(spec.args)}) "
            "as given (same parameters, same order, same defaults).")


def _zero_division(m: re.Match, call: Call) -> str | None:
    zeros = [n for n, v in call.args.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0]
    if len(zeros) == 1:
        return (f"`{zeros[0]}` is 0 in this call and your code divides by it: handle that case separately "
                "(e.g. no warm-up when warmup_steps is 0).")
    if zeros:
        names = ", ".join(f"`{n}`" for n in zeros)
        return (f"{names} are 0 in this call and your code divides by one of them: handle that case separately "
                "(e.g. no warm-up when warmup_steps is 0).")
    return "a division by zero: guard the case where the divisor (a count, a length, a sum) is 0."


def _key_error(m: re.Match, call: Call) -> str | None:
    key = m.group(1)
    for name, value in call.args.items():
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            return f"`{name}` has no key {key}; its keys are {sorted(value)}."
    return None


def _float_as_int(m: re.Match, call: Call) -> str | None:
    return ("a size or index is a float: `/` always gives a float in Python (8 / 2 = 4.0); use integer division "
            "`//` for sizes such as d_model // n_heads, or int(...).")


def _index_bound(m: re.Match, call: Call) -> str | None:
    return ("an index ran past the end (valid indices of a size-n axis are 0 … n−1): an off-by-one in a loop bound "
            "(range(1, n + 1), <= where < was meant) or an index computed from the wrong length.")


def _view(m: re.Match, call: Call) -> str | None:
    return ("after a transpose/permute a tensor is not contiguous, so .view cannot reshape it: use .reshape "
            "(or .contiguous().view).")


def _bad_reshape(m: re.Match, call: Call) -> str | None:
    target = m.group(1)
    size = int(m.group(2))
    try:
        wanted = math.prod(int(s) for s in target.split(",") if s.strip() not in ("-1", ""))
    except ValueError:
        wanted = None
    tail = f" (those sizes multiply to {wanted})" if wanted else ""
    return (f"reshape/view to [{target}] does not fit a tensor of {size} elements{tail}: the sizes you computed do "
            "not match the tensor (e.g. read from the wrong axis of the input, or d_model used where d_head "
            "was meant).")


GENERIC: tuple[CrashHint, ...] = (
    CrashHint(r"Sizes of tensors must match except in dimension (\d+)", _cat_wrong_dim),
    CrashHint(r"Tensors must have same number of dimensions: got (\d+) and (\d+)", _cat_ndims),
    CrashHint(r"The size of tensor a \((\d+)\) must match the size of tensor b \((\d+)\) "
              r"at non-singleton dimension (\d+)",
              _broadcast),
    CrashHint(r"The expanded size of the tensor \((\d+)\) must match the existing size \((\d+)\)",
              "expand can only grow axes of size 1: insert a size-1 axis where the copies go (x[:, :, None]) and "
              "expand that one; the other sizes must stay as they are."),
    CrashHint(r"mat1 and mat2 shapes cannot be multiplied|Expected size for first two dimensions of batch2|"
              r"batch[12] must be a 3D tensor|size mismatch", _matmul),
    CrashHint(r"Dimension out of range \(expected to be in range of \[(-?\d+), (-?\d+)\], but got (-?\d+)\)",
              _dim_out_of_range),
    CrashHint(r"not enough values to unpack \(expected (\d+), got (\d+)\)", _unpack),
    CrashHint(r"too many values to unpack \(expected (\d+)",
              lambda m, c: f"a shape was unpacked into {m.group(1)} names but the tensor has more dims: read only "
                           "the sizes you need, from the end (d = x.shape[-1]), so that inputs with extra leading "
                           "axes work."),
    CrashHint(r"expected m1 and m2 to have the same dtype|must have the same dtype|expected scalar type|"
              r"Index put requires the source and destination dtypes match|Expected query, key, and value to have "
              r"the same dtype|result type \w+ can't be cast", _dtypes),
    CrashHint(r'"(\w+)" not implemented for \'(\w+)\'', _not_implemented_for),
    CrashHint(r"~ \(operator.invert\) is only implemented on integer and Boolean",
              "~ negates bool masks only: convert a 0/1 float mask with mask.bool() first (or use mask == 0)."),
    CrashHint(r"masked_fill_? only supports boolean masks",
              "masked_fill needs a bool mask: convert it with mask.bool() (a 0/1 integer mask is not a bool mask)."),
    CrashHint(r"value cannot be converted to type (?:c10::|at::)?(Half|BFloat16) without overflow",
              "the fill value does not fit the tensor's dtype: -1e9 overflows float16 (largest 65504). Use "
              "torch.finfo(x.dtype).min, the most negative finite number of that dtype."),
    CrashHint(r"Boolean value of Tensor with more than one value is ambiguous",
              "a tensor with several values was used in an if/and/or/not: combine masks elementwise with & | ~ and "
              "choose values with torch.where."),
    CrashHint(r"unsupported operand type\(s\) for .*'torch\.return_types\.(max|min)'",
              "torch.max(x, dim) and torch.min(x, dim) return (values, indices): use x.amax(dim, keepdim=True) "
              "(or x.max(dim, keepdim=True).values)."),
    CrashHint(r"NoneType", _none_arg),
    CrashHint(r"(\w+)\(\) (?:takes \d+ positional arguments? but \d+ (?:was|were) given|missing \d+ required "
              r"positional argument|got an unexpected keyword argument)", _signature),
    CrashHint(r"ZeroDivisionError", _zero_division),
    CrashHint(r"KeyError: ('[^']*'|\"[^\"]*\")", _key_error),
    CrashHint(r"'float' object cannot be interpreted as an integer|must be tuple of ints,\s*but (?:got|found) "
              r"(?:element of type )?float|only integer tensors of a single element can be converted to an index|"
              r"tensors used as indices must be long", _float_as_int),
    CrashHint(r"index -?\d+ is out of bounds for dimension|list index out of range|index out of range", _index_bound),
    CrashHint(r"view size is not compatible with input tensor's size and stride", _view),
    CrashHint(r"shape '\[([^\]]*)\]' is invalid for input of size (\d+)", _bad_reshape),
    CrashHint(r"diag\(\): Supports 1D or 2D tensors",
              "torch.diag takes one vector (or one matrix); for a batch of vectors use torch.diag_embed(p), which "
              "builds a diagonal matrix from the last dim."),
    CrashHint(r"outer: Expected 1-D argument|1D tensors expected",
              "torch.outer and torch.dot take 1-D vectors only; for batches use broadcasting: "
              "p.unsqueeze(-1) * p.unsqueeze(-2) (outer) or (a * b).sum(-1) (dot)."),
    CrashHint(r"expected a non-empty list of Tensors",
              "torch.cat/stack got an empty list: a loop produced nothing (an empty input such as a sequence of "
              "length 0 or an empty cache needs its own case, or no loop at all)."),
    CrashHint(r"expected Tensor as element (\d+) in argument \d+, but got (\w+)",
              lambda m, c: f"torch.cat/stack take a list of tensors; element {m.group(1)} is a {m.group(2)}."),
    CrashHint(r"UnicodeDecodeError",
              "bytes that are not valid UTF-8 on their own were decoded strictly: a character's bytes can be split "
              "across tokens. Join all the bytes first, then decode once with errors='replace'."),
    CrashHint(r"RecursionError|maximum recursion depth",
              "the function calls itself without end: a helper with the same name as the function, or a recursion "
              "without a base case."),
)


# ----------------------------------------------------------------------------- entry point


def explain(exc_type: str, message: str, call: Call, extra: tuple[CrashHint, ...] = ()) -> str | None:
    """The likely mistake behind ``exc_type: message`` raised by ``call``, or None."""
    text = f"{exc_type}: {message}"
    spec = spec_of(call.name)
    hints = tuple(extra) + (spec.crash_hints if spec else ()) + GENERIC
    for hint in hints:
        try:
            found = hint.explain(text, call)
        except Exception:  # an explanation must never hide the learner's error
            found = None
        if found:
            return found
    return None


def bind(name: str, fn: Callable, args: tuple, kwargs: dict) -> Call:
    """Name the arguments of a call: the exercise's parameter names (declared with the graded
    function), else the function's own signature, else argument positions."""
    spec = spec_of(name)
    names = spec.args if spec is not None and spec.args else ()
    if not names:
        try:
            import inspect

            params = [p for p in inspect.signature(fn).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            names = [p.name for p in params]
        except (TypeError, ValueError):
            names = []
    bound = {(names[i] if i < len(names) else f"argument {i + 1}"): a for i, a in enumerate(args)}
    bound.update(kwargs)
    return Call(name, bound)
