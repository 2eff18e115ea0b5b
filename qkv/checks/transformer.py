"""Checks for the transformer exercise: positional encodings, RoPE, dropout, the Noam schedule, blocks.

Oracles are independent of learner code and of qkv's demo code: explicit loops
with ``math.sin``/``math.cos`` for the sinusoidal encoding, complex
multiplication for RoPE, ``torch.nn.Dropout`` statistics, the formula of
Vaswani et al. (2017, §5.3) in plain Python for the schedule, and
``nn.MultiheadAttention`` + ``nn.LayerNorm`` + ``nn.Linear`` with copied weights
for the blocks. Oracles run in float64 and are cast to the input dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from qkv.checks import sections
from qkv.checks.core import CheckFailed, Diagnosis, call_learner, expect_close
from qkv.checks.graded import check_of
from qkv.checks.registry import Diag, Property, declare

# ----------------------------------------------------------------------------- sinusoidal encoding


def oracle_pe(n_positions: int, d_model: int) -> torch.Tensor:
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(...), by an explicit loop (float32)."""
    pe = torch.empty(n_positions, d_model, dtype=torch.float64)
    for pos in range(n_positions):
        for i in range(d_model // 2):
            angle = pos / 10000 ** (2 * i / d_model)
            pe[pos, 2 * i], pe[pos, 2 * i + 1] = math.sin(angle), math.cos(angle)
    return pe.to(torch.float32)


def pe_variants(n_positions: int, d_model: int) -> list[Diagnosis]:
    """Wrong sinusoidal encodings and the message that names each mistake."""
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]
    pair = torch.arange(d_model // 2, dtype=torch.float64)
    dim = torch.arange(d_model, dtype=torch.float64)

    def interleave(even, odd):
        return torch.stack([even, odd], dim=-1).flatten(-2)

    angle = pos / 10000 ** (2 * pair / d_model)
    cases = [
        (interleave(angle.cos(), angle.sin()),
         "sin and cos are swapped: Vaswani §3.5 puts sin on the even dims (2i) and cos on the odd dims (2i+1)."),
        (torch.cat([angle.sin(), angle.cos()], dim=-1),
         "you put all the sines in the first half and all the cosines in the second half (the tensor2tensor layout). "
         "Here the layout is interleaved: PE[pos, 2i] = sin, PE[pos, 2i+1] = cos."),
        (interleave((pos / 10000 ** (pair / d_model)).sin(), (pos / 10000 ** (pair / d_model)).cos()),
         "the frequency exponent is i/d_model with i the pair index; it must be 2i/d_model "
         "(the exponent runs over the even dims 0, 2, 4, ...)."),
    ]
    per_dim = pos / 10000 ** (dim / d_model)  # exponent from the dim index itself: odd dims get (2i+1)/d
    cases.append((torch.where(dim.long() % 2 == 0, per_dim.sin(), per_dim.cos()),
                   "the odd dims use the exponent (2i+1)/d_model: a sin/cos pair must share one frequency, "
                   "10000^(-2i/d_model), for both dims 2i and 2i+1."))
    times = pos * 10000 ** (2 * pair / d_model)
    cases.append((interleave(times.sin(), times.cos()),
                  "you multiplied pos by 10000^(2i/d_model); divide by it (the wavelengths grow from 2π to 10000·2π)."))
    return [(c.to(torch.float32), Diag(m, sections.SINUSOIDS)) for c, m in cases]


@check_of("sinusoidal_positional_encoding")
def check_pe(pe_fn, n_positions: int, d_model: int) -> None:
    """Compare ``pe_fn(n_positions, d_model)`` with the explicit loop; diagnose layout and frequency mistakes."""
    got = call_learner(pe_fn, n_positions, d_model, name="sinusoidal_positional_encoding")
    # float32 angles up to n_positions radians carry ~n·6e-8 rounding: 1e-4 leaves a margin up to a few hundred.
    expect_close(got, oracle_pe(n_positions, d_model), atol=1e-4, rtol=1e-4,
                 what=f"sinusoidal_positional_encoding({n_positions}, {d_model})",
                 diagnoses=lambda: pe_variants(n_positions, d_model))


@check_of("sinusoidal_positional_encoding")
def check_pe_known_values(pe_fn) -> None:
    """PE(0) = [0, 1, 0, 1]; for d = 4 the pairs have frequencies 1 and 1/100 (10000^(-2/4))."""
    expected = torch.tensor([[0.0, 1.0, 0.0, 1.0],
                             [math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)],
                             [math.sin(2), math.cos(2), math.sin(0.02), math.cos(0.02)]])
    got = call_learner(pe_fn, 3, 4, name="sinusoidal_positional_encoding")
    expect_close(got, expected, atol=1e-6, what="sinusoidal_positional_encoding(3, 4) (known values)",
                 diagnoses=lambda: pe_variants(3, 4))


# ----------------------------------------------------------------------------- RoPE


