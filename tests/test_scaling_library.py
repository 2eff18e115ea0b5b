"""qkv.scaling (the book's demo code) against torch built-ins and known values, and qkv.checks.scaling's diagnoses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from qkv import scaling as S
from qkv.checks import CheckFailed, NotAttempted
from qkv.checks import scaling as C
from qkv.widgets import scaling as W

# ---------------------------------------------------------------- demo implementations


@pytest.mark.parametrize("scale", [None, 1.0, 0.3])
def test_attention_logits_softmax_matches_torch_sdpa_weights(scale):
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 3, 4, 16, generator=gen, dtype=torch.float64),
            torch.randn(2, 3, 6, 16, generator=gen, dtype=torch.float64))
    eye = torch.eye(6, dtype=torch.float64).expand(2, 3, 6, 6)
    torch.testing.assert_close(torch.softmax(S.attention_logits(q, k, scale), -1),
                               F.scaled_dot_product_attention(q, k, eye, scale=scale))


def test_attention_logits_default_is_one_over_sqrt_dk_and_zero_scale_is_honoured():
    q, k = torch.randn(3, 64), torch.randn(5, 64)
    torch.testing.assert_close(S.attention_logits(q, k), q @ k.T / 8)
    assert torch.equal(S.attention_logits(q, k, 0.0), torch.zeros(3, 5))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_attention_logits_keeps_low_precision_dtype(dtype):
    q, k = torch.randn(2, 4, 8).to(dtype), torch.randn(2, 5, 8).to(dtype)
    assert S.attention_logits(q, k).dtype == dtype


def test_attention_logits_rejects_bad_shapes_with_a_message():
    with pytest.raises(ValueError, match="share d_k"):
        S.attention_logits(torch.randn(2, 4), torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"expected q of shape \(\.\.\., T_q, d_k\)"):
        S.attention_logits(torch.randn(4), torch.randn(3, 4))


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4)])
def test_softmax_jacobian_matches_autograd(shape):
    z = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    p = torch.softmax(z, -1)
    flat_z = z.reshape(-1, shape[-1])
    want = torch.stack([torch.autograd.functional.jacobian(lambda t: torch.softmax(t, -1), row) for row in flat_z])
    torch.testing.assert_close(S.softmax_jacobian(p), want.reshape(*shape, shape[-1]))


def test_softmax_jacobian_known_values():
    torch.testing.assert_close(S.softmax_jacobian(torch.full((4,), 0.25, dtype=torch.float64)),
                               (torch.eye(4, dtype=torch.float64) - 0.25) / 4)
    assert torch.equal(S.softmax_jacobian(torch.tensor([0.0, 1.0, 0.0])), torch.zeros(3, 3))


def test_softmax_jacobian_rejects_a_scalar():
    with pytest.raises(ValueError, match=r"expected p of shape \(\.\.\., n\)"):
        S.softmax_jacobian(torch.tensor(1.0))


def test_measured_variance_is_dk_unscaled_and_one_scaled():
    d_ks = [16, 64, 256]
    unscaled, scaled = S.measure_logit_variance(d_ks, n_samples=20_000, seed=0)
    for d, u, s in zip(d_ks, unscaled.tolist(), scaled.tolist()):
        tol = C.variance_tolerance(d, 20_000)
        assert abs(u / d - 1) < tol and abs(s - 1) < tol
    again = S.measure_logit_variance(d_ks, n_samples=20_000, seed=0)
    assert torch.equal(again[0], unscaled) and torch.equal(again[1], scaled)


def test_unscaled_softmax_saturates_and_its_jacobian_shrinks_with_dk():
    small, large = S.saturation(16, scaled=False), S.saturation(1024, scaled=False)
    assert large["max_p"] > 0.9 > small["max_p"]
    assert large["jacobian_norm"] < 0.5 * small["jacobian_norm"]
    scaled = [S.saturation(d, scaled=True) for d in (16, 1024)]
    assert abs(scaled[0]["max_p"] - scaled[1]["max_p"]) < 0.05  # scaled: independent of d_k


def test_gradient_to_q_vanishes_without_the_scale():
    assert S.grad_norm_to_q(1024, scaled=False) < 0.01 * S.grad_norm_to_q(1024, scaled=True)
    assert 0.5 < S.grad_norm_to_q(1024, scaled=True) < 2.0


def test_training_moves_scaled_logits_away_from_unit_variance():
    before, after = S.train_self_retrieval(steps=100, seed=0)
    assert 0.7 < before.var().item() < 1.5
    assert after.var().item() > 3 * before.var().item()


# ---------------------------------------------------------------- diagnoses name the misconception

Q, K = C.random_qk((2,), 4, 6, 16, seed=0, dtype=torch.float64)
SQ_Q, SQ_K = C.random_qk((), 8, 8, 8, seed=1, dtype=torch.float64)


@pytest.mark.parametrize("wrong, scale, message", [
    (lambda q, k, s=None: q @ k.transpose(-2, -1), None, "without the 1/√d_k scale"),
    (lambda q, k, s=None: q @ k.transpose(-2, -1) / q.shape[-1], None, "divided by d_k = 16"),
    (lambda q, k, s=None: q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), 0.5, "used the default 1/√d_k although"),
    (lambda q, k, s=None: q @ k.transpose(-2, -1) / (s or math.sqrt(q.shape[-1])), 0.0,
     "used the default 1/√d_k although"),
    (lambda q, k, s=None: q @ k.transpose(-2, -1) / s, 0.5, "you divided by scale"),
    (lambda q, k, s=None: q @ k.transpose(-2, -1), 0.5, "was ignored"),
])
def test_logits_diagnosis_names_the_misconception(wrong, scale, message):
    with pytest.raises(CheckFailed, match=message):
        C.check_attention_logits(wrong, Q, K, scale)


def test_logits_diagnosis_k_not_transposed_square_case():
    with pytest.raises(CheckFailed, match="k was not transposed"):
        C.check_attention_logits(lambda q, k: q @ k / math.sqrt(q.shape[-1]), SQ_Q, SQ_K)


P = C.random_probs((3, 5), seed=2, dtype=torch.float64)


@pytest.mark.parametrize("wrong, message", [
    (lambda p: torch.diag_embed(p), "outer-product term − p pᵀ is missing"),
    (lambda p: torch.diag_embed(p) - (p.unsqueeze(-2) @ p.unsqueeze(-1)), "inner product pᵀp"),
    (lambda p: torch.diag_embed(p * (1 - p)), "kept only the diagonal"),
    (lambda p: -p.unsqueeze(-1) * p.unsqueeze(-2), "diag\\(p\\) term is missing"),
    (lambda p: p.unsqueeze(-1) * p.unsqueeze(-2) - torch.diag_embed(p), "sign is flipped"),
])
def test_jacobian_diagnosis_names_the_misconception(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        C.check_softmax_jacobian(wrong, P)


def test_jacobian_properties_catch_a_missing_outer_product():
    with pytest.raises(CheckFailed, match="outer-product term"):
        C.check_jacobian_properties(lambda p: torch.diag_embed(p))


def _variance_experiment(transform_unscaled, transform_scaled, reseed=False):
    calls = []

    def measure(d_ks, n_samples, seed=0):
        calls.append(seed)  # reseed=True: ignore the seed, as if the generator were left unseeded
        gen = torch.Generator().manual_seed(seed + (len(calls) if reseed else 0))
        u, s = [], []
        for d in d_ks:
            dots = (torch.randn(n_samples, d, generator=gen, dtype=torch.float64)
                    * torch.randn(n_samples, d, generator=gen, dtype=torch.float64)).sum(-1)
            u.append(transform_unscaled(dots, d))
            s.append(transform_scaled(dots, d))
        return torch.stack(u), torch.stack(s)
    return measure


@pytest.mark.parametrize("measure, message", [
    (_variance_experiment(lambda x, d: x.var(), lambda x, d: (x / d).var()), "you divided q·k by d_k"),
    (_variance_experiment(lambda x, d: x.var(), lambda x, d: x.var()), "scale was not applied"),
    (_variance_experiment(lambda x, d: x.var(), lambda x, d: x.var() / math.sqrt(d)),
     "divided the \\*variance\\* by √d_k"),
    (_variance_experiment(lambda x, d: x.std(), lambda x, d: (x / math.sqrt(d)).var()), "standard deviation √d_k"),
    (_variance_experiment(lambda x, d: (x / math.sqrt(d)).var(), lambda x, d: (x / math.sqrt(d)).var()), "look scaled"),
    (_variance_experiment(lambda x, d: x.var(), lambda x, d: (x / math.sqrt(d)).var(), reseed=True),
     "same seed gave different"),
])
def test_variance_diagnosis_names_the_misconception(measure, message):
    with pytest.raises(CheckFailed, match=message):
        C.check_measure_logit_variance(measure, [16, 64, 256], 20_000, 0)


def test_unfinished_function_reports_not_attempted():
    def stub(*args):
        raise NotImplementedError()
    for check, args in [(C.check_attention_logits, (Q, K)), (C.check_softmax_jacobian, (P,)),
                        (C.check_measure_logit_variance, ([16], 100, 0))]:
        with pytest.raises(NotAttempted, match="not attempted"):
            check(stub, *args)


def test_correct_reference_passes_every_check_in_low_precision():
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        q, k = C.random_qk((3,), 5, 7, 64, dtype=dtype, seed=9)
        C.check_attention_logits(S.attention_logits, q, k)
        C.check_attention_logits(S.attention_logits, q, k, 0.0)
        C.check_softmax_jacobian(S.softmax_jacobian, C.random_probs((2, 6), dtype=dtype, seed=3))
    C.check_jacobian_properties(S.softmax_jacobian)


def test_reread_and_hints_cover_every_graded_function_and_name_real_headings():
    import nbformat

    from notebook_tools import REPO, solution_cell_ids

    graded = set(solution_cell_ids("scaling"))
    assert graded == {"attention_logits", "softmax_jacobian", "measure_logit_variance"}
    assert set(C.REREAD) == graded and set(C.HINTS) == graded
    page = (REPO / "book" / "chapters" / "scaling.md").read_text()
    headings = {line[3:].strip() for line in page.splitlines() if line.startswith("## ")}
    assert set(C.REREAD.values()) <= headings
    assert all(2 <= len(h) <= 3 for h in C.HINTS.values())
    solution = nbformat.read(REPO / "solutions" / "scaling" / "scaling.ipynb", as_version=4)
    tests = [c.metadata.nbgrader["grade_id"] for c in solution.cells if c.metadata.get("nbgrader", {}).get("grade")]
    assert all(any(t == f"test_{f}" or t.startswith(f"test_{f}_") for f in graded) for t in tests)


def test_widget_draws_default_and_redraws_on_every_dk():
    import ipywidgets

    box = W.dk_explorer()
    slider, out = box.children
    assert isinstance(slider, ipywidgets.SelectionSlider) and isinstance(out, ipywidgets.Output)
    assert slider.value == 256 and list(slider.options) == list(W.D_KS)
    for d_k in W.D_KS:
        slider.value = d_k  # triggers a redraw; must not raise
    with pytest.raises(ValueError, match="default_dk must be one of"):
        W.dk_explorer(default_dk=100)


# ---- T5's fold of 1/√d_k into W_Q, under Adam and under parameter-relative steps ----

def test_t5_fold_is_exact_at_initialization_and_stays_exact_under_adafactor():
    at_init, trained = S.t5_fold_gap("adafactor", d_k=16, steps=20)
    assert at_init == 0.0
    # √16 = 4 is a power of two, so dividing W_Q by it is exact in floating point, and
    # Adafactor's step max(ε₂, RMS(θ))·ρ·G/√V scales with θ and not with G: bit-identical logits.
    assert trained == 0.0
    # For other d_k only rounding separates them.
    assert S.t5_fold_gap("adafactor", d_k=12, steps=20)[1] < 1e-5


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_t5_fold_drifts_under_optimizers_that_ignore_the_parameter_scale(optimizer):
    at_init, trained = S.t5_fold_gap(optimizer, d_k=16, steps=5)
    assert at_init == 0.0
    assert trained > 0.5


def test_t5_fold_gap_rejects_an_unknown_optimizer():
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        S.t5_fold_gap("rmsprop")
