"""Checks for the masking exercise: padding_mask, causal_mask, masked_softmax, attention_mask.

Oracles are independent of any learner code and of qkv's own demo code: explicit
loops over positions, ``torch.tril``, and ``torch.softmax`` on logits filled with
``-inf`` in float64 with NaN (fully masked rows) replaced by 0. Masks follow
``torch.nn.functional.scaled_dot_product_attention``: True = may attend.
"""

from __future__ import annotations

import torch

from qkv.checks import sections
from qkv.checks.core import NAMED, PATTERN, CheckFailed, Diagnosis, call_learner, expect_close, fail, last_call
from qkv.checks.graded import check_of
from qkv.checks.patterns import shape_mismatch
from qkv.checks.properties import masked_keys_get_zero
from qkv.checks.registry import Diag, Property, declare

# ----------------------------------------------------------------------------- oracles


def oracle_padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """Explicit loop: [b, j] = j < lengths[b]."""
    out = torch.zeros(len(lengths), max_len, dtype=torch.bool)
    for b, n in enumerate(lengths.tolist()):
        for j in range(max_len):
            out[b, j] = j < n
    return out


def oracle_causal_mask(n: int) -> torch.Tensor:
    return torch.tril(torch.ones(n, n, dtype=torch.bool))


def oracle_masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """float64 softmax with -inf at masked keys; the NaN of fully masked rows becomes 0."""
    filled = logits.double().masked_fill(~mask, float("-inf"))
    return torch.nan_to_num(torch.softmax(filled, dim=-1), nan=0.0).to(logits.dtype)


def oracle_attention_mask(q_lengths, k_lengths, t_q: int, t_k: int, causal: bool) -> torch.Tensor:
    """Explicit loop over (b, i, j): key real, query real (if q_lengths given), and j <= i if causal."""
    out = torch.zeros(len(k_lengths), 1, t_q, t_k, dtype=torch.bool)
    for b in range(len(k_lengths)):
        for i in range(t_q):
            for j in range(t_k):
                ok = j < int(k_lengths[b])
                if q_lengths is not None:
                    ok = ok and i < int(q_lengths[b])
                if causal:
                    ok = ok and j <= i
                out[b, 0, i, j] = ok
    return out


# ----------------------------------------------------------------------------- shared messages

POLARITY = Diag("the mask polarity is inverted: True means 'may attend' (a real token, or a key that is "
                "not in the future), as in F.scaled_dot_product_attention. "
                "(nn.MultiheadAttention uses the opposite convention; this exercise does not.)", sections.MASK_POLARITY)
AFTER_SOFTMAX = Diag("the mask was applied after the softmax: masked weights are zero but the others no longer "
                     "sum to 1. Fill masked logits before the softmax.", sections.MINUS_INF)
FULL_ROW_NAN = Diag("a fully masked row gave NaN: a softmax over a row of -inf is exp(-inf - (-inf)) = 0/0. "
                    "Give rows with no allowed key zero weights.", sections.MINUS_INF)
FULL_ROW_UNIFORM = Diag("a fully masked row came out uniform (1/T_k per key): with a finite fill value every "
                        "logit of that row is equal, so softmax spreads the weight over padding. "
                        "Set such rows to zero.", sections.MINUS_INF)
FP16_MINUS_1E9 = Diag("-1e9 does not fit in float16 (its largest magnitude is 65504): it overflows to -inf "
                      "(or masked_fill refuses it). Use torch.finfo(logits.dtype).min, the most negative finite "
                      "number of the input's dtype.", sections.MINUS_INF)
STRICT_TRIANGLE = Diag("off by one: the diagonal must be True. Position i may attend to itself (j <= i); "
                       "with a strict triangle (j < i) the first token has no key at all.", sections.CAUSAL)
QUERIES_NOT_KEYS = Diag("you masked queries (rows, dim -2) instead of keys (columns, dim -1). Padding must stop "
                        "every query from looking at pad *keys*: mask [..., i, j] where key j is padding.",
                        sections.MASK_KEYS)


def _expect_bool(actual, shape: tuple, what: str) -> None:
    if not isinstance(actual, torch.Tensor):
        raise CheckFailed(f"{what}: expected a torch.Tensor, got {type(actual).__name__}.")
    if actual.dtype != torch.bool:
        raise CheckFailed(f"{what}: expected a bool mask (True = may attend), got dtype {actual.dtype}. "
                          "A comparison such as a < b already gives a bool tensor.")
    if tuple(actual.shape) != shape:
        why = shape_mismatch(tuple(actual.shape), shape, last_call().args if last_call() else {})
        raise fail(what, f"expected shape {shape}, got {tuple(actual.shape)}" + (f": {why}" if why else "."),
                   level=PATTERN)