def oracle_rope(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Interleaved RoPE as complex multiplication: (x_2i + i x_2i+1) · e^{i m θ_i}, in float64."""
    d = x.shape[-1]
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = positions.to(torch.float64)[:, None] * theta                      # (T, d/2)
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(z * torch.polar(torch.ones_like(angles), angles)).flatten(-2).to(x.dtype)


def _rope_half_split(x, positions, base=10000.0):
    d = x.shape[-1]
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = positions.double()[:, None] * theta
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    x64 = x.double()
    rotated = torch.cat([-x64[..., d // 2:], x64[..., : d // 2]], dim=-1)
    return x64 * cos + rotated * sin


def rope_variants(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> list[Diagnosis]:
    t = x.shape[-2]
    cases = [
        (_rope_half_split(x, positions, base),
         "you rotated dim j with dim j + d/2 (the GPT-NeoX / Hugging Face 'rotate_half' layout). This exercise uses "
         "RoFormer's interleaved pairs: dim 2i is rotated with dim 2i+1."),
        (oracle_rope(x.double(), -positions.double(), base),
         "you rotated by -mθ_i (the transposed rotation): out[2i] = x[2i]·cos - x[2i+1]·sin, "
         "out[2i+1] = x[2i]·sin + x[2i+1]·cos."),
        (oracle_rope(x.double(), positions.double(), base ** 0.5),
         "the frequency exponent is i/d with i the pair index; it must be 2i/d: θ_i = base^(-2i/d)."),
    ]
    if not torch.equal(positions.double(), torch.arange(t, dtype=torch.float64)):
        cases.append((oracle_rope(x.double(), torch.arange(t), base),
                      "you used positions 0..T-1 instead of the `positions` argument (which may start at an offset, "
                      "e.g. after a KV cache)."))
    return [(c.double(), Diag(m, sections.ROPE)) for c, m in cases]


@check_of("apply_rope")
def check_rope(rope_fn, x: torch.Tensor, positions: torch.Tensor) -> None:
    """Compare ``rope_fn(x, positions)`` with complex multiplication; diagnose layout, sign and frequency."""
    got = call_learner(rope_fn, x, positions, name="apply_rope")
    # float32 angles m·θ carry ~m·6e-8 rounding; positions up to ~1000 stay within 1e-4.
    atol = 1e-4 if x.dtype == torch.float32 else None
    expect_close(got, oracle_rope(x, positions), atol=atol,
                 what=f"apply_rope(x{tuple(x.shape)} {x.dtype}, positions{tuple(positions.shape)})",
                 diagnoses=lambda: rope_variants(x, positions))


@check_of("apply_rope")
def check_rope_known_values(rope_fn) -> None:
    """x = [1, 0, 1, 0] at position m becomes [cos m, sin m, cos(m/100), sin(m/100)] (d = 4: θ = 1, 1/100)."""
    x = torch.tensor([[1.0, 0.0, 1.0, 0.0]] * 3, dtype=torch.float64)
    positions = torch.tensor([0, 1, 2])
    expected = torch.tensor([[math.cos(m), math.sin(m), math.cos(m / 100), math.sin(m / 100)] for m in range(3)],
                            dtype=torch.float64)
    got = call_learner(rope_fn, x, positions, name="apply_rope")
    expect_close(got, expected, what="apply_rope([1, 0, 1, 0] at positions 0, 1, 2) (known values)",
                 diagnoses=lambda: rope_variants(x, positions))


@check_of("apply_rope")
def check_rope_relative(rope_fn, d: int = 8, seed: int = 0) -> None:
    """(R_m q)·(R_n k) must depend only on m - n, and the rotation must keep norms."""
    gen = torch.Generator().manual_seed(seed)
    q, k = torch.randn(1, d, generator=gen, dtype=torch.float64), torch.randn(1, d, generator=gen, dtype=torch.float64)

    def rotate(v, m):
        out = call_learner(rope_fn, v, torch.tensor([m]), name="apply_rope")
        if not isinstance(out, torch.Tensor) or out.shape != v.shape:
            raise CheckFailed(f"apply_rope: expected a tensor of shape {tuple(v.shape)}, "
                              f"got {getattr(out, 'shape', type(out))}.")
        return out

    for m in (0, 3, 17):
        if not torch.allclose(rotate(q, m).norm(), q.norm(), rtol=1e-9):
            raise CheckFailed(f"apply_rope: the norm of a vector changed at position {m}; "
                              "RoPE is a rotation and must keep it.")
    for diff in (0, 2, -5):
        scores = [(rotate(q, m) * rotate(k, m - diff)).sum().item() for m in (5, 12, 40)]
        if max(scores) - min(scores) > 1e-9 * (1 + abs(scores[0])):
            raise CheckFailed(f"apply_rope: (R_m q)·(R_n k) should depend only on m - n, but for m - n = {diff} "
                              f"it gave {', '.join(f'{s:.6f}' for s in scores)} at m = 5, 12, 40. "
                              "Rotate each pair by the same angle m·θ_i for q and k.")
    if abs((rotate(q, 3) * rotate(k, 0)).sum().item() - (q * k).sum().item()) < 1e-9:
        raise CheckFailed("apply_rope: the score did not change with the distance m - n: are the positions used?")


# ----------------------------------------------------------------------------- dropout


def _as_tensor(result, what: str, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(result, torch.Tensor):
        raise CheckFailed(f"{what}: expected a torch.Tensor, got {type(result).__name__}.")
    if result.shape != like.shape:
        raise CheckFailed(f"{what}: expected shape {tuple(like.shape)}, got {tuple(result.shape)}.")
    if result.dtype != like.dtype:
        raise CheckFailed(f"{what}: expected dtype {like.dtype}, got {result.dtype}. Keep the input's dtype.")
    return result


@check_of("inverted_dropout")
def check_dropout_eval(dropout_fn, x: torch.Tensor, p: float) -> None:
    """At eval (training=False) inverted dropout is the identity."""
    got = _as_tensor(call_learner(dropout_fn, x, p, False, torch.Generator().manual_seed(0), name="inverted_dropout"),
                     f"inverted_dropout(x, p={p}, training=False)", x)
    diagnoses = [
        ((x * p).double(), "at test time you multiplied by the dropout rate p. With inverted dropout nothing happens "
                           "at test time: training already divided by (1 - p), so eval must return x unchanged."),
        ((x * (1 - p)).double(), "at test time you multiplied by the keep probability 1 - p: that is the *original* "
                                 "dropout (Srivastava et al. 2014). Inverted dropout rescales during training, so eval "
                                 "returns x unchanged."),
        ((x / (1 - p)).double(), "at test time you divided by 1 - p; eval must return x unchanged."),
    ]
    if got.shape == x.shape and bool(((got == 0) & (x != 0)).any()):
        raise CheckFailed(f"inverted_dropout(x, p={p}, training=False): you dropped elements at eval time. "
                          "With training=False dropout must be the identity.")
    expect_close(got, x, what=f"inverted_dropout(x, p={p}, training=False)", diagnoses=diagnoses, atol=0, rtol=0)


@check_of("inverted_dropout")
def check_dropout_train(dropout_fn, p: float, *, shape: tuple[int, ...] = (200_000,), dtype=torch.float32,
                        seed: int = 0) -> None:
    """In training: survivors are x/(1-p), the dropped fraction is p, the mean is kept (as nn.Dropout)."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(shape, generator=gen, dtype=torch.float64) + 0.5).to(dtype)   # no zeros in x
    n = x.numel()
    what = f"inverted_dropout(x{tuple(shape)} {str(dtype).removeprefix('torch.')}, p={p}, training=True)"
    got = _as_tensor(call_learner(dropout_fn, x, p, True, torch.Generator().manual_seed(seed + 1),
                                  name="inverted_dropout"), what, x)
    if torch.isnan(got).any() or torch.isinf(got).any():
        raise CheckFailed(f"{what}: the result has NaN or inf.")
    kept = got != 0
    dropped = 1 - kept.double().mean().item()
    ref_dropped, ref_mean = _torch_dropout_stats(p, n, seed)
    tol = 6 * math.sqrt(max(p * (1 - p), 1e-12) / n) + 1e-3
    if abs(dropped - p) > tol:
        hint = (" It looks like you dropped with probability 1 - p: p is the probability of *dropping* "
                "(as in torch.nn.Dropout(p)), so keep an element when a uniform draw is >= p."
                if abs(dropped - (1 - p)) <= tol else "")
        raise CheckFailed(f"{what}: {dropped:.4f} of the elements are zero; torch.nn.Dropout({p}) zeroes "
                          f"{ref_dropped:.4f} (expected about p = {p}).{hint}")
    if kept.any():
        ratio = (got[kept].double() / x[kept].double())
        want = 1 / (1 - p)
        rtol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}.get(dtype, 1e-5)
        if not torch.allclose(ratio, torch.full_like(ratio, want), rtol=rtol, atol=0):
            r = ratio.median().item()
            named = {1.0: "the survivors were not rescaled: divide them by 1 - p so that the mean is kept",
                     p: "the survivors were multiplied by p; divide them by the keep probability 1 - p",
                     1 / p if p > 0 else math.inf: "the survivors were divided by p; "
                                                   "divide by the keep probability 1 - p",
                     1 - p: "the survivors were multiplied by 1 - p; divide by 1 - p instead"}
            for value, message in named.items():
                if math.isclose(r, value, rel_tol=1e-2) and not math.isclose(value, want, rel_tol=1e-2):
                    raise CheckFailed(f"{what}: {message} (kept values are x·{r:.4g}, expected x·{want:.4g}).")
            raise CheckFailed(f"{what}: kept values should be x / (1 - p) = x·{want:.4g}; "
                              f"yours are x·{r:.4g} (median).")
    mean_ratio = got.double().sum().item() / x.double().sum().item()
    if abs(mean_ratio - ref_mean) > 0.02 + 12 * math.sqrt(p / ((1 - p) * n) if p < 1 else 0):
        raise CheckFailed(f"{what}: the mean changed by a factor {mean_ratio:.4f}; torch.nn.Dropout({p}) keeps it "
                          f"({ref_mean:.4f} on ones).")


