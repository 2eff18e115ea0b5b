"""Checks for the norms exercise: layer_norm, batch_norm, rms_norm, masked_batch_norm.

Oracles are torch's own modules with copied parameters, run in float64 and cast to
the input dtype: ``nn.LayerNorm``, ``nn.BatchNorm1d`` (its running buffers give the
expected running statistics), ``nn.RMSNorm``, and for the masked BatchNorm an
``nn.BatchNorm1d`` applied to the gathered real tokens. None of them uses qkv's demo code.

Running statistics follow the exercise's functional contract: ``batch_norm`` and
``masked_batch_norm`` return ``(output, new_running_mean, new_running_var)`` and must
not modify the tensors they are given.
"""

from __future__ import annotations

import torch

from qkv.checks import sections
from qkv.checks.core import CheckFailed, Diagnosis, NotAttempted, call_learner, expect_close, expect_pair
from qkv.checks.graded import check_of
from qkv.checks.properties import normalised_axes
from qkv.checks.registry import Diag, Property, declare

# ----------------------------------------------------------------------------- oracles


def _shape(normalized_shape) -> tuple[int, ...]:
    return (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)


def oracle_layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5) -> torch.Tensor:
    """torch.nn.LayerNorm with copied weight and bias, in float64."""
    ln = torch.nn.LayerNorm(_shape(normalized_shape), eps=eps,
                            elementwise_affine=weight is not None or bias is not None, dtype=torch.float64)
    with torch.no_grad():
        if weight is not None:
            ln.weight.copy_(weight.double())
        if bias is not None:
            ln.bias.copy_(bias.double())
    with torch.no_grad():
        return ln(x.double()).to(x.dtype)


def oracle_rms_norm(x, weight=None, eps=1e-6) -> torch.Tensor:
    """torch.nn.RMSNorm over the last dim with copied weight, in float64."""
    rms = torch.nn.RMSNorm(x.shape[-1], eps=eps, elementwise_affine=weight is not None, dtype=torch.float64)
    with torch.no_grad():
        if weight is not None:
            rms.weight.copy_(weight.double())
        return rms(x.double()).to(x.dtype)


def oracle_batch_norm(x, running_mean, running_var, weight=None, bias=None, training=True, momentum=0.1, eps=1e-5):
    """(output, new running_mean, new running_var) from torch.nn.BatchNorm1d, in float64."""
    bn = torch.nn.BatchNorm1d(x.shape[1], eps=eps, momentum=momentum, dtype=torch.float64)
    with torch.no_grad():
        bn.running_mean.copy_(running_mean.double())
        bn.running_var.copy_(running_var.double())
        bn.weight.copy_(weight.double() if weight is not None else torch.ones(x.shape[1]))
        bn.bias.copy_(bias.double() if bias is not None else torch.zeros(x.shape[1]))
        bn.train(training)
        out = bn(x.double())
    return out.to(x.dtype), bn.running_mean.to(running_mean.dtype), bn.running_var.to(running_var.dtype)


def oracle_masked_batch_norm(x, mask, running_mean, running_var, weight=None, bias=None, training=True,
                             momentum=0.1, eps=1e-5):
    """BatchNorm1d on the gathered real tokens x[mask] (n_real, C), scattered back; padding -> 0."""
    out_real, new_mean, new_var = oracle_batch_norm(x[mask.bool()], running_mean, running_var, weight, bias,
                                                    training, momentum, eps)
    out = torch.zeros_like(x)
    out[mask.bool()] = out_real
    return out, new_mean, new_var


# ----------------------------------------------------------------------------- wrong variants


def _normalize(x, mean, var, eps, *, eps_outside=False):
    return (x - mean) / (var.sqrt() + eps) if eps_outside else (x - mean) / (var + eps).sqrt()


def _affine(y, weight, bias, shape):
    if weight is not None:
        y = y * weight.double().reshape(shape)
    if bias is not None:
        y = y + bias.double().reshape(shape)
    return y


def _ln_variant(x, normalized_shape, weight, bias, eps, *, unbiased=False, eps_outside=False, dims=None):
    x64 = x.double()
    shape = _shape(normalized_shape)
    dims = dims if dims is not None else tuple(range(-len(shape), 0))
    n = 1
    for d in dims:
        n *= x.shape[d]
    if unbiased and n < 2:
        return None
    mean = x64.mean(dims, keepdim=True)
    var = ((x64 - mean) ** 2).sum(dims, keepdim=True) / (n - 1 if unbiased else n)
    return _affine(_normalize(x64, mean, var, eps, eps_outside=eps_outside), weight, bias, shape)