# ----------------------------------------------------------------------------- padding_mask


def padding_mask_diagnoses(lengths: torch.Tensor, max_len: int) -> list[Diagnosis]:
    pos = torch.arange(max_len)[None, :]
    n = lengths[:, None]
    return [
        (pos >= n, Diag("the polarity is inverted: True must mark the real tokens (j < length), False the padding.",
                        sections.MASK_POLARITY)),
        (pos <= n, "off by one: positions start at 0, so a sequence of length n has real tokens at 0 … n-1 (j < n)."),
        (pos < n - 1, "off by one: a sequence of length n has n real tokens, at positions 0 … n-1 (j < n)."),
    ]


@check_of("padding_mask")
def check_padding_mask(padding_mask, lengths: torch.Tensor, max_len: int) -> None:
    """Compare ``padding_mask(lengths, max_len)`` with an explicit loop."""
    got = call_learner(padding_mask, lengths, max_len, name="padding_mask")
    what = f"padding_mask(lengths={lengths.tolist()}, max_len={max_len})"
    expected = oracle_padding_mask(lengths, max_len)
    if isinstance(got, torch.Tensor) and tuple(got.shape) == (max_len, len(lengths)) and max_len != len(lengths):
        raise CheckFailed(f"{what}: got shape {tuple(got.shape)}, "
                          f"the transpose of (B, max_len) = {tuple(expected.shape)}.")
    _expect_bool(got, tuple(expected.shape), what)
    expect_close(got, expected, what=what, diagnoses=lambda: padding_mask_diagnoses(lengths, max_len))


# ----------------------------------------------------------------------------- causal_mask


def causal_mask_diagnoses(n: int) -> list[Diagnosis]:
    ones = torch.ones(n, n, dtype=torch.bool)
    return [
        (torch.tril(ones, diagonal=-1), STRICT_TRIANGLE),
        (torch.triu(ones), Diag("this is the transpose: row i is the query and may see keys j <= i (the lower "
                                "triangle); the upper triangle lets every token see the future.", sections.CAUSAL)),
        (torch.triu(ones, diagonal=1), POLARITY),
        (ones, "every entry is True: nothing is masked, so every token sees the future."),
    ]


@check_of("causal_mask")
def check_causal_mask(causal_mask, n: int) -> None:
    """Compare ``causal_mask(n)`` with ``torch.tril`` of ones."""
    got = call_learner(causal_mask, n, name="causal_mask")
    what = f"causal_mask({n})"
    _expect_bool(got, (n, n), what)
    expect_close(got, oracle_causal_mask(n), what=what, diagnoses=lambda: causal_mask_diagnoses(n))


# ----------------------------------------------------------------------------- masked_softmax


def masked_softmax_diagnoses(logits: torch.Tensor, mask: torch.Tensor) -> list[Diagnosis]:
    x = logits.double()
    keep = mask.expand(logits.shape)
    plain = torch.softmax(x, dim=-1)
    dead = ~keep.any(dim=-1, keepdim=True)
    uniform_dead = torch.where(dead, torch.full_like(plain, 1.0 / logits.shape[-1]), oracle_masked_softmax(x, keep))
    return [
        (oracle_masked_softmax(x, ~keep), POLARITY),
        (plain * keep, AFTER_SOFTMAX),
        (plain, "the mask was ignored: masked keys still receive weight."),
        (uniform_dead, FULL_ROW_UNIFORM),
    ]