def _torch_dropout_stats(p: float, n: int, seed: int) -> tuple[float, float]:
    """(fraction zeroed, mean) of torch.nn.Dropout(p) in training mode on n ones; the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = torch.nn.Dropout(p).train()(torch.ones(n, dtype=torch.float64))
    return (out == 0).double().mean().item(), out.mean().item()


@check_of("inverted_dropout")
def check_dropout_generator(dropout_fn, p: float = 0.5) -> None:
    """The mask comes from ``generator``: same seed, same mask; different seed, different mask."""
    x = torch.ones(1000)
    runs = [call_learner(dropout_fn, x, p, True, torch.Generator().manual_seed(s), name="inverted_dropout")
            for s in (7, 7, 8)]
    for r in runs:
        _as_tensor(r, f"inverted_dropout(x, p={p}, training=True)", x)
    if not torch.equal(runs[0], runs[1]):
        raise CheckFailed("inverted_dropout: two calls with generators seeded alike gave different masks. "
                          "Draw the random numbers with `generator=generator` "
                          "(e.g. torch.rand(..., generator=generator)).")
    if torch.equal(runs[0], runs[2]):
        raise CheckFailed("inverted_dropout: generators with different seeds gave the same mask: is the mask random?")


@check_of("inverted_dropout")
def check_dropout_edges(dropout_fn, x: torch.Tensor) -> None:
    """p = 0 is the identity; p = 1 gives zeros (not NaN from 0/0)."""
    gen = torch.Generator().manual_seed(0)
    got0 = _as_tensor(call_learner(dropout_fn, x, 0.0, True, gen, name="inverted_dropout"),
                      "inverted_dropout(x, p=0.0, training=True)", x)
    expect_close(got0, x, what="inverted_dropout(x, p=0.0, training=True)", atol=0, rtol=0)
    got1 = _as_tensor(call_learner(dropout_fn, x, 1.0, True, gen, name="inverted_dropout"),
                      "inverted_dropout(x, p=1.0, training=True)", x)
    if torch.isnan(got1).any():
        raise CheckFailed("inverted_dropout(x, p=1.0, training=True): NaN (0 · 1/0). "
                          "With p = 1 every element is dropped: return zeros.")
    expect_close(got1, torch.zeros_like(x), what="inverted_dropout(x, p=1.0, training=True)", atol=0, rtol=0)


# ----------------------------------------------------------------------------- Noam schedule


def oracle_noam(step: int, d_model: int, warmup: int) -> float:
    return d_model ** -0.5 * min(step ** -0.5, step * warmup ** -1.5)


def _noam_values(noam_fn, steps, d_model, warmup) -> torch.Tensor:
    values = []
    for s in steps:
        r = call_learner(noam_fn, s, d_model, warmup, name="noam_lr")
        if isinstance(r, torch.Tensor):
            if r.numel() != 1:
                raise CheckFailed(f"noam_lr({s}, {d_model}, {warmup}): expected one number, "
                                  f"got a tensor of shape {tuple(r.shape)}.")
            r = r.item()
        try:
            values.append(float(r))
        except (TypeError, ValueError):
            raise CheckFailed(f"noam_lr({s}, {d_model}, {warmup}): expected a number, "
                              f"got {type(r).__name__}.") from None
    return torch.tensor(values, dtype=torch.float64)


def noam_variants(steps, d_model, warmup) -> list[Diagnosis]:
    s = torch.tensor([float(v) for v in steps], dtype=torch.float64)
    d, w = float(d_model), float(warmup)
    cases = [
        (d ** -0.5 * torch.minimum(s ** -0.5, s * w ** -0.5),
         "the warm-up branch uses warmup^-0.5; it must be step · warmup^-1.5 "
         "so that both branches meet at step = warmup."),
        (d ** -0.5 * torch.minimum(s ** -0.5, s / w),
         "the warm-up branch is step / warmup; it must be step · warmup^-1.5 "
         "(so that it equals warmup^-0.5 at step = warmup)."),
        (torch.minimum(s ** -0.5, s * w ** -1.5), "the factor d_model^-0.5 is missing."),
        (d ** 0.5 * torch.minimum(s ** -0.5, s * w ** -1.5),
         "you multiplied by √d_model; the schedule multiplies by d_model^-0.5 (wider models get smaller rates)."),
        (d ** -0.5 * torch.maximum(s ** -0.5, s * w ** -1.5),
         "you took the max of the two branches; take the min (linear warm-up, then inverse-square-root decay)."),
        (d ** -0.5 * s ** -0.5,
         "there is no warm-up: for step < warmup the rate must grow linearly, step · warmup^-1.5."),
    ]
    return [(v, Diag(m, sections.NOAM)) for v, m in cases]


@check_of("noam_lr")
def check_noam(noam_fn, steps, d_model: int, warmup: int) -> None:
    """Compare noam_lr on each step with Vaswani §5.3's formula; diagnose the usual slips."""
    steps = list(steps)
    got = _noam_values(noam_fn, steps, d_model, warmup)
    want = torch.tensor([oracle_noam(s, d_model, warmup) for s in steps], dtype=torch.float64)
    expect_close(got, want, atol=0, rtol=1e-5, what=f"noam_lr(step in {steps}, d_model={d_model}, warmup={warmup})",
                 diagnoses=lambda: noam_variants(steps, d_model, warmup))