def layer_norm_diagnoses(x, normalized_shape, weight=None, bias=None, eps=1e-5) -> list[Diagnosis]:
    """Named wrong variants of LayerNorm (float64)."""
    k = len(_shape(normalized_shape))
    cases = [
        (_ln_variant(x, normalized_shape, weight, bias, eps, unbiased=True),
         "you normalized with the unbiased variance (divided by n − 1, torch.var's default). LayerNorm uses the "
         "biased variance: divide by n (unbiased=False, or mean of squared deviations)."),
        (_ln_variant(x, normalized_shape, weight, bias, eps, eps_outside=True),
         "eps was added outside the square root, (x − mean) / (std + eps). It belongs inside: "
         "(x − mean) / sqrt(var + eps)."),
    ]
    if x.dim() > k:
        cases.append((_ln_variant(x, normalized_shape, weight, bias, eps, dims=(0,)),
                      "wrong axis: you normalized over the batch dimension (dim 0), which is what BatchNorm does. "
                      "LayerNorm takes its statistics over the last normalized_shape dims of each sample."))
        cases.append((_ln_variant(x, normalized_shape, weight, bias, eps, dims=tuple(range(x.dim() - k))),
                      "wrong axis: you normalized each channel over all the other dims (BatchNorm's axes). "
                      "LayerNorm takes its statistics over the last normalized_shape dims of each sample."))
    if k > 1:
        cases.append((_ln_variant(x, normalized_shape, weight, bias, eps, dims=(-1,)),
                      f"you normalized over the last dim only; normalized_shape has {k} dims, so the statistics "
                      f"are taken over the last {k} dims together."))
    return [(w, Diag(m, sections.NORM_AXES)) for w, m in cases if w is not None and w.shape == x.shape]


def _bn_variant(x, running_mean, running_var, weight, bias, training, momentum, eps, *, unbiased_norm=False,
                eps_outside=False, biased_running=False, inverted_momentum=False, stats_mode=None, feature_axis=False):
    """Output and running stats of BatchNorm with one deliberate mistake (float64)."""
    x64 = x.double()
    rm, rv = running_mean.double(), running_var.double()
    c = x.shape[1]
    shape = (1, c) if x.dim() == 2 else (1, c, 1)
    dims = (0,) if x.dim() == 2 else (0, 2)
    n = x.numel() // c
    new_mean, new_var = rm.clone(), rv.clone()
    use_batch = training if stats_mode is None else stats_mode == "batch"
    if feature_axis:  # statistics over the channels of each sample/position: LayerNorm's axis
        mean = x64.mean(1, keepdim=True)
        var = ((x64 - mean) ** 2).mean(1, keepdim=True)
        return _affine(_normalize(x64, mean, var, eps), weight, bias, shape), new_mean, new_var
    if use_batch and n > 1:
        mean = x64.mean(dims)
        biased = ((x64 - mean.reshape(shape)) ** 2).mean(dims)
        unbiased = biased * n / (n - 1)
        var = unbiased if unbiased_norm else biased
        batch_var = biased if biased_running else unbiased
        m = 1 - momentum if inverted_momentum else momentum
        if training:
            new_mean = (1 - m) * rm + m * mean
            new_var = (1 - m) * rv + m * batch_var
    else:
        mean, var = rm, rv
    y = _normalize(x64, mean.reshape(shape), var.reshape(shape), eps, eps_outside=eps_outside)
    return _affine(y, weight, bias, shape), new_mean, new_var


