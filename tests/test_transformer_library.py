"""qkv.positional / blocks / dropout / schedules against torch built-ins and known values,
and qkv.checks.transformer's diagnoses."""

from __future__ import annotations

import math

import matplotlib
import pytest
import torch
import torch.nn.functional as F

matplotlib.use("Agg")

from qkv import blocks as B  # noqa: E402
from qkv.checks import CheckFailed, NotAttempted  # noqa: E402
from qkv.checks import transformer as C  # noqa: E402
from qkv.dropout import inverted_dropout, original_dropout  # noqa: E402
from qkv.positional import (  # noqa: E402
    apply_rope,
    apply_rope_half,
    interleaved_to_half,
    shift_matrix,
    sinusoidal_positional_encoding,
)
from qkv.schedules import noam_curve, noam_lr  # noqa: E402

# ---------------------------------------------------------------- positional encodings


def test_pe_known_values_sin_on_even_cos_on_odd():
    pe = sinusoidal_positional_encoding(3, 4, dtype=torch.float64)
    expected = torch.tensor([[0, 1, 0, 1], [math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)],
                             [math.sin(2), math.cos(2), math.sin(0.02), math.cos(0.02)]], dtype=torch.float64)
    torch.testing.assert_close(pe, expected)


def test_pe_matches_explicit_loop():
    pe = sinusoidal_positional_encoding(40, 10)
    for pos in (0, 13, 39):
        for j in range(10):
            angle = pos / 10000 ** (2 * (j // 2) / 10)
            assert math.isclose(pe[pos, j].item(), math.sin(angle) if j % 2 == 0 else math.cos(angle), abs_tol=1e-6)


def test_pe_shift_is_a_fixed_rotation():
    pe = sinusoidal_positional_encoding(100, 32, dtype=torch.float64)
    m = shift_matrix(9, 32)
    torch.testing.assert_close(pe[9:], pe[:-9] @ m.T)
    torch.testing.assert_close(m @ m.T, torch.eye(32, dtype=torch.float64))


def test_pe_rejects_odd_width():
    with pytest.raises(ValueError, match="even d_model"):
        sinusoidal_positional_encoding(4, 5)


def _rope_complex(x, positions):
    d = x.shape[-1]
    theta = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    rot = torch.polar(torch.ones(len(positions), d // 2, dtype=torch.float64), positions.double()[:, None] * theta)
    return torch.view_as_real(z * rot).flatten(-2)


def test_rope_matches_complex_multiplication():
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    positions = torch.arange(5) + 11
    torch.testing.assert_close(apply_rope(x, positions), _rope_complex(x, positions))


def test_rope_score_depends_only_on_offset():
    gen = torch.Generator().manual_seed(1)
    q, k = (torch.randn(1, 16, dtype=torch.float64, generator=gen),
            torch.randn(1, 16, dtype=torch.float64, generator=gen))

    def score(m, n):
        return (apply_rope(q, torch.tensor([m])) @ apply_rope(k, torch.tensor([n])).T).item()

    assert math.isclose(score(7, 4), score(104, 101), rel_tol=1e-12)
    assert not math.isclose(score(7, 4), score(7, 5), rel_tol=1e-6)


def _rope_half_complex(x, positions):
    """Oracle for rotate-half: pair (x_j, x_{j+d/2}) as the complex number x_j + i x_{j+d/2}."""
    d = x.shape[-1]
    theta = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    z = torch.complex(x[..., : d // 2].double(), x[..., d // 2:].double())
    rot = torch.polar(torch.ones(len(positions), d // 2, dtype=torch.float64), positions.double()[:, None] * theta)
    out = z * rot
    return torch.cat([out.real, out.imag], dim=-1)


def test_rope_half_matches_complex_multiplication_on_split_halves():
    x = torch.randn(2, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    positions = torch.arange(5) + 2
    torch.testing.assert_close(apply_rope_half(x, positions), _rope_half_complex(x, positions))


def test_interleaved_and_rotate_half_layouts_differ_but_convert_by_a_fixed_permutation():
    gen = torch.Generator().manual_seed(4)
    q, k = (torch.randn(6, 16, dtype=torch.float64, generator=gen) for _ in range(2))
    pos = torch.arange(6)
    perm = interleaved_to_half(16)
    scores = apply_rope(q, pos) @ apply_rope(k, pos).T
    assert not torch.allclose(apply_rope_half(q, pos) @ apply_rope_half(k, pos).T, scores)  # same weights, other layout
    torch.testing.assert_close(apply_rope_half(q[:, perm], pos) @ apply_rope_half(k[:, perm], pos).T, scores)


def test_layout_permutation_equals_hugging_face_llama_conversion_permute():
    # convert_llama_weights_to_hf.py: w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)
    n_heads, head_dim, d_model = 3, 8, 24
    w = torch.randn(n_heads * head_dim, d_model, generator=torch.Generator().manual_seed(5))
    hf = w.view(n_heads, head_dim // 2, 2, d_model).transpose(1, 2).reshape(n_heads * head_dim, d_model)
    perm = interleaved_to_half(head_dim)
    ours = torch.cat([w[h * head_dim:(h + 1) * head_dim][perm] for h in range(n_heads)])
    assert torch.equal(ours, hf)


def test_rope_keeps_dtype_and_rejects_bad_positions():
    x = torch.randn(4, 8).half()
    assert apply_rope(x, torch.arange(4)).dtype == torch.float16
    with pytest.raises(ValueError, match=r"positions of shape \(4,\)"):
        apply_rope(x, torch.arange(5))
    with pytest.raises(ValueError, match="even"):
        apply_rope(torch.randn(4, 7), torch.arange(4))


# ---------------------------------------------------------------- dropout and schedule


def test_inverted_dropout_statistics_match_torch_dropout():
    x = torch.ones(400_000)
    ours = inverted_dropout(x, 0.3, True, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    ref = torch.nn.Dropout(0.3)(x)
    assert abs((ours == 0).float().mean() - (ref == 0).float().mean()) < 0.005
    assert abs(ours.mean() - ref.mean()) < 0.01
    torch.testing.assert_close(ours[ours != 0], torch.full_like(ours[ours != 0], 1 / 0.7))


def test_inverted_dropout_is_identity_at_eval_and_zero_at_p_one():
    x = torch.randn(5, 6)
    assert inverted_dropout(x, 0.4, False) is x
    assert torch.equal(inverted_dropout(x, 1.0, True), torch.zeros_like(x))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        inverted_dropout(x, 1.5, True)


def test_original_dropout_scales_by_keep_probability_at_test():
    x = torch.ones(10)
    torch.testing.assert_close(original_dropout(x, 0.1, False), torch.full((10,), 0.9))


def test_noam_known_values_and_peak():
    assert math.isclose(noam_lr(4000, 512, 4000), (512 * 4000) ** -0.5)
    assert math.isclose(noam_lr(1, 512, 4000), 512 ** -0.5 * 4000 ** -1.5)
    steps = torch.arange(1, 20_001)
    curve = noam_curve(steps, 512, 4000)
    assert steps[curve.argmax()].item() == 4000
    assert math.isclose(curve[9999].item(), noam_lr(10_000, 512, 4000))
    with pytest.raises(ValueError, match="step >= 1"):
        noam_lr(0, 512, 4000)


# ---------------------------------------------------------------- blocks


@pytest.mark.parametrize("norm_first, block", [(False, B.post_ln_block), (True, B.pre_ln_block)])
def test_blocks_match_torch_encoder_layer(norm_first, block):
    params = B.make_block_params(24, 3, 40, seed=2, dtype=torch.float64)
    x = torch.randn(3, 6, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(block(x, params, 3), B.torch_encoder_layer(params, 3, norm_first=norm_first)(x))


def test_block_rejects_wrong_width():
    params = B.make_block_params(16, 4, 32)
    with pytest.raises(ValueError, match=r"expected x of shape \(B, T, 16\), got \(2, 5, 8\)"):
        B.pre_ln_block(torch.randn(2, 5, 8), params, 4)


def test_widgets_build_and_redraw_when_a_control_moves():
    from qkv.widgets import transformer as W
    pe_box = W.pe_heatmap()
    position, pair = pe_box.children[0].children
    assert (position.value, pair.value, pair.max) == (20, 4, 31)
    position.value, pair.value = 99, 31                 # redraws: raises if a slider end breaks the figure
    lr_box = W.lr_schedule()
    warmup, width = lr_box.children[0].children
    assert (warmup.value, width.value) == (4000, 512)
    warmup.value, width.value = 500, 256


# ---------------------------------------------------------------- the reference passes every check


def test_reference_implementations_pass_every_check():
    C.check_pe_known_values(sinusoidal_positional_encoding)
    C.check_pe(sinusoidal_positional_encoding, 200, 64)
    C.check_rope_known_values(apply_rope)
    C.check_rope_relative(apply_rope)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        C.check_rope(apply_rope, torch.randn(2, 5, 16).to(dtype), torch.arange(5) + 30)
        C.check_dropout_eval(inverted_dropout, torch.randn(3, 4).to(dtype), 0.2)
        C.check_dropout_train(inverted_dropout, 0.3, dtype=dtype)
    C.check_dropout_generator(inverted_dropout)
    C.check_dropout_edges(inverted_dropout, torch.randn(3, 4))
    C.check_noam(noam_lr, [1, 10, 4000, 9000], 512, 4000)
    C.check_noam_peak(noam_lr, 512, 4000)
    params = C.random_block_params(16, 32, seed=0)
    x = torch.randn(2, 5, 16)
    C.check_block(B.pre_ln_block, x, params, 4, pre_ln=True)
    C.check_block(B.post_ln_block, x, params, 4, pre_ln=False)


# ---------------------------------------------------------------- diagnoses name the misconception


def _pe(n, d, *, layout="interleaved", exponent="2i", cos_first=False, multiply=False):
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(d // 2, dtype=torch.float64)
    scale = 10000 ** ((2 * i if exponent == "2i" else i) / d)
    ang = pos * scale if multiply else pos / scale
    a, b = (ang.cos(), ang.sin()) if cos_first else (ang.sin(), ang.cos())
    if layout == "halves":
        return torch.cat([a, b], -1).float()
    if layout == "per_dim":
        j = torch.arange(d, dtype=torch.float64)
        per = pos / 10000 ** (j / d)
        return torch.where(j.long() % 2 == 0, per.sin(), per.cos()).float()
    return torch.stack([a, b], -1).flatten(-2).float()


@pytest.mark.parametrize("kwargs, message", [
    (dict(cos_first=True), "sin and cos are swapped"),
    (dict(layout="halves"), "first half"),
    (dict(exponent="i"), "exponent is i/d_model"),
    (dict(layout="per_dim"), r"exponent \(2i\+1\)/d_model"),
    (dict(multiply=True), "multiplied pos"),
])
def test_pe_diagnosis_names_the_misconception(kwargs, message):
    with pytest.raises(CheckFailed, match=message):
        C.check_pe(lambda n, d: _pe(n, d, **kwargs), 30, 16)


def _rope_half(x, positions, base=10000.0):
    d = x.shape[-1]
    ang = positions.double()[:, None] * base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    cos, sin = ang.cos().repeat(1, 2), ang.sin().repeat(1, 2)
    x1, x2 = x[..., : d // 2].double(), x[..., d // 2:].double()
    return (x.double() * cos + torch.cat([-x2, x1], -1) * sin).to(x.dtype)


@pytest.mark.parametrize("wrong, message", [
    (_rope_half, "rotate_half"),
    (lambda x, pos, base=10000.0: apply_rope(x, -pos), "rotated by -mθ_i"),
    (lambda x, pos, base=10000.0: apply_rope(x, pos, base=base ** 0.5), "exponent is i/d"),
    (lambda x, pos, base=10000.0: apply_rope(x, torch.arange(x.shape[-2])), "instead of the `positions` argument"),
])
def test_rope_diagnosis_names_the_misconception(wrong, message):
    x = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(4))
    with pytest.raises(CheckFailed, match=message):
        C.check_rope(wrong, x, torch.arange(6) + 20)


def _dropout(x, p, training, generator=None, *, eval_scale=1.0, keep_scale=None, drop_keep_swapped=False,
             eval_drop=False):
    if not training and not eval_drop:
        return x * eval_scale
    u = torch.rand(x.shape, generator=generator)
    keep = (u < p) if drop_keep_swapped else (u >= p)
    return x * keep.to(x.dtype) * (1 / (1 - p) if keep_scale is None else keep_scale)


@pytest.mark.parametrize("kwargs, message", [
    (dict(eval_scale=0.1), "multiplied by the dropout rate p"),
    (dict(eval_scale=0.9), "keep probability 1 - p: that is the \\*original\\*"),
    (dict(eval_drop=True), "dropped elements at eval time"),
])
def test_dropout_eval_diagnosis_names_the_misconception(kwargs, message):
    with pytest.raises(CheckFailed, match=message):
        C.check_dropout_eval(lambda x, p, t, g=None: _dropout(x, p, t, g, **kwargs), torch.randn(50, 50), 0.1)


@pytest.mark.parametrize("kwargs, message", [
    (dict(keep_scale=0.2), "multiplied by p"),
    (dict(keep_scale=1.0), "not rescaled"),
    (dict(keep_scale=5.0), "divided by p"),
    (dict(drop_keep_swapped=True), "dropped with probability 1 - p"),
])
def test_dropout_train_diagnosis_names_the_misconception(kwargs, message):
    with pytest.raises(CheckFailed, match=message):
        C.check_dropout_train(lambda x, p, t, g=None: _dropout(x, p, t, g, **kwargs), 0.2)


def test_dropout_ignoring_the_generator_is_diagnosed():
    with pytest.raises(CheckFailed, match="generator=generator"):
        C.check_dropout_generator(lambda x, p, t, g=None: _dropout(x, p, t, None))


def test_dropout_nan_at_p_one_is_diagnosed():
    with pytest.raises(CheckFailed, match="NaN"):
        C.check_dropout_edges(lambda x, p, t, g=None: x * (torch.rand(x.shape, generator=g) >= p) / (1 - p)
                              if p < 1 else x * 0 / torch.zeros(()), torch.randn(3, 4))


@pytest.mark.parametrize("wrong, message", [
    (lambda s, d, w: d ** -0.5 * min(s ** -0.5, s * w ** -0.5), "warmup\\^-0.5"),
    (lambda s, d, w: min(s ** -0.5, s * w ** -1.5), "d_model\\^-0.5 is missing"),
    (lambda s, d, w: d ** 0.5 * min(s ** -0.5, s * w ** -1.5), "multiplied by √d_model"),
    (lambda s, d, w: d ** -0.5 * max(s ** -0.5, s * w ** -1.5), "took the max"),
    (lambda s, d, w: d ** -0.5 * s ** -0.5, "no warm-up"),
])
def test_noam_diagnosis_names_the_misconception(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        C.check_noam(wrong, [1, 100, 4000, 8000], 512, 4000)


def _exhaustive_peak_fails(schedule, d_model: int, warmup: int) -> bool:
    """The peak check as it was before it sampled: every step of [1, 3·warmup]."""
    values = [schedule(s, d_model, warmup) for s in range(1, 3 * warmup + 1)]
    peak = max(range(len(values)), key=values.__getitem__) + 1
    return peak != warmup or not math.isclose(max(values), (d_model * warmup) ** -0.5, rel_tol=1e-5)


@pytest.mark.parametrize("warmup", [7, 100, 4000])
@pytest.mark.parametrize("shift", [0, -2, -1, 1, 2, 3, 37, "half", "double", "triple"])
def test_the_sampled_peak_check_fails_exactly_where_a_scan_of_every_step_does(warmup, shift):
    """check_noam_peak looks at ~70 steps instead of 3·warmup (12,000 grader round trips for
    warmup 4000): schedules whose peak is a few steps off, far off or at the end of the range are
    caught as a scan of every step catches them, and a correct one passes both."""
    true_warmup = {"half": warmup // 2 or 1, "double": 2 * warmup, "triple": 3 * warmup}.get(shift)
    true_warmup = true_warmup or max(1, warmup + shift)

    def schedule(step, d_model, _warmup):
        return C.oracle_noam(step, d_model, true_warmup)

    scanned = _exhaustive_peak_fails(schedule, 512, warmup)
    assert scanned == (true_warmup != warmup)
    if scanned:
        with pytest.raises(CheckFailed, match="largest rate is at step|the peak is"):
            C.check_noam_peak(schedule, 512, warmup)
    else:
        C.check_noam_peak(schedule, 512, warmup)


def test_the_peak_check_calls_the_schedule_a_bounded_number_of_times():
    calls = []

    def counted(step, d_model, warmup):
        calls.append(step)
        return noam_lr(step, d_model, warmup)

    C.check_noam_peak(counted, 512, 4000)
    assert len(calls) <= 80 and {3997, 3998, 3999, 4000, 4001, 4002, 4003, 1, 12_000} <= set(calls)


def _block(x, params, n_heads, *, pre, res_attn=True, res_ffn=True, act=F.relu):
    def ln(z, i):
        return F.layer_norm(z, z.shape[-1:], params[f"ln{i}_weight"], params[f"ln{i}_bias"], eps=1e-5)

    def attn(z):
        return B.multi_head_self_attention(z, params, n_heads)

    def ffn(z):
        return B.feed_forward(z, params, act)

    if pre:
        x = (x if res_attn else 0) + attn(ln(x, 1))
        return (x if res_ffn else 0) + ffn(ln(x, 2))
    x = ln((x if res_attn else 0) + attn(x), 1)
    return ln((x if res_ffn else 0) + ffn(x), 2)


@pytest.mark.parametrize("pre_ln", [True, False])
@pytest.mark.parametrize("kwargs, message", [
    (dict(swap=True), "LayerNorm placement is swapped"),
    (dict(res_attn=False, res_ffn=False), "both residual connections are missing"),
    (dict(res_attn=False), "around the attention sublayer is missing"),
    (dict(res_ffn=False), "around the feed-forward sublayer is missing"),
    (dict(act=F.gelu), "used GELU"),
])
def test_block_diagnosis_names_the_misconception(pre_ln, kwargs, message):
    kwargs = dict(kwargs)
    pre = (not pre_ln) if kwargs.pop("swap", False) else pre_ln
    params = C.random_block_params(16, 32, seed=3)
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(8))
    with pytest.raises(CheckFailed, match=message):
        C.check_block(lambda x, p, h: _block(x, p, h, pre=pre, **kwargs), x, params, 4, pre_ln=pre_ln)


def test_unfinished_function_reports_not_attempted():
    def stub(*args):
        raise NotImplementedError()
    with pytest.raises(NotAttempted, match="not attempted"):
        C.check_pe(stub, 4, 4)
    with pytest.raises(NotAttempted, match="not attempted"):
        C.check_noam(stub, [1], 512, 4000)


def test_rope_relative_check_catches_position_dependent_scores():
    def additive(x, positions, base=10000.0):
        return x + sinusoidal_positional_encoding(int(positions.max()) + 1, x.shape[-1], dtype=x.dtype)[positions]
    with pytest.raises(CheckFailed, match="depend only on m - n|norm"):
        C.check_rope_relative(additive)


def test_banned_table_catches_the_built_ins_and_spares_the_reference():
    from autograder import banned
    from notebook_tools import reference_answers
    table = banned.banned_for("transformer")["*"]
    cheat = ("import torch.nn.functional as F\n"
             "def inverted_dropout(x, p, training, generator=None):\n"
             "    return F.dropout(x, p, training)\n")
    assert [h.name for h in banned.find(cheat, table)] == ["torch.nn.functional.dropout"]
    cheat = ("import torch\ndef pre_ln_block(x, params, n_heads):\n"
             "    return torch.nn.TransformerEncoderLayer(8, 2)(x)\n")
    assert [h.name for h in banned.find(cheat, table)] == ["torch.nn.TransformerEncoderLayer"]
    for gid, source in reference_answers("transformer").items():
        assert banned.find(source, table) == [], gid


def test_reread_names_real_headings_and_hints_are_progressive():
    from pathlib import Path
    page = (Path(__file__).resolve().parent.parent / "book" / "chapters" / "transformer.md").read_text()
    headings = {line.lstrip("#").strip() for line in page.splitlines() if line.startswith(("## ", "### "))}
    graded = {"sinusoidal_positional_encoding", "apply_rope", "inverted_dropout", "noam_lr", "pre_ln_block",
              "post_ln_block"}
    assert set(C.REREAD) == graded and set(C.HINTS) == graded
    assert set(C.REREAD.values()) <= headings
    assert all(2 <= len(h) <= 3 for h in C.HINTS.values())