PEAK_GRID = 64  # evenly spaced steps over [1, 3·warmup] where the peak is looked for


def peak_probe_steps(warmup: int) -> list[int]:
    """The steps at which :func:`check_noam_peak` evaluates the schedule: every step of
    [1, 3·warmup] when there are few, else an even grid of ``PEAK_GRID`` steps over that range
    plus every step within 3 of ``warmup`` and the first three.

    Every step of the range would cost 3·warmup calls (12,000 for warmup 4000; in the grader each
    is a round trip to the sandbox). A schedule whose peak is off by a few steps is caught by the
    steps around ``warmup``; one that peaks elsewhere is higher there than at ``warmup`` over a
    stretch of steps far wider than the grid's spacing (the schedules are smooth power laws)."""
    last = 3 * warmup
    if last <= 2 * PEAK_GRID:
        return list(range(1, last + 1))
    grid = {1 + round(i * (last - 1) / (PEAK_GRID - 1)) for i in range(PEAK_GRID)}
    near = set(range(max(1, warmup - 3), min(last, warmup + 3) + 1))
    return sorted(grid | near | {1, 2, 3})


@check_of("noam_lr")
def check_noam_peak(noam_fn, d_model: int, warmup: int) -> None:
    """The largest rate is at step = warmup and equals (d_model · warmup)^-0.5 (looked for at
    :func:`peak_probe_steps`)."""
    steps = peak_probe_steps(warmup)
    got = _noam_values(noam_fn, steps, d_model, warmup)
    peak_step = steps[int(got.argmax())]
    want = (d_model * warmup) ** -0.5
    if peak_step != warmup:
        raise CheckFailed(f"noam_lr(d_model={d_model}, warmup={warmup}): the largest rate is at step {peak_step}; it "
                          f"must be at step = warmup = {warmup}.")
    if not math.isclose(got.max().item(), want, rel_tol=1e-5):
        raise CheckFailed(f"noam_lr: the peak is {got.max().item():.6g}; "
                          f"it must be (d_model · warmup)^-0.5 = {want:.6g}.")