def batch_norm_diagnoses(x, running_mean, running_var, weight=None, bias=None, training=True, momentum=0.1, eps=1e-5):
    """[(message, (output, new_mean, new_var))] for the named mistakes that apply to this mode."""
    args = (x, running_mean, running_var, weight, bias, training, momentum, eps)
    cases = [
        ("eps was added outside the square root, (x − mean) / (std + eps). "
         "It belongs inside: (x − mean) / sqrt(var + eps).",
         _bn_variant(*args, eps_outside=True)),
        ("wrong axis: you normalized each sample over its channels (LayerNorm's axis). BatchNorm takes each channel's "
         "statistics over the batch (dim 0, and dim 2 for (N, C, L) inputs).", _bn_variant(*args, feature_axis=True)),
    ]
    if training:
        cases += [
            ("you normalized with the unbiased batch variance (n − 1). BatchNorm normalizes with the biased variance "
             "(divide by n); only the running_var update uses the unbiased one.",
             _bn_variant(*args, unbiased_norm=True)),
            ("running_var was updated with the biased batch variance. torch updates it with the unbiased one "
             "(multiply by n / (n − 1), n = values per channel), even though it normalizes with the biased one.",
             _bn_variant(*args, biased_running=True)),
            ("the momentum convention is inverted: torch computes new = (1 − momentum) · old + momentum · batch "
             "(momentum = 0.1 moves the running statistics 10% of the way to the batch).",
             _bn_variant(*args, inverted_momentum=True)),
            ("in training mode you normalized with the running statistics; training normalizes with the batch's own "
             "mean and variance.", _bn_variant(*args, stats_mode="running")),
        ]
    else:
        cases += [
            ("in eval mode you normalized with the batch statistics; eval mode uses running_mean and running_var.",
             _bn_variant(*args, stats_mode="batch")),
        ]
    return [(Diag(m, sections.NORM_AXES if "axis" in m else sections.BATCHNORM), r) for m, r in cases]


# ----------------------------------------------------------------------------- checks


@check_of("layer_norm")
def check_layer_norm(layer_norm, x, normalized_shape, weight=None, bias=None, eps=1e-5) -> None:
    """Compare ``layer_norm(x, normalized_shape, weight, bias, eps)`` with torch.nn.LayerNorm."""
    got = call_learner(layer_norm, x, normalized_shape, weight, bias, eps, name="layer_norm")
    what = f"layer_norm(x of shape {tuple(x.shape)}, normalized_shape={normalized_shape}, eps={eps:g})"
    expect_close(got, oracle_layer_norm(x, normalized_shape, weight, bias, eps), what=what,
                 diagnoses=lambda: layer_norm_diagnoses(x, normalized_shape, weight, bias, eps))


@check_of("rms_norm")
def check_rms_norm(rms_norm, x, weight=None, eps=1e-6) -> None:
    """Compare ``rms_norm(x, weight, eps)`` with torch.nn.RMSNorm."""
    got = call_learner(rms_norm, x, weight, eps, name="rms_norm")

    def diagnoses():
        x64 = x.double()
        w = weight.double() if weight is not None else 1.0
        ms = (x64 ** 2).mean(-1, keepdim=True)
        centered = x64 - x64.mean(-1, keepdim=True)
        cases = [
            ((centered / ((centered ** 2).mean(-1, keepdim=True) + eps).sqrt()) * w,
             "you subtracted the mean: that is LayerNorm without a bias. RMSNorm does not re-center; it divides x "
             "by sqrt(mean(x²) + eps)."),
            (x64 / (ms.sqrt() + eps) * w,
             "eps was added outside the square root, x / (rms + eps). It belongs inside: x / sqrt(mean(x²) + eps)."),
        ]
        if x.shape[-1] > 1:
            cases.append((x64 / (x64.std(-1, keepdim=True) + eps) * w,
                          "you divided by the standard deviation (torch.std); RMSNorm divides by the root mean square "
                          "sqrt(mean(x²) + eps), which does not subtract the mean."))
        for dim in range(x.dim() - 1):
            cases.append((x64 / ((x64 ** 2).mean(dim, keepdim=True) + eps).sqrt() * w,
                          f"wrong axis: the mean square was taken over dim {dim}; "
                          "RMSNorm uses the last dim (the channels)."))
        return cases

    expect_close(got, oracle_rms_norm(x, weight, eps), what=f"rms_norm(x of shape {tuple(x.shape)}, eps={eps:g})",
                 diagnoses=diagnoses)


def _call_bn(fn, name, args, inputs_to_protect):
    before = [t.clone() for t in inputs_to_protect]
    result = call_learner(fn, *args, name=name)
    for t, b in zip(inputs_to_protect, before):
        if not torch.equal(t, b):
            raise CheckFailed(f"{name}: you modified an argument in place (running_mean, running_var or x). This "
                              "exercise is functional: return the new running statistics as new tensors instead.")
    return expect_pair(result, what=name, names=("output", "new_running_mean", "new_running_var"))


