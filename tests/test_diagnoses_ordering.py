"""Most specific diagnosis wins, and every one that applies is reported (issue 16, weak spot 4).

- A known-values check that fails at several points names the known mistake that explains them
  (linear_warmup_decay's off-by-one was hidden by "lr(0) must be 0"), and two independent
  mistakes are both named.
- A property check reports every property that is broken (mlm_mask reported selected padding
  but never selected special tokens).
- A named mistake outranks a generic description; a broken helper outranks both.
"""

from __future__ import annotations

import torch

from diagnosis_tools import assert_named, failure_of
from qkv.checks import bert as BE
from qkv.checks import core
from qkv.checks import mqa_gqa as G


def test_the_off_by_one_warm_up_is_named_by_the_known_values_check():
    def off_by_one(step, peak_lr, warmup_steps, total_steps):
        if step >= total_steps:
            return 0.0
        if step < warmup_steps:
            return peak_lr * min((step + 1) / warmup_steps, 1.0)
        return peak_lr * (total_steps - step) / (total_steps - warmup_steps)

    failure = failure_of(BE.check_schedule_known_values, off_by_one)
    text = assert_named(failure, "warm-up is off by one")
    assert "halfway through warm-up" not in text  # the point-wise reasons are superseded


def test_two_schedule_mistakes_are_both_named():
    def off_by_one_and_negative(step, peak_lr, warmup_steps, total_steps):
        if step < warmup_steps:
            return peak_lr * (step + 1) / warmup_steps
        return peak_lr * (total_steps - step) / (total_steps - warmup_steps)

    failure = failure_of(BE.check_schedule_known_values, off_by_one_and_negative)
    assert_named(failure, "2 problems", "off by one", "negative after total_steps")


def test_a_point_no_known_mistake_explains_keeps_its_own_reason():
    def late_peak(step, peak_lr, warmup_steps, total_steps):
        if step >= total_steps:
            return 0.0
        if step < warmup_steps:
            return peak_lr * min(step / (warmup_steps - 1), 1.0)
        return peak_lr * (total_steps - step) / (total_steps - warmup_steps)

    assert_named(failure_of(BE.check_schedule_known_values, late_peak), "lr(2) = 0.666", "halfway through warm-up")


IDS, SPECIAL, PAD, MASK = BE.mlm_batch(n_seqs=40, max_len=64, vocab_size=300, seed=0)


def test_mlm_mask_reports_selected_padding_and_selected_special_tokens_together():
    def selects_everything_eligible_or_not(input_ids, special_ids, pad_id, mask_id, vocab_size, rate=0.15,
                                           generator=None):
        sel = torch.rand(input_ids.shape, generator=generator) < rate
        labels = torch.where(sel, input_ids, torch.full_like(input_ids, -100))
        return torch.where(sel, torch.full_like(input_ids, mask_id), input_ids), labels

    failure = failure_of(BE.check_mlm_mask_properties, selects_everything_eligible_or_not, IDS, SPECIAL, PAD, MASK, 300)
    assert_named(failure, "2 problems", "padding position(s) were selected", "special token(s)")


def test_chunking_reports_every_broken_property():
    def short_chunks(n, window, stride):
        return [(s, min(s + window - 1, n)) for s in range(0, max(n - window, 0) + stride, stride)]

    failure = failure_of(BE.check_chunks_known_value, short_chunks)
    assert_named(failure, "2 problems", "in no chunk", "shorter than window")


def test_explain_points_prefers_one_mistake_that_explains_everything():
    points = [("f(0)", 1.0, 0.0, "zero at 0"), ("f(1)", 2.0, 1.0, "one at 1"), ("f(2)", 3.0, 3.0, "ok")]
    variants = [([1.0, 5.0, 3.0], "explains f(0) only"), ([1.0, 2.0, 9.0], "explains f(0) and f(1)")]
    assert core.explain_points(points, variants) == ["explains f(0) and f(1)"]
    assert core.explain_points(points, []) == ["f(0) = 1.0, expected 0.0: zero at 0",
                                               "f(1) = 2.0, expected 1.0: one at 1"]


def test_a_named_mistake_outranks_the_generic_description():
    """The tiled repeat_kv is a named mistake of grouped-query attention; the generic 'right values in
    the wrong order' description would also apply, but the named one is shown."""
    def tiled(x, n_rep):
        return x.repeat(1, n_rep, 1, 1)

    failure = failure_of(G.check_repeat_kv, tiled,
                         torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5), 2)
    text = assert_named(failure, "repeated in the wrong order")
    assert "wrong places" not in text and failure.level == core.NAMED