# ----------------------------------------------------------------------------- blocks

BLOCK_KEYS = ("in_proj_weight", "in_proj_bias", "out_proj_weight", "out_proj_bias", "ln1_weight", "ln1_bias",
              "ln2_weight", "ln2_bias", "ff1_weight", "ff1_bias", "ff2_weight", "ff2_bias")


def random_block_params(d_model: int, d_ff: int, *, seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Random parameters in the exercise's dict convention; LN gains and biases are random too."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {"in_proj_weight": (3 * d_model, d_model), "in_proj_bias": (3 * d_model,),
              "out_proj_weight": (d_model, d_model), "out_proj_bias": (d_model,),
              "ln1_weight": (d_model,), "ln1_bias": (d_model,), "ln2_weight": (d_model,), "ln2_bias": (d_model,),
              "ff1_weight": (d_ff, d_model), "ff1_bias": (d_ff,), "ff2_weight": (d_model, d_ff), "ff2_bias": (d_model,)}
    params = {}
    for name, shape in shapes.items():
        t = torch.randn(shape, generator=gen, dtype=torch.float64)
        if len(shape) == 2:
            t = t / math.sqrt(shape[1])
        elif name.startswith("ln") and name.endswith("weight"):
            t = 1 + 0.2 * t
        else:
            t = 0.1 * t
        params[name] = t.to(dtype)
    return params


class _TorchBlock(torch.nn.Module):
    """nn.MultiheadAttention + nn.LayerNorm + nn.Linear holding copies of a params dict (float64)."""

    def __init__(self, params, n_heads):
        super().__init__()
        d_ff, d = params["ff1_weight"].shape
        kw = dict(dtype=torch.float64)
        self.attn = torch.nn.MultiheadAttention(d, n_heads, dropout=0.0, batch_first=True, **kw)
        self.ln1, self.ln2 = torch.nn.LayerNorm(d, **kw), torch.nn.LayerNorm(d, **kw)
        self.ff1, self.ff2 = torch.nn.Linear(d, d_ff, **kw), torch.nn.Linear(d_ff, d, **kw)
        with torch.no_grad():
            self.attn.in_proj_weight.copy_(params["in_proj_weight"])
            self.attn.in_proj_bias.copy_(params["in_proj_bias"])
            self.attn.out_proj.weight.copy_(params["out_proj_weight"])
            self.attn.out_proj.bias.copy_(params["out_proj_bias"])
            for name in ("ln1", "ln2", "ff1", "ff2"):
                getattr(self, name).weight.copy_(params[f"{name}_weight"])
                getattr(self, name).bias.copy_(params[f"{name}_bias"])
        self.eval()

    def sa(self, x):
        return self.attn(x, x, x, need_weights=False)[0]

    def ffn(self, x, act=F.relu):
        return self.ff2(act(self.ff1(x)))

    def post(self, x, *, res_attn=True, res_ffn=True, act=F.relu):
        x = self.ln1((x if res_attn else 0) + self.sa(x))
        return self.ln2((x if res_ffn else 0) + self.ffn(x, act))

    def pre(self, x, *, res_attn=True, res_ffn=True, act=F.relu):
        x = (x if res_attn else 0) + self.sa(self.ln1(x))
        return (x if res_ffn else 0) + self.ffn(self.ln2(x), act)


@torch.no_grad()
def oracle_block(x: torch.Tensor, params: dict[str, torch.Tensor], n_heads: int, *, pre_ln: bool) -> torch.Tensor:
    block = _TorchBlock(params, n_heads)
    out = block.pre(x.double()) if pre_ln else block.post(x.double())
    return out.to(x.dtype)


@torch.no_grad()
def block_variants(x, params, n_heads, *, pre_ln: bool) -> list[Diagnosis]:
    block, x64 = _TorchBlock(params, n_heads), x.double()
    mine, other = (block.pre, block.post) if pre_ln else (block.post, block.pre)
    name, other_name = ("Pre-LN", "Post-LN") if pre_ln else ("Post-LN", "Pre-LN")
    want = ("x = x + Attn(LN1(x)); x = x + FFN(LN2(x))" if pre_ln else "x = LN1(x + Attn(x)); x = LN2(x + FFN(x))")
    cases = [
        (other(x64), f"your block is the {other_name} block: the LayerNorm placement is swapped. {name} is: {want}."),
        (mine(x64, res_attn=False, res_ffn=False), f"both residual connections are missing: {want}."),
        (mine(x64, res_attn=False), f"the residual connection around the attention sublayer is missing: {want}."),
        (mine(x64, res_ffn=False), f"the residual connection around the feed-forward sublayer is missing: {want}."),
        (mine(x64, act=F.gelu), "you used GELU in the FFN; this block (as in Vaswani §3.3) uses ReLU."),
    ]
    return [(v, Diag(m, sections.PRE_POST_LN)) for v, m in cases]