def _compare_bn(name, what, got, want, cases) -> None:
    for i, part in enumerate(("output", "new running_mean", "new running_var")):
        expect_close(got[i], want[i], what=f"{what}: {part}",
                     diagnoses=lambda i=i: [(res[i].double(), msg) for msg, res in cases() if res is not None])


@check_of("batch_norm")
def check_batch_norm(batch_norm, x, running_mean, running_var, weight=None, bias=None, training=True,
                     momentum=0.1, eps=1e-5) -> None:
    """Compare ``batch_norm(...)`` and the running statistics it returns with torch.nn.BatchNorm1d."""
    args = (x, running_mean, running_var, weight, bias, training, momentum, eps)
    got = _call_bn(batch_norm, "batch_norm", args, [x, running_mean, running_var])
    want = oracle_batch_norm(*args)
    what = f"batch_norm(x of shape {tuple(x.shape)}, training={training}, momentum={momentum:g}, eps={eps:g})"
    cache = []

    def cases():
        if not cache:
            cache.extend(batch_norm_diagnoses(*args))
        return cache

    _compare_bn("batch_norm", what, got, want, cases)


@check_of("batch_norm")
def check_batch_norm_single_value_raises(batch_norm) -> None:
    """Training mode with one value per channel must raise ValueError, as nn.BatchNorm1d does."""
    x = torch.randn(1, 4, generator=torch.Generator().manual_seed(0))
    try:
        result = batch_norm(x, torch.zeros(4), torch.ones(4), None, None, True, 0.1, 1e-5)
    except NotImplementedError:
        raise NotAttempted("batch_norm: not attempted yet. Replace `raise NotImplementedError()` with your code, "
                           "then rerun this cell.") from None
    except ValueError:
        return
    except Exception as exc:
        raise CheckFailed(f"batch_norm(x of shape (1, 4), training=True) raised {type(exc).__name__}: {exc}; "
                          "raise a ValueError instead.") from exc
    else:
        del result
        raise CheckFailed("batch_norm(x of shape (1, 4), training=True) returned a result instead of "
                          "raising ValueError: with one value per channel the batch variance is undefined "
                          "(this is why a batch of one decoding step cannot use BatchNorm in training mode).")


@check_of("masked_batch_norm")
def check_masked_batch_norm(masked_batch_norm, x, mask, running_mean, running_var, weight=None, bias=None,
                            training=True, momentum=0.1, eps=1e-5) -> None:
    """Compare with nn.BatchNorm1d applied to the real tokens x[mask]; pad outputs must be 0."""
    args = (x, mask, running_mean, running_var, weight, bias, training, momentum, eps)
    got = _call_bn(masked_batch_norm, "masked_batch_norm", args, [x, running_mean, running_var])
    want = oracle_masked_batch_norm(*args)
    what = f"masked_batch_norm(x of shape {tuple(x.shape)}, {int(mask.sum())} real tokens, training={training})"
    keep = mask.bool()[..., None].double()
    cache = []

    def cases():
        if cache:
            return cache
        flat = x.reshape(-1, x.shape[-1])
        all_tokens = oracle_batch_norm(flat, running_mean, running_var, weight, bias, training, momentum, eps)
        out_all = all_tokens[0].double().reshape(x.shape)
        msg = ("padding was included in the batch statistics: the mean and variance must come from the real "
               "tokens only (where mask is True), so that the pad values and the amount of padding change nothing.")
        cache.extend([(msg, (out_all * keep, all_tokens[1], all_tokens[2])),
                      (msg, (out_all, all_tokens[1], all_tokens[2]))])
        real = oracle_masked_batch_norm(*args)
        cache.append(("the real tokens are right but the padding positions of the output are not 0.",
                      (real[0].double() + (1 - keep) * out_all, real[1], real[2])))
        return cache

    if isinstance(got[0], torch.Tensor) and got[0].shape == x.shape and training:
        pad = ~mask.bool()
        if pad.any() and got[0][pad].abs().max() > 0 and torch.allclose(
                got[0][mask.bool()].double(), want[0][mask.bool()].double(), atol=1e-3, rtol=1e-3):
            raise CheckFailed(f"{what}: the real tokens are right, but the padding positions of the output must be 0.")
    _compare_bn("masked_batch_norm", what, got, want, cases)


# ----------------------------------------------------------------------------- properties