@check_of("masked_softmax")
def check_masked_softmax(masked_softmax, logits: torch.Tensor, mask: torch.Tensor) -> None:
    """Compare ``masked_softmax(logits, mask)`` with a float64 ``-inf`` softmax whose NaN rows become 0."""
    what = (f"masked_softmax(logits {tuple(logits.shape)} {str(logits.dtype).removeprefix('torch.')}, "
            f"mask {tuple(mask.shape)})")
    try:
        got = call_learner(masked_softmax, logits, mask, name="masked_softmax")
    except CheckFailed as failure:
        if "without overflow" in str(failure.__cause__) and logits.dtype in (torch.float16, torch.bfloat16):
            raise fail(what, Diag(f"{FP16_MINUS_1E9} (error: {failure.__cause__})",
                                  FP16_MINUS_1E9.reread)) from failure.__cause__
        raise
    expected = oracle_masked_softmax(logits, mask)
    keep = mask.expand(logits.shape)
    dead = ~keep.any(dim=-1)  # (...,): rows with no allowed key
    if isinstance(got, torch.Tensor) and got.shape == expected.shape:
        if dead.any() and torch.isnan(got[dead]).any():
            extra = (" (If you filled with -1e9: in float16 it becomes -inf too. Use torch.finfo(logits.dtype).min.)"
                     if logits.dtype == torch.float16 else "")
            raise fail(what, Diag(f"{FULL_ROW_NAN}{extra}", FULL_ROW_NAN.reread))
        if logits.dtype == torch.float16 and torch.isnan(got).any() and not torch.isnan(expected).any():
            raise fail(what, Diag(f"NaN in float16. {FP16_MINUS_1E9}", FP16_MINUS_1E9.reread))
    try:
        expect_close(got, expected, what=what, diagnoses=lambda: masked_softmax_diagnoses(logits, mask))
    except CheckFailed as failure:
        if failure.level < NAMED and isinstance(got, torch.Tensor):
            leak = got.detach().double().masked_fill(keep, 0.0).abs().nan_to_num(0.0)
            if (leak[~dead] > 1e-3).any() if (~dead).any() else False:
                low = logits.double().masked_fill(~keep, float("inf")).min().item()
                raise fail(what, Diag(
                    f"masked keys received weight (up to {leak.max().item():.3g}). A fixed fill value such "
                    f"as -1000 or -1e4 is not 'small enough' when real logits go as low as {low:.4g}: use "
                    "torch.finfo(logits.dtype).min (masked_fill replaces the logit, it does not add to it).",
                    sections.MINUS_INF)) from None
        raise


# ----------------------------------------------------------------------------- attention_mask


def _attention_mask_variant(q_lengths, k_lengths, t_q, t_k, causal, *, keys=True, queries=True,
                            rows_from_keys=False, strict=False, invert=False, force_causal=None):
    b = len(k_lengths)
    i = torch.arange(t_q)[None, :, None]
    j = torch.arange(t_k)[None, None, :]
    mask = torch.ones(b, t_q, t_k, dtype=torch.bool)
    if keys:
        mask &= j < k_lengths[:, None, None]
    if queries and q_lengths is not None:
        mask &= i < q_lengths[:, None, None]
    if rows_from_keys:
        mask &= i < k_lengths[:, None, None]
    use_causal = causal if force_causal is None else force_causal
    if use_causal:
        mask &= (j < i) if strict else (j <= i)
    mask = mask[:, None]
    return ~mask if invert else mask


def attention_mask_diagnoses(q_lengths, k_lengths, t_q, t_k, causal) -> list[Diagnosis]:
    args = (q_lengths, k_lengths, t_q, t_k, causal)
    v = _attention_mask_variant
    cases = [(v(*args, invert=True), POLARITY)]
    if q_lengths is not None:
        cases.append((v(*args, keys=False), QUERIES_NOT_KEYS))  # only the padded query rows masked
    cases += [
        (v(*args, keys=False, queries=False, rows_from_keys=True), QUERIES_NOT_KEYS),  # rows cut at k_lengths
        (v(*args, keys=False, queries=False), "padding keys were not masked: every query must ignore keys at "
                                               "positions j >= k_lengths[b]."),
    ]
    if q_lengths is not None:
        cases.append((v(*args, queries=False), "padded queries (i >= q_lengths[b]) must attend to nothing: "
                                               "mask their rows too when q_lengths is given."))
    if causal:
        cases += [(v(*args, strict=True), STRICT_TRIANGLE),
                  (v(*args, force_causal=False), Diag("causal=True but no causal mask was applied: query i must not "
                                                      "see keys j > i.", sections.CAUSAL))]
    elif t_q == t_k:
        cases.append((v(*args, force_causal=True), Diag("a causal mask was applied although causal=False. Only "
                                                        "decoder self-attention is causal; encoder and "
                                                        "cross-attention are not.", sections.MASK_PLACES)))
    return [(m, msg) for m, msg in cases if m.shape[-2:] == (t_q, t_k)]