def check_block(block_fn, x: torch.Tensor, params: dict[str, torch.Tensor], n_heads: int, *, pre_ln: bool) -> None:
    """Compare a learner's block with nn.MultiheadAttention + nn.LayerNorm + nn.Linear; diagnose wiring mistakes."""
    (_check_pre_ln if pre_ln else _check_post_ln)(block_fn, x, params, n_heads)


@check_of("pre_ln_block")
def _check_pre_ln(block_fn, x, params, n_heads) -> None:
    _check_block(block_fn, x, params, n_heads, pre_ln=True)


@check_of("post_ln_block")
def _check_post_ln(block_fn, x, params, n_heads) -> None:
    _check_block(block_fn, x, params, n_heads, pre_ln=False)


def _check_block(block_fn, x, params, n_heads, *, pre_ln: bool) -> None:
    name = "pre_ln_block" if pre_ln else "post_ln_block"
    got = call_learner(block_fn, x, params, n_heads, name=name)
    expect_close(got, oracle_block(x, params, n_heads, pre_ln=pre_ln),
                 what=f"{name}(x{tuple(x.shape)} {str(x.dtype).removeprefix('torch.')}, n_heads={n_heads})",
                 diagnoses=lambda: block_variants(x, params, n_heads, pre_ln=pre_ln))


# ----------------------------------------------------------------------------- properties