def _wrong_axes(found: list[str], want: str, candidates: dict[str, tuple[int, ...]]) -> list[str] | None:
    """The axis sets the output is (wrongly) normalised over, or None when only the right one is.
    Normalising over a subset of the right axes also makes the output normalised over the right
    ones, so a subset found normalised is a mistake even when ``want`` is found too."""
    subsets = [f for f in found if f != want and set(candidates[f]) < set(candidates[want])]
    if want in found and not subsets:
        return None
    return subsets or [f for f in found if f != want]


def _axes_message(found: list[str], want: str, what: str) -> str:
    if found:
        return (f"your {what} output is normalised over {found[0]}, but it must be normalised over {want}: the "
                "statistics are taken over the wrong axes.")
    return (f"your {what} output is not normalised over {want} (mean 0 and variance 1 there before the gain and "
            "bias): the mean or the variance is computed wrongly (or over the wrong axes).")


def _layer_norm_properties(p) -> str | None:
    """Without gain and bias, the output has mean 0 and variance 1 over the normalised dims; eps matters."""
    x, shape = p.get("x"), p.get("normalized_shape")
    if x is None or shape is None:
        return None
    k = len(_shape(shape))
    x64 = x.double()
    eps = 1e-12
    got = p.call(x64, shape, None, None, eps)
    if not isinstance(got, torch.Tensor) or got.shape != x.shape:
        return None
    dims = tuple(range(x.dim() - k, x.dim()))
    if any(x.shape[d] < 2 for d in dims) or (x64.var(dims) < 1e-6).any():
        return None
    candidates = {f"the last {k} dim(s) {dims}": dims, "the last dim only": (x.dim() - 1,), "the batch dim 0": (0,)}
    if x.dim() > k:
        candidates["all the other dims (BatchNorm's axes)"] = tuple(range(x.dim() - k))
    found = normalised_axes(got, candidates)
    want = f"the last {k} dim(s) {dims}"
    wrong = _wrong_axes(found, want, candidates)
    if wrong is not None:
        return Diag(_axes_message(wrong, want, "LayerNorm"), sections.NORM_AXES)
    a = p.call(x64, shape, None, None, 1e-5)
    b = p.call(x64, shape, None, None, 10.0)
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.allclose(a, b, atol=1e-6):
        return Diag("your layer_norm ignores eps: changing eps from 1e-5 to 10 did not change the result. eps goes "
                    "inside the square root: (x − mean) / sqrt(var + eps).", sections.NORM_AXES)
    return None


def _rms_norm_properties(p) -> str | None:
    """Without a gain, the output has mean square 1 over the last dim; it is not centred; eps matters."""
    x = p.get("x")
    if x is None:
        return None
    x64 = x.double()
    got = p.call(x64, None, 1e-12)
    if not isinstance(got, torch.Tensor) or got.shape != x.shape or x.shape[-1] < 2:
        return None
    candidates = {"the last dim": (x.dim() - 1,)}
    candidates.update({f"dim {d}": (d,) for d in range(x.dim() - 1)})
    found = normalised_axes(got, candidates, center=False)
    if "the last dim" not in found:
        return Diag(_axes_message(found, "the last dim", "RMSNorm").replace(
            "mean 0 and variance 1", "mean square 1"), sections.RMSNORM)
    a, b = p.call(x64, None, 1e-6), p.call(x64, None, 10.0)
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.allclose(a, b, atol=1e-6):
        return Diag("your rms_norm ignores eps: changing eps from 1e-6 to 10 did not change the result. eps goes "
                    "inside the square root: x / sqrt(mean(x²) + eps).", sections.RMSNORM)
    return None