@check_of("attention_mask")
def check_attention_mask(attention_mask, q_lengths, k_lengths, t_q: int, t_k: int, causal: bool = False) -> None:
    """Compare ``attention_mask(q_lengths, k_lengths, t_q, t_k, causal)`` with an explicit triple loop."""
    got = call_learner(attention_mask, q_lengths, k_lengths, t_q, t_k, causal, name="attention_mask")
    ql = None if q_lengths is None else q_lengths.tolist()
    what = f"attention_mask(q_lengths={ql}, k_lengths={k_lengths.tolist()}, t_q={t_q}, t_k={t_k}, causal={causal})"
    expected = oracle_attention_mask(q_lengths, k_lengths, t_q, t_k, causal)
    if isinstance(got, torch.Tensor) and tuple(got.shape) == (len(k_lengths), t_q, t_k):
        raise CheckFailed(f"{what}: got shape {tuple(got.shape)}; return (B, 1, T_q, T_k) = {tuple(expected.shape)} "
                          "so that the mask broadcasts over the heads dimension.")
    _expect_bool(got, tuple(expected.shape), what)
    expect_close(got, expected, what=what,
                 diagnoses=lambda: attention_mask_diagnoses(q_lengths, k_lengths, t_q, t_k, causal))


@check_of("attention_mask")
def check_attention_mask_drives_sdpa(attention_mask, seed: int = 0) -> None:
    """Property: with the learner's decoder self-attention mask, torch's fused attention leaves
    the outputs of real positions 0..t-1 unchanged when a later token t is edited."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([6, 4])
    mask = call_learner(attention_mask, lengths, lengths, 6, 6, True, name="attention_mask")
    _expect_bool(mask, (2, 1, 6, 6), "attention_mask(lengths, lengths, 6, 6, causal=True)")
    x = torch.randn(2, 1, 6, 8, generator=gen, dtype=torch.float64)
    edited = x.clone()
    edited[:, :, 3] += 10.0  # change token 3 of every sequence
    out = torch.nn.functional.scaled_dot_product_attention(x, x, x, attn_mask=mask)
    out_edited = torch.nn.functional.scaled_dot_product_attention(edited, edited, edited, attn_mask=mask)
    if not torch.allclose(out[:, :, :3], out_edited[:, :, :3]):
        raise fail("attention_mask(..., causal=True)", Diag("editing token 3 changed the outputs of tokens 0-2: your "
                                                            "decoder mask lets earlier positions see a later token.",
                                                            sections.CAUSAL))


# ----------------------------------------------------------------------------- properties


def _padding_counts(p) -> str | None:
    """Row b of a padding mask holds lengths[b] True values, all before the False ones."""
    lengths, max_len = p.get("lengths"), p.get("max_len")
    got = p.call(lengths, max_len)
    if not isinstance(got, torch.Tensor) or got.dtype != torch.bool or tuple(got.shape) != (len(lengths), max_len):
        return None
    counts = got.sum(-1)
    want = lengths.clamp(0, max_len)
    if torch.equal(counts, want):
        return None
    if torch.equal(counts, max_len - want):
        return Diag("each row has max_len − lengths[b] True values: you marked the padding, not the real tokens. "
                    "Row b must be True at positions 0 … lengths[b] − 1.", sections.MASK_POLARITY)
    diff = (counts - want).unique().tolist()
    if len(diff) == 1:
        k = diff[0]
        return (f"every row has {abs(k)} True value{'s' if abs(k) > 1 else ''} too {'many' if k > 0 else 'few'}: row b "
                "must have exactly lengths[b] True values (positions 0 … lengths[b] − 1): "
                "an off-by-one in the comparison.")
    return "row b must have exactly lengths[b] True values (the real tokens); yours have other counts."


def _masked_softmax_properties(p) -> str | None:
    """Masked keys get 0; changing a masked logit changes nothing; rows with an allowed key sum to 1."""
    logits, mask = p.get("logits"), p.get("mask")
    got = p.call(logits, mask)
    if not isinstance(got, torch.Tensor) or got.shape != logits.shape:
        return None
    keep = mask.expand(logits.shape)
    found = masked_keys_get_zero(got.nan_to_num(0.0), keep)
    if found:
        return found
    moved = logits.masked_fill(~keep, 3.0)   # a masked logit that would win if it counted
    again = p.call(moved, mask)
    if isinstance(again, torch.Tensor) and again.shape == got.shape and not torch.allclose(
            again.double(), got.double(), atol=1e-3, equal_nan=True):
        return Diag("changing the logits of masked keys changed your result: masked keys still count in the "
                    "softmax. Replace their logits (masked_fill) before the softmax instead of adding to them or "
                    "masking afterwards.", sections.MINUS_INF)
    live = keep.any(-1)
    sums = got.double().sum(-1)
    if live.any() and not torch.allclose(sums[live], torch.ones_like(sums[live]), atol=1e-2):
        return Diag("each row with at least one allowed key must sum to 1 over the keys; yours does not (the "
                    "weights were changed after the softmax without renormalising, or the softmax used the "
                    "wrong axis).", sections.MINUS_INF)
    return None


def _padding_self_check(fn) -> None:
    check_padding_mask(fn, torch.tensor([3, 1]), 4)
    check_padding_mask(fn, torch.tensor([5, 2, 0]), 5)


def _causal_self_check(fn) -> None:
    check_causal_mask(fn, 4)
    check_causal_mask(fn, 1)


declare("padding_mask", chapter="masking", args=("lengths", "max_len"), self_check=_padding_self_check,
        properties=(Property("row b has lengths[b] True values", _padding_counts),))
declare("causal_mask", chapter="masking", args=("n",), self_check=_causal_self_check)
declare("masked_softmax", chapter="masking", args=("logits", "mask"),
        properties=(Property("masked keys get 0 and do not influence the rest; live rows sum to 1",
                             _masked_softmax_properties),))
declare("attention_mask", chapter="masking", args=("q_lengths", "k_lengths", "t_q", "t_k", "causal"),
        helpers=("padding_mask", "causal_mask"))


def random_lengths(batch: int, max_len: int, gen: torch.Generator, *, min_len: int = 0) -> torch.Tensor:
    """int64 (batch,) lengths in [min_len, max_len], with the full length always present."""
    lengths = torch.randint(min_len, max_len + 1, (batch,), generator=gen)
    lengths[0] = max_len
    return lengths


# ----------------------------------------------------------------------------- learner guidance

# Graded function -> the heading of the book section to reread when it fails.
REREAD = {
    "padding_mask": "How do you mask padding in self-attention?",
    "causal_mask": "Why does the decoder need a causal mask?",
    "masked_softmax": "Why −inf and not 0? And is −1000 enough?",
    "attention_mask": "Where do the masks go in the encoder, the decoder and cross-attention?",
}

# Graded function -> progressive hints: each leads further without giving the code away.
HINTS = {
    "padding_mask": [
        "Position j of sequence b is real exactly when j is smaller than that sequence's length.",
        "Build a row of positions 0 … max_len-1 and compare it with the lengths; give the two tensors "
        "shapes (1, max_len) and (B, 1) so that one comparison broadcasts to (B, max_len).",
        "A comparison already returns a bool tensor; no loop and no conversion are needed.",
    ],
    "causal_mask": [
        "Entry [i, j] says whether query i may look at key j. Which keys are in query i's past or present?",
        "Compare a column of query positions with a row of key positions; broadcasting gives the (n, n) grid.",
        "Check the diagonal: a token may always attend to itself, so [i, i] must be True.",
    ],
    "masked_softmax": [
        "Replace the logits of masked keys by a number so negative that its exponential is 0, before the "
        "softmax; do not add it, and do not zero weights afterwards without renormalizing.",
        "The most negative finite number depends on the dtype: ask torch.finfo for the logits' dtype. "
        "A literal like -1e9 overflows in float16.",
        "A row whose keys are all masked has all-equal logits, so the softmax spreads weight evenly over "
        "padding. After the softmax, set every masked position to zero.",
    ],
    "attention_mask": [
        "Build the mask from pieces that broadcast: keys along the last dim, queries along dim -2, and a "
        "(T_q, T_k) causal grid; combine them with logical and.",
        "A key padding mask of shape (B, T_k) becomes (B, 1, 1, T_k); a query padding mask of shape "
        "(B, T_q) becomes (B, 1, T_q, 1).",
        "Apply the causal grid only when causal is True; if q_lengths is None, do not mask any query row. "
        "Expand the result to the full (B, 1, T_q, T_k) shape.",
    ],
}


# What answers may not call (read by the grader's static check; see autograder/banned.py).
BANNED = {
    "*": ["torch.tril", "torch.triu", "torch.Tensor.tril", "torch.Tensor.triu", "torch.tril_indices",
          "torch.triu_indices", "torch.linalg.solve_triangular", "torch.triangular_solve",
          "torch.Tensor.triangular_solve", "torch.nn.functional.scaled_dot_product_attention",
          "torch.nn.MultiheadAttention"],
}
