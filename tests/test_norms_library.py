"""qkv.norms (the book's demo code) against torch built-ins, and qkv.checks.norms' diagnoses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from qkv import norms as N
from qkv.checks import CheckFailed, NotAttempted
from qkv.checks import norms as C
from qkv.widgets import norms as W

GEN = torch.Generator().manual_seed(0)


# ---------------------------------------------------------------- demo implementations vs torch


@pytest.mark.parametrize("shape, normalized_shape", [((2, 5, 8), 8), ((3, 4, 6), (4, 6)), ((7,), (7,))])
@pytest.mark.parametrize("affine", [False, True])
def test_layer_norm_matches_torch(shape, normalized_shape, affine):
    x = torch.randn(shape, generator=GEN) * 3 + 1
    ns = C._shape(normalized_shape)
    w, b = (torch.randn(ns, generator=GEN), torch.randn(ns, generator=GEN)) if affine else (None, None)
    torch.testing.assert_close(N.layer_norm(x, normalized_shape, w, b, 1e-5), F.layer_norm(x, ns, w, b, 1e-5))


def test_layer_norm_eps_is_inside_the_sqrt():
    x = torch.randn(4, 6, generator=GEN) * 1e-3  # variance ~1e-6: eps placement matters
    torch.testing.assert_close(N.layer_norm(x, 6, eps=1e-5), F.layer_norm(x, (6,), eps=1e-5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rms_norm_matches_torch(dtype):
    x = torch.randn(3, 5, 8, generator=GEN, dtype=dtype) + 2
    w = torch.randn(8, generator=GEN, dtype=dtype)
    torch.testing.assert_close(N.rms_norm(x, w, 1e-6), F.rms_norm(x, (8,), w, 1e-6))


@pytest.mark.parametrize("shape", [(6, 4), (5, 4, 3)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_matches_batchnorm1d_and_its_running_stats(shape, training):
    x = torch.randn(shape, generator=GEN) * 2 + 1
    mean, var = C.random_running_stats(4, seed=1)
    w, b = torch.randn(4, generator=GEN), torch.randn(4, generator=GEN)
    bn = torch.nn.BatchNorm1d(4, momentum=0.3)
    with torch.no_grad():
        bn.running_mean.copy_(mean), bn.running_var.copy_(var), bn.weight.copy_(w), bn.bias.copy_(b)
    bn.train(training)
    out, new_mean, new_var = N.batch_norm(x, mean, var, w, b, training, 0.3, 1e-5)
    torch.testing.assert_close(out, bn(x).detach())
    torch.testing.assert_close(new_mean, bn.running_mean)
    torch.testing.assert_close(new_var, bn.running_var)


def test_batch_norm_does_not_modify_its_arguments():
    x = torch.randn(6, 4, generator=GEN)
    mean, var = torch.zeros(4), torch.ones(4)
    N.batch_norm(x, mean, var, training=True)
    assert torch.equal(mean, torch.zeros(4)) and torch.equal(var, torch.ones(4))


def test_batch_norm_running_var_is_unbiased_but_normalization_is_biased():
    x = torch.tensor([[0.0], [2.0]])  # biased var 1, unbiased var 2
    out, _, new_var = N.batch_norm(x, torch.zeros(1), torch.zeros(1), training=True, momentum=1.0, eps=0.0)
    assert torch.equal(out, torch.tensor([[-1.0], [1.0]])) and torch.equal(new_var, torch.tensor([2.0]))


def test_batch_norm_single_value_per_channel_raises():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        N.batch_norm(torch.randn(1, 3), torch.zeros(3), torch.ones(3), training=True)


def test_shape_errors_name_the_expected_shape():
    with pytest.raises(ValueError, match=r"expected x of shape \(\.\.\., 8\), got \(2, 5, 7\)"):
        N.layer_norm(torch.randn(2, 5, 7), 8)
    with pytest.raises(ValueError, match=r"expected running_mean of shape \(4,\)"):
        N.batch_norm(torch.randn(3, 4), torch.zeros(5), torch.ones(4))
    with pytest.raises(ValueError, match=r"expected x of shape \(B, T, C\) and mask of shape \(B, T\)"):
        N.masked_batch_norm(torch.randn(2, 3, 4), torch.ones(2, 4, dtype=torch.bool), torch.zeros(4), torch.ones(4))


def test_masked_batch_norm_equals_batchnorm_on_real_tokens_and_ignores_pad_values():
    x, mask = C.padded_batch([5, 2, 3], 4, seed=3)
    mean, var = C.random_running_stats(4, seed=2)
    bn = torch.nn.BatchNorm1d(4)
    with torch.no_grad():
        bn.running_mean.copy_(mean), bn.running_var.copy_(var)
    out, new_mean, new_var = N.masked_batch_norm(x, mask, mean, var)
    torch.testing.assert_close(out[mask], bn(x[mask]).detach())
    torch.testing.assert_close((new_mean, new_var), (bn.running_mean, bn.running_var))
    assert torch.equal(out[~mask], torch.zeros_like(out[~mask]))
    x_other_pad = x.masked_fill(~mask[..., None], 7.0)
    torch.testing.assert_close(N.masked_batch_norm(x_other_pad, mask, mean, var)[0], out)


def test_fold_batch_norm_equals_linear_then_eval_batchnorm():
    lin = torch.nn.Linear(5, 3)
    mean, var = C.random_running_stats(3, seed=4)
    w, b = torch.randn(3, generator=GEN), torch.randn(3, generator=GEN)
    x = torch.randn(10, 5, generator=GEN)
    expected = F.batch_norm(lin(x), mean, var, w, b, training=False)
    torch.testing.assert_close(N.fold_batch_norm(lin, mean, var, w, b)(x), expected)


def test_post_ln_residual_norm_is_fixed_and_pre_ln_grows():
    post, pre = N.residual_norms(False, 4), N.residual_norms(True, 4)
    assert all(abs(v - 8.0) < 0.05 for v in post)  # LN output has norm √64 = 8 per token
    assert all(b > a for a, b in zip(pre, pre[1:]))


def test_post_ln_last_layer_gradient_exceeds_pre_ln():
    post, pre = N.ffn_gradient_norms(False, 6, seeds=1), N.ffn_gradient_norms(True, 6, seeds=1)
    assert len(post) == len(pre) == 6 and post[-1] > pre[-1]


def test_widget_shared_elements_follow_the_axes():
    lengths = (3, 1)
    assert W.shared_elements("LayerNorm", lengths, 4, 0, 1, 2) == {(0, 1, c) for c in range(4)}
    assert W.shared_elements("BatchNorm", lengths, 4, 0, 1, 2) == {(b, t, 2) for b in range(2) for t in range(3)}
    assert W.shared_elements("masked BatchNorm", lengths, 4, 0, 1, 2) == {(0, 0, 2), (0, 1, 2), (0, 2, 2), (1, 0, 2)}
    with pytest.raises(ValueError, match="unknown norm"):
        W.shared_elements("GroupNorm", lengths, 4, 0, 0, 0)


# ---------------------------------------------------------------- checks accept the right answer


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_correct_reference_passes_every_check(dtype):
    x = C.random_input((3, 5, 16), dtype=dtype, seed=1, scale=2.0, shift=1.0)
    w, b = torch.randn(16, generator=GEN).to(dtype), torch.randn(16, generator=GEN).to(dtype)
    C.check_layer_norm(N.layer_norm, x, 16, w, b, 1e-5)
    C.check_layer_norm(N.layer_norm, x, (5, 16), None, None, 1e-5)
    C.check_rms_norm(N.rms_norm, x, w, 1e-6)
    if dtype in (torch.float32, torch.float64):
        mean, var = C.random_running_stats(5, seed=1, dtype=dtype)
        for training in (True, False):
            C.check_batch_norm(N.batch_norm, x, mean, var, w[:5], b[:5], training, 0.1, 1e-5)
        xp, mask = C.padded_batch([4, 1, 3], 16, seed=2, dtype=dtype)
        mean, var = C.random_running_stats(16, seed=2, dtype=dtype)
        C.check_masked_batch_norm(N.masked_batch_norm, xp, mask, mean, var, w, b, True)
    C.check_batch_norm_single_value_raises(N.batch_norm)


# ---------------------------------------------------------------- diagnoses name the misconception


def _ln(x, ns, w=None, b=None, eps=1e-5, *, unbiased=False, eps_outside=False, dims=None):
    ns = C._shape(ns)
    dims = dims or tuple(range(-len(ns), 0))
    mean = x.mean(dims, keepdim=True)
    var = x.var(dims, keepdim=True, unbiased=unbiased)
    y = (x - mean) / (var.sqrt() + eps) if eps_outside else (x - mean) / (var + eps).sqrt()
    return y * (w if w is not None else 1) + (b if b is not None else 0)


X = C.random_input((4, 6, 8), seed=0, scale=1.0, shift=0.5)


@pytest.mark.parametrize("wrong, eps, message", [
    (lambda x, ns, w, b, eps: _ln(x, ns, w, b, eps, unbiased=True), 1e-5, "unbiased variance"),
    (lambda x, ns, w, b, eps: _ln(x, ns, w, b, eps, eps_outside=True), 0.5, "eps was added outside"),
    (lambda x, ns, w, b, eps: _ln(x, ns, w, b, eps, dims=(0,)), 1e-5, "normalized over the batch dimension"),
    (lambda x, ns, w, b, eps: _ln(x, ns, w, b, eps, dims=(0, 1)), 1e-5, "BatchNorm's axes"),
])
def test_layer_norm_diagnosis_names_the_misconception(wrong, eps, message):
    with pytest.raises(CheckFailed, match=message):
        C.check_layer_norm(wrong, X, 8, None, None, eps)


def test_layer_norm_last_dim_only_is_diagnosed_for_2d_normalized_shape():
    with pytest.raises(CheckFailed, match="last dim only"):
        C.check_layer_norm(lambda x, ns, w, b, eps: _ln(x, 8, w, b, eps), X, (6, 8), None, None, 1e-5)


def _bn(x, rm, rv, w=None, b=None, training=True, momentum=0.1, eps=1e-5, *, unbiased_norm=False,
        biased_running=False, inverted=False, eps_outside=False, mutate=False, feature_axis=False):
    dims = (0,) if x.dim() == 2 else (0, 2)
    shape = (1, -1) if x.dim() == 2 else (1, -1, 1)
    if feature_axis:
        mean, var = x.mean(1, keepdim=True), x.var(1, keepdim=True, unbiased=False)
        return (x - mean) / (var + eps).sqrt(), rm.clone(), rv.clone()
    if training:
        mean, var = x.mean(dims), x.var(dims, unbiased=unbiased_norm)
        m = 1 - momentum if inverted else momentum
        new_mean = (1 - m) * rm + m * mean
        new_var = (1 - m) * rv + m * x.var(dims, unbiased=not biased_running)
    else:
        mean, var, new_mean, new_var = rm, rv, rm.clone(), rv.clone()
    if mutate:
        rm.copy_(new_mean), rv.copy_(new_var)
    mean, var = mean.reshape(shape), var.reshape(shape)
    y = (x - mean) / (var.sqrt() + eps) if eps_outside else (x - mean) / (var + eps).sqrt()
    return y, new_mean, new_var


XB = C.random_input((6, 4, 3), seed=5).transpose(1, 2).contiguous()  # (N, C, L) = (6, 3, 4)


@pytest.mark.parametrize("kwargs, training, eps, message", [
    (dict(unbiased_norm=True), True, 1e-5, "normalized with the unbiased batch variance"),
    (dict(biased_running=True), True, 1e-5, "running_var was updated with the biased"),
    (dict(inverted=True), True, 1e-5, "momentum convention is inverted"),
    (dict(eps_outside=True), True, 0.5, "eps was added outside"),
    (dict(eps_outside=True), False, 0.5, "eps was added outside"),
    (dict(feature_axis=True), True, 1e-5, "LayerNorm's axis"),
    (dict(mutate=True), True, 1e-5, "modified an argument in place"),
])
def test_batch_norm_diagnosis_names_the_misconception(kwargs, training, eps, message):
    mean, var = C.random_running_stats(3, seed=6)
    with pytest.raises(CheckFailed, match=message):
        C.check_batch_norm(lambda *a: _bn(*a, **kwargs), XB, mean, var, None, None, training, 0.1, eps)


def test_batch_norm_wrong_mode_statistics_are_diagnosed():
    mean, var = C.random_running_stats(3, seed=6)
    eval_always = lambda x, rm, rv, w, b, training, m, eps: _bn(x, rm, rv, w, b, False, m, eps)  # noqa: E731
    train_always = lambda x, rm, rv, w, b, training, m, eps: _bn(x, rm, rv, w, b, True, m, eps)  # noqa: E731
    with pytest.raises(CheckFailed, match="in training mode you normalized with the running statistics"):
        C.check_batch_norm(eval_always, XB, mean, var, None, None, True)
    with pytest.raises(CheckFailed, match="in eval mode you normalized with the batch statistics"):
        C.check_batch_norm(train_always, XB, mean, var, None, None, False)


def test_batch_norm_single_value_not_raising_is_reported():
    with pytest.raises(CheckFailed, match="instead of raising ValueError"):
        C.check_batch_norm_single_value_raises(lambda x, *a: (torch.zeros_like(x), a[0], a[1]))


@pytest.mark.parametrize("wrong, eps, message", [
    (lambda x, w, eps: _ln(x, x.shape[-1], w, None, eps), 1e-6, "you subtracted the mean"),
    (lambda x, w, eps: x / ((x * x).mean(-1, keepdim=True).sqrt() + eps) * w, 0.5, "eps was added outside"),
    (lambda x, w, eps: x / (x.std(-1, keepdim=True) + eps) * w, 1e-6, "standard deviation"),
    (lambda x, w, eps: x / ((x * x).mean(0, keepdim=True) + eps).sqrt() * w, 1e-6, "wrong axis"),
])
def test_rms_norm_diagnosis_names_the_misconception(wrong, eps, message):
    w = torch.randn(8, generator=torch.Generator().manual_seed(7))
    with pytest.raises(CheckFailed, match=message):
        C.check_rms_norm(wrong, X, w, eps)


def test_masked_batch_norm_padding_included_is_diagnosed():
    x, mask = C.padded_batch([5, 2, 3], 4, seed=3, pad_value=0.0)
    mean, var = C.random_running_stats(4, seed=2)

    def includes_padding(x, mask, rm, rv, w, b, training, momentum, eps):
        out, nm, nv = N.batch_norm(x.reshape(-1, x.shape[-1]), rm, rv, w, b, training, momentum, eps)
        return out.reshape(x.shape) * mask[..., None], nm, nv

    with pytest.raises(CheckFailed, match="padding was included"):
        C.check_masked_batch_norm(includes_padding, x, mask, mean, var)


def test_masked_batch_norm_nonzero_padding_output_is_reported():
    x, mask = C.padded_batch([5, 2, 3], 4, seed=3, pad_value=1.0)
    mean, var = C.random_running_stats(4, seed=2)

    def pads_not_zeroed(x, mask, *rest):
        out, nm, nv = N.masked_batch_norm(x, mask, *rest)
        return out + (~mask)[..., None], nm, nv

    with pytest.raises(CheckFailed, match="padding positions of the output must be 0"):
        C.check_masked_batch_norm(pads_not_zeroed, x, mask, mean, var)


def test_unfinished_functions_report_not_attempted():
    def stub(*args):
        raise NotImplementedError()
    for check, args in [(C.check_layer_norm, (X, 8)), (C.check_rms_norm, (X,)),
                        (C.check_batch_norm, (XB, torch.zeros(3), torch.ones(3)))]:
        with pytest.raises(NotAttempted, match="not attempted"):
            check(stub, *args)
    with pytest.raises(NotAttempted, match="not attempted"):
        C.check_batch_norm_single_value_raises(stub)


def test_reread_and_hints_cover_every_graded_function():
    graded = {"layer_norm", "batch_norm", "rms_norm", "masked_batch_norm"}
    assert set(C.REREAD) == graded and set(C.HINTS) == graded
    assert all(2 <= len(h) <= 3 for h in C.HINTS.values())


def test_banned_table_catches_the_built_ins_and_spares_the_reference():
    from autograder import banned
    from notebook_tools import reference_answers
    table = banned.banned_for("norms")["*"]
    cheat = ("import torch.nn.functional as F\ndef layer_norm(x, s, w=None, b=None, eps=1e-5):\n"
             "    return F.layer_norm(x, s, w, b, eps)\n")
    assert [h.name for h in banned.find(cheat, table)] == ["torch.nn.functional.layer_norm"]
    for gid, source in reference_answers("norms").items():
        assert banned.find(source, table) == [], gid


def test_reread_names_real_headings_of_the_page():
    from pathlib import Path
    page = (Path(__file__).resolve().parent.parent / "book" / "chapters" / "norms.md").read_text()
    headings = {line[3:].strip() for line in page.splitlines() if line.startswith("## ")}
    assert set(C.REREAD.values()) <= headings


# ---------------------------------------------------------------- BatchNorm in sequence models (the page's demos)


def test_batch_norm_over_time_uses_statistics_over_batch_and_positions():
    x = torch.randn(3, 5, 4, generator=GEN) * 2 + 1
    bn = torch.nn.BatchNorm1d(4, affine=False).train()
    mean = x.mean(dim=(0, 1))
    var = x.var(dim=(0, 1), unbiased=False)
    torch.testing.assert_close(N.batch_norm_over_time(x, bn), (x - mean) / torch.sqrt(var + bn.eps))
    with pytest.raises(ValueError, match=r"\(B, T, 4\)"):
        N.batch_norm_over_time(torch.randn(3, 4), bn)


def test_batch_norm_over_time_leaks_later_tokens_in_training_only():
    x = torch.randn(2, 6, 8, generator=GEN)
    later = x.clone()
    later[:, -1] += 1.0  # only the last position changes
    bn = torch.nn.BatchNorm1d(8, affine=False)
    with torch.no_grad():
        moved_train = (N.batch_norm_over_time(later, bn.train()) - N.batch_norm_over_time(x, bn))[:, :-1]
        bn.eval()
        moved_eval = (N.batch_norm_over_time(later, bn) - N.batch_norm_over_time(x, bn))[:, :-1]
    assert moved_train.abs().max() > 0.05
    assert moved_eval.abs().max() == 0


def test_next_token_losses_batch_norm_beats_the_entropy_floor_only_in_training():
    # Uniform random tokens: without information from later tokens no model beats ln(vocab)
    # on average. 1000 sequences x 4 predictions give a standard error of about 0.01 nats.
    layer = N.next_token_losses("layer", steps=300, eval_sequences=1000)
    batch = N.next_token_losses("batch", steps=300, eval_sequences=1000)
    floor = math.log(16)
    assert layer["entropy"] == pytest.approx(floor)
    assert layer["train"] > floor - 0.05 and layer["train"] == pytest.approx(layer["eval"], abs=1e-5)
    assert batch["train"] < floor - 0.15          # it reads the future through the statistics
    assert batch["eval"] > floor                  # and pays for it at inference
    with pytest.raises(ValueError, match="'batch' or 'layer'"):
        N.next_token_losses("group")


def test_padding_pulls_running_mean_toward_the_pad_value_and_masking_does_not():
    mean_true = N.token_mean(8)
    padded_mean, _, pad_fraction = N.running_stats_from_padded_batches(masked=False, steps=200)
    masked_mean, masked_var, _ = N.running_stats_from_padded_batches(masked=True, steps=200)
    assert 0.2 < pad_fraction < 0.6
    # Zero pads make the batch mean (1 - pad fraction) x the real-token mean, up to sampling noise.
    torch.testing.assert_close(padded_mean, (1 - pad_fraction) * mean_true, atol=0.2, rtol=0.1)
    torch.testing.assert_close(masked_mean, mean_true, atol=0.2, rtol=0.05)
    torch.testing.assert_close(masked_var.sqrt(), N.token_std(8), atol=0.15, rtol=0.05)


def test_padded_batches_pad_with_zero_vectors_beyond_each_length():
    for x, mask in N.padded_batches(5, channels=3, seed=1):
        assert x.shape[:2] == mask.shape and x.shape[-1] == 3
        assert (x[~mask] == 0).all() and (x[mask] != 0).all()
        assert mask.sum(1).min() >= 2 and mask[:, 0].all()