def _batch_norm_properties(p) -> str | None:
    """Eval returns the running statistics unchanged; training output is normalised per channel over the
    batch axes; momentum 0 keeps the running statistics, momentum 1 replaces them by the batch's."""
    x, rm, rv = p.get("x"), p.get("running_mean"), p.get("running_var")
    if x is None or rm is None or x.shape[0] * (x.numel() // (x.shape[0] * x.shape[1])) < 2:
        return None
    x64, rm64, rv64 = x.double(), rm.double(), rv.double()
    ev = p.call(x64, rm64, rv64, None, None, False, 0.1, 1e-5)
    if isinstance(ev, tuple) and len(ev) == 3 and all(isinstance(t, torch.Tensor) for t in ev[1:]) \
            and not (torch.equal(ev[1], rm64) and torch.equal(ev[2], rv64)):
        return Diag("in eval mode the running statistics must come back unchanged (only training updates them).",
                    sections.BATCHNORM)
    tr = p.call(x64, rm64, rv64, None, None, True, 0.1, 1e-12)
    if not (isinstance(tr, tuple) and len(tr) == 3 and isinstance(tr[0], torch.Tensor) and tr[0].shape == x.shape):
        return None
    batch_dims = (0,) if x.dim() == 2 else (0, 2)
    want = f"the batch axes {batch_dims} of each channel"
    candidates = {want: batch_dims, "the channels of each sample (LayerNorm's axis)": (1,), "dim 0 only": (0,)}
    if x.dim() == 3:
        candidates["dim 2 only"] = (2,)
    found = normalised_axes(tr[0], candidates)
    wrong = _wrong_axes(found, want, candidates)
    if wrong is not None:
        return Diag(_axes_message(wrong, want, "training-mode BatchNorm"), sections.NORM_AXES)
    keep = p.call(x64, rm64, rv64, None, None, True, 0.0, 1e-5)
    if isinstance(keep, tuple) and len(keep) == 3 and isinstance(keep[1], torch.Tensor) and \
            not torch.allclose(keep[1], rm64, atol=1e-9):
        return Diag("with momentum = 0 the running statistics must not move (new = (1 − momentum)·old + "
                    "momentum·batch); yours moved: the momentum convention is inverted or the update is wrong.",
                    sections.BATCHNORM)
    return None


def _masked_bn_properties(p) -> str | None:
    """The real tokens' outputs do not depend on what the padding holds."""
    x, mask, rm, rv = p.get("x"), p.get("mask"), p.get("running_mean"), p.get("running_var")
    if x is None or mask is None or mask.all():
        return None
    args = (p.get("weight"), p.get("bias"), p.get("training", True), p.get("momentum", 0.1), p.get("eps", 1e-5))
    a = p.call(x, mask, rm, rv, *args)
    b = p.call(x.masked_fill(~mask.bool()[..., None], 7.0), mask, rm, rv, *args)
    if isinstance(a, tuple) and isinstance(b, tuple) and isinstance(a[0], torch.Tensor) and a[0].shape == x.shape:
        real = mask.bool()
        if not torch.allclose(a[0][real].double(), b[0][real].double(), atol=1e-4):
            return Diag("changing only the values at the padding positions changed the outputs of the real tokens: "
                        "padding leaks into the statistics. Compute the mean and variance from x[mask] only.",
                        sections.PADDING_IN_BN)
        if args[2] and p.get("weight") is None and p.get("bias") is None and int(real.sum()) > 1:
            y = a[0][real].double()
            if not normalised_axes(y, {"the real tokens": (0,)}, tol=1e-2):
                return Diag("the real tokens' outputs are not normalised (mean 0 and variance 1 per channel over the "
                            "real tokens): the mean or variance is divided by the wrong count (the number of real "
                            "tokens, not B·T).", sections.PADDING_IN_BN)
    return None


def _batch_norm_self_check(fn) -> None:
    running_mean, running_var = random_running_stats(4, seed=0)
    x = random_input((6, 4), seed=2, scale=2.0, shift=1.0)
    check_batch_norm(fn, x, running_mean, running_var, None, None, True, 0.1, 1e-5)
    check_batch_norm(fn, x, running_mean, running_var, None, None, False, 0.1, 1e-5)


declare("layer_norm", chapter="norms", args=("x", "normalized_shape", "weight", "bias", "eps"),
        properties=(Property("mean 0, variance 1 over the normalised dims; eps inside the root",
                             _layer_norm_properties),))
declare("batch_norm", chapter="norms",
        args=("x", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"),
        self_check=_batch_norm_self_check,
        properties=(Property("eval keeps the running statistics; training normalises each channel over the batch; "
                             "momentum 0 keeps the running statistics", _batch_norm_properties),))
declare("rms_norm", chapter="norms", args=("x", "weight", "eps"),
        properties=(Property("mean square 1 over the last dim; eps inside the root", _rms_norm_properties),))
declare("masked_batch_norm", chapter="norms",
        args=("x", "mask", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"),
        helpers=("batch_norm",),
        properties=(Property("the real tokens' outputs do not depend on the padding", _masked_bn_properties),))


# ----------------------------------------------------------------------------- inputs


def random_input(shape, *, dtype=torch.float32, seed: int = 0, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    """Reproducible normal input with a per-channel spread of means, so that wrong axes give different answers."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64) * scale + shift
    x = x + torch.linspace(-1, 1, shape[-1], dtype=torch.float64) * scale  # channels differ in mean
    return x.to(dtype)


def random_running_stats(c: int, *, seed: int = 0, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(running_mean, running_var) of shape (C,), away from the initial (0, 1) so that mistakes show."""
    gen = torch.Generator().manual_seed(seed)
    mean = torch.randn(c, generator=gen, dtype=torch.float64) * 0.5
    var = torch.rand(c, generator=gen, dtype=torch.float64) * 2 + 0.5
    return mean.to(dtype), var.to(dtype)


def padded_batch(lengths, c: int, *, seed: int = 0, pad_value: float = 0.0, dtype=torch.float32):
    """(x (B, T, C), mask (B, T)) with sequences of the given lengths and ``pad_value`` at padding positions."""
    gen = torch.Generator().manual_seed(seed)
    T = max(lengths)
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    x = torch.randn(len(lengths), T, c, generator=gen, dtype=torch.float64) + 0.5
    x = x.masked_fill(~mask[..., None], pad_value)
    return x.to(dtype), mask


# ----------------------------------------------------------------------------- learner guidance

# Graded function (or "*" for all) -> the built-ins an answer must not call: the ones it asks to write.
BANNED = {
    "*": ["torch.nn.functional.layer_norm", "torch.nn.functional.batch_norm", "torch.nn.functional.rms_norm",
          "torch.nn.functional.group_norm", "torch.nn.functional.instance_norm",
          "torch.nn.LayerNorm", "torch.nn.BatchNorm1d", "torch.nn.BatchNorm2d", "torch.nn.BatchNorm3d",
          "torch.nn.RMSNorm", "torch.nn.GroupNorm", "torch.nn.InstanceNorm1d",
          "torch.layer_norm", "torch.batch_norm", "torch.rms_norm", "torch.group_norm", "torch.instance_norm",
          "torch.native_layer_norm", "torch.native_batch_norm"],
}

# Graded function -> the heading of the book section to reread when it fails.
REREAD = {
    "layer_norm": "Which axes do LayerNorm, BatchNorm and RMSNorm normalize over?",
    "batch_norm": "What are the pros and cons of BatchNorm?",
    "rms_norm": "What is RMSNorm and why do modern models use it?",
    "masked_batch_norm": "Why do Transformers use LayerNorm rather than BatchNorm?",
}

# Graded function -> progressive hints: each leads further without giving the code away.
HINTS = {
    "layer_norm": [
        "The statistics are taken over the last len(normalized_shape) dims of x, separately for every other index. "
        "Keep those dims (keepdim=True) so the mean and variance broadcast back over x.",
        "The variance is the mean of the squared deviations from the mean: divide by n, not n − 1 "
        "(torch.var divides by n − 1 unless told otherwise).",
        "eps goes inside the square root, next to the variance. "
        "weight and bias may be None: apply each only when given.",
    ],
    "batch_norm": [
        "Channels are dim 1. Each channel's statistics are taken over every other dim: dim 0 for (N, C), "
        "dims 0 and 2 for (N, C, L). Reshape the (C,) statistics so they broadcast back over x.",
        "In training mode normalize with the batch mean and the biased batch variance; then build new running "
        "statistics as (1 − momentum) times the old plus momentum times the batch value, using the unbiased "
        "variance (times n / (n − 1)) for running_var. In eval mode normalize with the running statistics.",
        "Never write into running_mean or running_var: compute new tensors and return all three. With only one "
        "value per channel in training mode, raise ValueError.",
    ],
    "rms_norm": [
        "RMSNorm works on the last dim only and never subtracts the mean.",
        "Divide x by the square root of (the mean of x squared over the last dim, plus eps), then multiply by "
        "weight if it is given.",
    ],
    "masked_batch_norm": [
        "Boolean indexing x[mask] gathers the real tokens into an (n_real, C) matrix: exactly the (N, C) input "
        "your batch_norm from Part 2 accepts.",
        "Run your batch_norm on the gathered tokens, then scatter its output back into a zero tensor shaped "
        "like x, at the positions where mask is True.",
    ],
}