def _pe_properties(p) -> str | None:
    """Row 0 is [0, 1, 0, 1, …]; each (sin, cos) pair has sin² + cos² = 1; pair i turns at 10000^(-2i/d)."""
    n, d = p.get("n_positions"), p.get("d_model")
    n, d = (n, d) if n is not None else (3, 4)
    if n < 2 or d < 2:
        return None
    got = p.call(n, d)
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != (n, d):
        return None
    pe = got.double()
    even, odd = pe[:, 0::2], pe[:, 1::2]
    if not torch.allclose(even ** 2 + odd ** 2, torch.ones_like(even), atol=1e-3):
        return Diag("sin² + cos² of each pair (dims 2i, 2i+1) must be 1 at every position: both dims of a pair use "
                    "the same angle pos · 10000^(-2i/d_model), one with sin (even dim) and one with cos (odd dim).",
                    sections.SINUSOIDS)
    if not (torch.allclose(even[0], torch.zeros_like(even[0]), atol=1e-4)
            and torch.allclose(odd[0], torch.ones_like(odd[0]), atol=1e-4)):
        return Diag("row 0 (position 0) must be [0, 1, 0, 1, …] (sin 0, cos 0): positions start at 0, and sin goes "
                    "on the even dims, cos on the odd dims.", sections.SINUSOIDS)
    omega = torch.atan2(even[1], odd[1])                        # the angle of pair i at position 1
    i = torch.arange(d // 2, dtype=torch.float64)
    ok = (omega > 1e-6) & (omega < 3.0)
    if ok.sum() < 2:
        return None
    slope = float(torch.linalg.lstsq(i[ok, None], omega[ok].log()[:, None]).solution)
    base = math.exp(-slope * d / 2)                             # omega_i = base^(-2i/d)
    if math.isclose(base, 10000.0, rel_tol=0.02):
        return None
    if math.isclose(base, 100.0, rel_tol=0.02):
        return Diag("your frequencies fall as 10000^(-i/d_model) with i the pair index: the exponent must be "
                    "2i/d_model (it runs over the even dims 0, 2, 4, …).", sections.SINUSOIDS)
    return Diag(f"your frequencies fall as base^(-2i/d_model) with base ≈ {base:.4g}; Vaswani §3.5 uses 10000 "
                "(wavelengths from 2π to 10000·2π).", sections.SINUSOIDS)


def _rope_properties(p) -> str | None:
    """Position 0 leaves x unchanged; norms are kept; pair i turns by m · base^(-2i/d)."""
    x = p.get("x")
    d = x.shape[-1] if isinstance(x, torch.Tensor) else 8
    if d < 2 or d % 2:
        return None
    probe = torch.zeros(2, d, dtype=torch.float64)
    probe[:, 0::2] = 1.0                                        # [1, 0, 1, 0, …]: each pair at angle 0
    got = p.call(probe, torch.tensor([0, 1]))
    if not isinstance(got, torch.Tensor) or got.shape != probe.shape:
        return None
    out = got.double()
    if not torch.allclose(out[0], probe[0], atol=1e-6):
        return Diag("at position 0 RoPE must leave x unchanged (every angle is 0 · θ_i = 0); yours changes it: the "
                    "positions are offset, or something besides the rotation is applied.", sections.ROPE)
    if not torch.allclose(out.norm(dim=-1), probe.norm(dim=-1), rtol=1e-6):
        return Diag("RoPE is a rotation and keeps every vector's length; yours changes it (each pair (2i, 2i+1) must "
                    "be rotated as a 2-d vector with cos and sin of one angle).", sections.ROPE)
    angle = torch.atan2(out[1, 1::2], out[1, 0::2])             # the angle of pair i at position 1
    want = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    if torch.allclose(angle, -want, atol=1e-6):
        return Diag("each pair is rotated by −m·θ_i: the sin terms have the wrong signs (out[2i] = x[2i]·cos − "
                    "x[2i+1]·sin, out[2i+1] = x[2i]·sin + x[2i+1]·cos).", sections.ROPE)
    if not torch.allclose(angle, want, atol=1e-6) and (angle.abs() > 1e-9).all():
        i = torch.arange(d // 2, dtype=torch.float64)
        ok = (angle > 1e-9) & (angle < 3.0)
        if ok.sum() >= 2:
            slope = float(torch.linalg.lstsq(i[ok, None], angle[ok].log()[:, None]).solution)
            base = math.exp(-slope * d / 2)
            return Diag(f"pair i turns by m · base^(-2i/d) with base ≈ {base:.4g} in yours; it must be 10000 "
                        "(θ_i = 10000^(-2i/d), the same frequencies as the sinusoidal encoding).", sections.ROPE)
    return None


def _noam_properties(p) -> str | None:
    """The rate rises (linearly) up to step = warmup and falls after it; both branches meet there."""
    d_model, warmup = p.get("d_model"), p.get("warmup")
    if not d_model or not warmup or warmup < 2:
        return None
    steps = [1, warmup // 2, warmup, 2 * warmup, 4 * warmup]
    vals = []
    for s_ in steps:
        v = p.call(s_, d_model, warmup)
        vals.append(float(v.item() if isinstance(v, torch.Tensor) else v))
    if not (vals[0] < vals[1] < vals[2]):
        return Diag("the rate must grow during warm-up (steps 1 … warmup), linearly: step · warmup^-1.5 (times "
                    "d_model^-0.5).", sections.NOAM)
    if not (vals[2] > vals[3] > vals[4]):
        return Diag("after warm-up the rate must fall as step^-0.5 (times d_model^-0.5).", sections.NOAM)
    return None


def _zeroed(params: dict, *names: str) -> dict:
    return {k: (torch.zeros_like(v) if k in names else v) for k, v in params.items()}


def _block_properties(p, *, pre_ln: bool) -> str | None:
    """Switch off one sublayer at a time (zero its output weights): the block must then equal the
    answer with the same sublayer switched off, which says which sublayer holds the mistake. Post-LN:
    before ln2's gain and bias, every token has mean 0 and variance 1."""
    x, params, n_heads = p.get("x"), p.get("params"), p.get("n_heads")
    if x is None or params is None:
        return None
    got = p.call(x, params, n_heads)
    if not isinstance(got, torch.Tensor) or got.shape != x.shape:
        return None
    name = "Pre-LN" if pre_ln else "Post-LN"
    if not pre_ln:
        y = (got.double() - params["ln2_bias"].double()) / params["ln2_weight"].double()
        mean, var = y.mean(-1), y.var(-1, unbiased=False)
        if not (torch.allclose(mean, torch.zeros_like(mean), atol=1e-3)
                and torch.allclose(var, torch.ones_like(var), atol=1e-2)):
            return Diag("a Post-LN block ends with LayerNorm ln2: undoing ln2's gain and bias, every token of the "
                        "output must have mean 0 and variance 1. Yours does not, so the last step is not "
                        "LN2(x + FFN(x)) (e.g. x + LN(f(x)) normalises the sublayer's output instead of the sum).",
                        sections.PRE_POST_LN)
    off = _zeroed(params, "out_proj_weight", "out_proj_bias", "ff2_weight", "ff2_bias")
    both = p.call(x, off, n_heads)
    if pre_ln and isinstance(both, torch.Tensor) and both.shape == x.shape and \
            not torch.allclose(both.double(), x.double(), atol=1e-4):
        return Diag("with both sublayers switched off (their output weights and biases zero), a Pre-LN block must "
                    "return x unchanged: the residual path x + sublayer(LN(x)) is never normalised. Yours changes x, "
                    "so a LayerNorm sits on the residual path.", sections.PRE_POST_LN)
    suspects = []
    for sub, other in (("attention", ("ff2_weight", "ff2_bias")),
                       ("feed-forward", ("out_proj_weight", "out_proj_bias"))):
        only = _zeroed(params, *other)        # keep only this sublayer
        mine = p.call(x, only, n_heads)
        want = oracle_block(x, only, n_heads, pre_ln=pre_ln)
        if isinstance(mine, torch.Tensor) and mine.shape == want.shape and \
                not torch.allclose(mine.double(), want.double(), atol=1e-4, rtol=1e-3):
            suspects.append(sub)
    if len(suspects) == 1:
        return Diag(f"with the other sublayer switched off your {name} block is right only for one of them: the "
                    f"mistake is in the {suspects[0]} sublayer (its LayerNorm, its residual connection, or the "
                    "sublayer itself).", sections.PRE_POST_LN)
    return None


declare("sinusoidal_positional_encoding", chapter="transformer", args=("n_positions", "d_model"),
        properties=(Property("row 0 is [0, 1, …]; sin² + cos² = 1 per pair; frequencies 10000^(-2i/d)",
                             _pe_properties),))
declare("apply_rope", chapter="transformer", args=("x", "positions", "base"),
        properties=(Property("position 0 is the identity; lengths kept; pair i turns by m·10000^(-2i/d)",
                             _rope_properties),))
declare("inverted_dropout", chapter="transformer", args=("x", "p", "training", "generator"))
declare("noam_lr", chapter="transformer", args=("step", "d_model", "warmup"),
        properties=(Property("rises until warmup, falls after", _noam_properties),))
declare("pre_ln_block", chapter="transformer", args=("x", "params", "n_heads"),
        properties=(Property("identity with both sublayers off; each sublayer right on its own",
                             lambda p: _block_properties(p, pre_ln=True)),))
declare("post_ln_block", chapter="transformer", args=("x", "params", "n_heads"),
        properties=(Property("ends with LayerNorm ln2; each sublayer right on its own",
                             lambda p: _block_properties(p, pre_ln=False)),))


# ----------------------------------------------------------------------------- learner guidance

# Built-ins that do what the exercise asks learners to write (read by autograder.banned).
# Part 5 may use F.linear, F.layer_norm, F.relu and the notebook's attention helper.
BANNED = {
    "*": ["torch.nn.Dropout", "torch.nn.Dropout1d", "torch.nn.Dropout2d", "torch.nn.Dropout3d",
          "torch.nn.functional.dropout", "torch.nn.functional.dropout1d", "torch.nn.functional.dropout2d",
          "torch.nn.functional.dropout3d", "torch.dropout", "torch.Tensor.dropout", "torch.nn.functional.alpha_dropout",
          "torch.optim.lr_scheduler",
          "torch.nn.MultiheadAttention", "torch.nn.functional.multi_head_attention_forward",
          "torch.nn.Transformer", "torch.nn.TransformerEncoder", "torch.nn.TransformerEncoderLayer",
          "torch.nn.TransformerDecoder", "torch.nn.TransformerDecoderLayer"],
}

# Graded function -> the heading of the book section to reread when it fails.
REREAD = {
    "sinusoidal_positional_encoding": "What positional encodings are there, and why sinusoids?",
    "apply_rope": "What does RoPE do, and why does it give relative positions?",
    "inverted_dropout": "Where does dropout go, and what happens at test time?",
    "noam_lr": "What learning-rate schedule does the Transformer use?",
    "pre_ln_block": "Post-LN and Pre-LN blocks",
    "post_ln_block": "Post-LN and Pre-LN blocks",
}

# Graded function -> progressive hints: each leads further without giving the code away.
HINTS = {
    "sinusoidal_positional_encoding": [
        "Each pair of dims (2i, 2i+1) shares one frequency, 1 / 10000^(2i/d_model): compute a (n_positions, 1) column "
        "of positions and a (1, d_model/2) row of frequencies and let broadcasting make the angle table.",
        "Sine goes to the even columns and cosine to the odd columns of the same angle: fill them with strided "
        "slicing (start 0 or 1, step 2).",
        "Check row 0: it must read 0, 1, 0, 1, ... (sin 0 and cos 0). Check the last pair: its frequency is close to "
        "1/10000, so it barely moves with the position.",
    ],
    "apply_rope": [
        "Split the last dimension into its even-indexed and odd-indexed parts: these are the two coordinates of each "
        "2-d pair that gets rotated.",
        "The angle for pair i at position m is m · base^(-2i/d): a (T, d/2) table that broadcasts over the leading "
        "dims of x. Compute it in float32 or float64, not in float16.",
        "Rotate each pair as a 2-d vector (cos, -sin; sin, cos), then put the two results back in interleaved order "
        "(stack on a new last dim and flatten), and cast to x's dtype.",
    ],
    "inverted_dropout": [
        "With training=False the answer is x itself: inverted dropout does all of its rescaling during training.",
        "In training, draw one uniform number per element from `generator`; keep the element when the draw is at "
        "least p, so that it survives with probability 1 - p.",
        "Scale the survivors by 1 / (1 - p) so that the mean is unchanged, keep x's dtype, and treat p = 1 "
        "separately (everything is dropped; avoid dividing by zero).",
    ],
    "noam_lr": [
        "The rate is d_model^-0.5 times the smaller of two curves: one falls as 1/√step, one grows linearly.",
        "The growing curve is step · warmup^-1.5; at step = warmup it equals warmup^-0.5, exactly where the "
        "falling curve is, so the two meet at the peak.",
    ],
    "pre_ln_block": [
        "Pre-LN normalizes the *input* of each sublayer and leaves the residual path untouched: "
        "the sublayer sees LN(x), the sum uses x itself.",
        "Two steps in order: attention sublayer with ln1, then the feed-forward sublayer with ln2; the second step "
        "starts from the output of the first.",
        "The FFN is linear, ReLU, linear with the ff1 and ff2 weights; use F.linear, which takes an (out, in) "
        "weight as stored in the dict.",
    ],
    "post_ln_block": [
        "Post-LN (the original Transformer) normalizes the *sum*: the sublayer sees x, then LayerNorm is applied to "
        "x + sublayer(x).",
        "Two steps in order: attention then ln1, feed-forward then ln2; the second step starts from the output of "
        "the first.",
        "Use F.layer_norm with normalized_shape = the last dim, the gain and bias from the dict and eps = 1e-5, "
        "as nn.LayerNorm does.",
    ],
}
