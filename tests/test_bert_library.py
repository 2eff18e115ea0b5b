"""qkv.bert (the book's demo code) against torch built-ins, known values and properties,
and qkv.checks.bert's diagnoses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qkv import bert as B
from qkv.checks import CheckFailed, NotAttempted
from qkv.checks import bert as C

IDS, SPECIAL, PAD, MASK = C.mlm_batch(n_seqs=200, max_len=512, vocab_size=1000, seed=0)
V = 1000


# ---------------------------------------------------------------- mlm_mask

def test_mlm_mask_never_selects_special_or_padding_and_labels_are_minus_100_elsewhere():
    corrupted, labels = B.mlm_mask(IDS, SPECIAL, PAD, MASK, V, generator=torch.Generator().manual_seed(0))
    selected = labels != -100
    assert not (selected & torch.isin(IDS, torch.tensor(SPECIAL + [PAD]))).any()
    assert torch.equal(labels[selected], IDS[selected])
    assert torch.equal(corrupted[~selected], IDS[~selected])


def test_mlm_mask_accepts_a_boolean_special_mask():
    special = torch.isin(IDS, torch.tensor(SPECIAL))

    def gen():
        return torch.Generator().manual_seed(3)

    a = B.mlm_mask(IDS, special, PAD, MASK, V, generator=gen())
    b = B.mlm_mask(IDS, SPECIAL, PAD, MASK, V, generator=gen())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_mlm_mask_split_is_80_10_10_within_five_sigma():
    corrupted, labels = B.mlm_mask(IDS, SPECIAL, PAD, MASK, V, generator=torch.Generator().manual_seed(1))
    f = C.mlm_fractions(IDS, corrupted, labels, MASK)
    n = f["n_selected"]
    for key, want in [("mask", 0.8), ("random", 0.1), ("kept", 0.1)]:
        assert abs(f[key] - want) < 5 * np.sqrt(want * (1 - want) / n) + 2 / V, (key, f[key])
    eligible = ~torch.isin(IDS, torch.tensor(SPECIAL + [PAD]))
    rate = n / eligible.sum().item()
    assert abs(rate - 0.15) < 5 * np.sqrt(0.15 * 0.85 / eligible.sum().item())


def test_mlm_mask_same_seed_same_result_and_the_reference_passes_every_check():
    a = B.mlm_mask(IDS, SPECIAL, PAD, MASK, V, generator=torch.Generator().manual_seed(7))
    b = B.mlm_mask(IDS, SPECIAL, PAD, MASK, V, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    C.check_mlm_mask_properties(B.mlm_mask, IDS, SPECIAL, PAD, MASK, V)
    C.check_mlm_mask_proportions(B.mlm_mask, IDS, SPECIAL, PAD, MASK, V)
    C.check_mlm_mask_seeded(B.mlm_mask, IDS, SPECIAL, PAD, MASK, V)
    ids32, special, pad, mask = C.mlm_batch(50, 64, 300, seed=2, dtype=torch.int32, left_pad=True)
    C.check_mlm_mask_properties(B.mlm_mask, ids32, special, pad, mask, 300, rate=0.4)


def test_mlm_mask_rejects_float_ids():
    with pytest.raises(ValueError, match="integer input_ids"):
        B.mlm_mask(IDS.float(), SPECIAL, PAD, MASK, V)


def _mlm(select_special=False, select_pad=False, split=(0.8, 0.1, 0.1), labels_mode="ok", random_given_rest=False,
         use_generator=True, label_only_masked=False):
    """A configurable (often wrong) mlm_mask for diagnosis tests."""
    def fn(ids, special_ids, pad_id, mask_id, vocab_size, rate=0.15, generator=None):
        gen = generator if use_generator else None
        eligible = torch.ones_like(ids, dtype=torch.bool)
        if not select_special:
            eligible &= ~torch.isin(ids, torch.tensor(special_ids, dtype=ids.dtype))
        if not select_pad:
            eligible &= ids != pad_id
        selected = (torch.rand(ids.shape, generator=gen) < rate) & eligible
        u = torch.rand(ids.shape, generator=gen)
        to_mask = selected & (u < split[0])
        if random_given_rest:
            to_rand = selected & ~to_mask & (torch.rand(ids.shape, generator=gen) < 0.1)
        else:
            to_rand = selected & (u >= split[0]) & (u < split[0] + split[1])
        out = ids.clone()
        out[to_mask] = mask_id
        out[to_rand] = torch.randint(vocab_size, ids.shape, generator=gen, dtype=ids.dtype)[to_rand]
        labelled = to_mask if label_only_masked else selected
        if labels_mode == "copy":
            return out, ids.clone()
        if labels_mode == "zero":
            return out, torch.where(labelled, ids, torch.zeros_like(ids))
        if labels_mode == "corrupted":
            return out, torch.where(labelled, out, torch.full_like(ids, -100))
        return out, torch.where(labelled, ids, torch.full_like(ids, -100))
    return fn


@pytest.mark.parametrize("wrong, message", [
    (_mlm(select_special=True), "special token"),
    (_mlm(select_pad=True), "padding position"),
    (_mlm(labels_mode="copy"), "labels equal input_ids"),
    (_mlm(labels_mode="zero"), "unselected labels are 0"),
    (_mlm(labels_mode="corrupted"), "ORIGINAL token id"),
    (_mlm(label_only_masked=True), "unselected position"),
])
def test_mlm_property_diagnoses_name_the_misconception(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        C.check_mlm_mask_properties(wrong, IDS, SPECIAL, PAD, MASK, V)


@pytest.mark.parametrize("wrong, message", [
    (_mlm(split=(1.0, 0.0, 0.0)), "every selected token became \\[MASK\\]"),
    (_mlm(split=(0.1, 0.1, 0.8)), "reversed \\(10/10/80\\)"),
    (_mlm(random_given_rest=True), "probability 0.1 among the remaining 20%"),
    (_mlm(split=(0.8, 0.0, 0.2)), "no random replacements"),
])
def test_mlm_proportion_diagnoses_name_the_misconception(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        C.check_mlm_mask_proportions(wrong, IDS, SPECIAL, PAD, MASK, V)


def test_mlm_wrong_rate_is_reported():
    def rate_ignored(ids, special_ids, pad_id, mask_id, vocab_size, rate=0.15, generator=None):
        return _mlm()(ids, special_ids, pad_id, mask_id, vocab_size, 0.3, generator)
    with pytest.raises(CheckFailed, match="eligible tokens were selected"):
        C.check_mlm_mask_proportions(rate_ignored, IDS, SPECIAL, PAD, MASK, V)


def test_mlm_ignoring_the_generator_is_diagnosed():
    with pytest.raises(CheckFailed, match="generator"):
        C.check_mlm_mask_seeded(_mlm(use_generator=False), IDS, SPECIAL, PAD, MASK, V)


def test_mlm_unfinished_reports_not_attempted():
    def stub(*args, **kwargs):
        raise NotImplementedError()
    with pytest.raises(NotAttempted):
        C.check_mlm_mask_properties(stub, IDS, SPECIAL, PAD, MASK, V)


# ---------------------------------------------------------------- schedule

def test_schedule_known_values():
    lrs = [B.linear_warmup_decay(s, 1.0, 4, 12) for s in range(14)]
    assert lrs[0] == 0.0 and lrs[4] == 1.0 and lrs[12] == 0.0 and lrs[13] == 0.0
    assert lrs[2] == pytest.approx(0.5) and lrs[8] == pytest.approx(0.5)
    assert B.linear_warmup_decay(0, 2e-4, 0, 10) == pytest.approx(2e-4)


def test_schedule_matches_torch_lambda_lr():
    # torch's LambdaLR with the piecewise factor gives the same lrs through an optimizer.
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=3e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: float(np.interp(s, [0, 10, 50], [0, 1, 0])))
    for step in range(50):
        assert opt.param_groups[0]["lr"] == pytest.approx(B.linear_warmup_decay(step, 3e-4, 10, 50), abs=1e-15)
        opt.step()
        sched.step()
    C.check_linear_warmup_decay(B.linear_warmup_decay, 3e-4, 10, 50)


def test_schedule_rejects_bad_arguments():
    with pytest.raises(ValueError, match="warmup_steps < total_steps"):
        B.linear_warmup_decay(0, 1.0, 10, 10)


@pytest.mark.parametrize("wrong, message", [
    (lambda s, p, w, t: 0.0 if s >= t else (p * min((s + 1) / w, 1) if s < w else p * (t - s) / (t - w)), "off by one"),
    (lambda s, p, w, t: 0.0 if s >= t else (p * s / w if s < w else p * (1 - s / t)), "measured from step 0"),
    (lambda s, p, w, t: p * s / w if s < w else p * (t - s) / (t - w), "negative"),
    (lambda s, p, w, t: 0.0 if s > t else (p * s / w if s < w else p * (t + 1 - s) / (t + 1 - w)), "does not reach 0"),
])
def test_schedule_diagnosis_names_the_misconception(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        C.check_linear_warmup_decay(wrong, 1e-3, 5, 20)


# ---------------------------------------------------------------- chunks and merging

@pytest.mark.parametrize("n, window, stride", [(0, 4, 2), (3, 4, 2), (4, 4, 2), (10, 4, 2), (11, 4, 3),
                                               (1000, 512, 256), (513, 512, 128)])
def test_chunks_cover_every_token_and_end_at_n(n, window, stride):
    chunks = B.sliding_window_chunks(n, window, stride)
    covered = sorted({i for s, e in chunks for i in range(s, e)})
    assert covered == list(range(n))
    assert all(e - s <= window for s, e in chunks)
    assert [s for s, _ in chunks] == [k * stride for k in range(len(chunks))]
    if n:
        assert chunks[-1][1] == n and all(e < n for _, e in chunks[:-1])
    C.check_sliding_window_chunks(B.sliding_window_chunks, n, window, stride)


def test_chunks_known_value_and_gap_rejected():
    assert B.sliding_window_chunks(10, 4, 3) == [(0, 4), (3, 7), (6, 10)]
    with pytest.raises(ValueError, match="skip tokens"):
        B.sliding_window_chunks(10, 4, 5)
    C.check_chunks_reject_gaps(B.sliding_window_chunks)


@pytest.mark.parametrize("wrong, message", [
    (lambda n, w, s: [(a, a + w) for a in range(0, n - w + 1, s)], "tail is missing"),
    (lambda n, w, s: [(a, min(a + w, n)) for a in range(0, n, s)], "redundant chunks"),
    (lambda n, w, s: C.oracle_chunks(n, w, w - s), "overlap"),
])
def test_chunk_diagnosis_names_the_misconception(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        C.check_sliding_window_chunks(wrong, 24, 8, 3)


def test_chunks_that_accept_gaps_are_diagnosed():
    with pytest.raises(CheckFailed, match="must raise ValueError"):
        C.check_chunks_reject_gaps(lambda n, w, s: [(a, min(a + w, n)) for a in range(0, n, s)])


def test_merge_keeps_the_most_central_prediction():
    chunks = [(0, 4), (2, 6)]
    preds = [torch.full((4, 1), 0.0), torch.full((4, 1), 1.0)]
    merged = B.merge_chunk_predictions(preds, chunks, 6)
    # token 2: left/right context (2, 1) in chunk 0 -> 1; (0, 3) in chunk 1 -> 0; token 3: 0 vs 1.
    assert merged.squeeze(1).tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    chunks = B.sliding_window_chunks(37, 10, 4)
    preds = C.random_chunk_predictions(chunks, 3, seed=1)
    torch.testing.assert_close(B.merge_chunk_predictions(preds, chunks, 37), C.oracle_merge(preds, chunks, 37).float())
    C.check_merge_chunk_predictions(B.merge_chunk_predictions, preds, chunks, 37)


def _merge_by(rule):
    def fn(preds, chunks, n):
        out = torch.zeros(n, preds[0].shape[1])
        if rule == "mean":
            count = torch.zeros(n, 1)
            for p, (s, e) in zip(preds, chunks):
                out[s:e] += p
                count[s:e] += 1
            return out / count
        order = list(zip(preds, chunks)) if rule == "last" else list(zip(preds, chunks))[::-1]
        for p, (s, e) in order:
            out[s:e] = p
        return out
    return fn


@pytest.mark.parametrize("rule, message", [("last", "LAST chunk"), ("first", "FIRST chunk"), ("mean", "averaged")])
def test_merge_diagnosis_names_the_misconception(rule, message):
    chunks = B.sliding_window_chunks(37, 10, 4)
    preds = C.random_chunk_predictions(chunks, 3, seed=1)
    with pytest.raises(CheckFailed, match=message):
        C.check_merge_chunk_predictions(_merge_by(rule), preds, chunks, 37)


# ---------------------------------------------------------------- pooling

def test_pooling_against_torch_and_loops():
    hidden, mask = C.padded_hidden([5, 2, 7, 0], 6, seed=0)
    torch.testing.assert_close(B.cls_pool(hidden), hidden[:, 0])
    want = torch.stack([hidden[b, :n].mean(0) if n else torch.zeros(6) for b, n in enumerate([5, 2, 7, 0])])
    torch.testing.assert_close(B.mean_pool(hidden, mask), want)
    # The same through torch's EmbeddingBag-style weighted sum: (mask / count) @ hidden.
    w = mask.float() / mask.sum(1, keepdim=True).clamp_min(1)
    torch.testing.assert_close(B.mean_pool(hidden, mask), torch.einsum("bt,btd->bd", w, hidden))
    C.check_mean_pool(B.mean_pool, hidden, mask)
    C.check_cls_pool(B.cls_pool, hidden)
    for dtype in (torch.float16, torch.bfloat16):
        h, m = C.padded_hidden([3, 9, 1], 8, seed=2, dtype=dtype, left_pad=True)
        C.check_mean_pool(B.mean_pool, h, m)


def test_pooling_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"expected hidden of shape \(B, T, d\)"):
        B.cls_pool(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="attention_mask of shape"):
        B.mean_pool(torch.zeros(2, 3, 4), torch.ones(2, 4))


HID, AMASK = C.padded_hidden([5, 2, 7], 6, seed=0)


@pytest.mark.parametrize("wrong, message", [
    (lambda h, m: h.mean(1), "padding was included"),
    (lambda h, m: (h * m.unsqueeze(-1)).sum(1) / h.shape[1], "divided by the padded length"),
    (lambda h, m: h.sum(1) / m.sum(1, keepdim=True), "zero the padding vectors"),
])
def test_mean_pool_diagnosis_names_the_misconception(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        C.check_mean_pool(wrong, HID, AMASK)


@pytest.mark.parametrize("wrong, message", [(lambda h: h[:, -1], "LAST token"), (lambda h: h.mean(1), "averaged")])
def test_cls_pool_diagnosis_names_the_misconception(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        C.check_cls_pool(wrong, HID)


# ---------------------------------------------------------------- tiny BERT pieces

def test_512_learned_positions_reject_513_tokens_with_advice():
    emb = B.TinyBertEmbeddings(vocab_size=50, d_model=8)
    assert emb(torch.zeros(2, 512, dtype=torch.long)).shape == (2, 512, 8)
    with pytest.raises(ValueError,
                       match="513 tokens but the model has only 512 learned positions.*sliding_window_chunks"):
        emb(torch.zeros(1, 513, dtype=torch.long))


def test_embedding_matches_manual_sum_and_layer_norm():
    emb = B.TinyBertEmbeddings(vocab_size=50, d_model=8, max_positions=16)
    ids = torch.randint(50, (2, 5), generator=torch.Generator().manual_seed(0))
    manual = emb.token.weight[ids] + emb.position.weight[:5] + emb.segment.weight[0]
    torch.testing.assert_close(emb(ids), F.layer_norm(manual, (8,), emb.norm.weight, emb.norm.bias))


def test_diagonal_mask_hides_token_i_for_one_layer_only():
    torch.manual_seed(0)
    x = torch.randn(1, 6, 16, requires_grad=True)
    pos = torch.randn(1, 6, 16)
    w = torch.randn(16)
    enc = B.TinyEncoder(16, 2, mask="no_diagonal", residual=False)
    g1 = torch.autograd.grad(enc(x, 1, queries=pos)[0, 2] @ w, x)[0][0, 2]
    g2 = torch.autograd.grad(enc(x, 2, queries=pos)[0, 2] @ w, x)[0][0, 2]
    assert g1.abs().max() == 0 and g2.norm() > 1e-3


def test_causal_mask_blocks_future_tokens_and_encoder_mask_does_not():
    x = torch.randn(1, 6, 16, requires_grad=True)
    w = torch.randn(16)
    for kind, future_zero in [("causal", True), ("bidirectional", False)]:
        enc = B.TinyEncoder(16, 2, mask=kind)
        g = torch.autograd.grad(enc(x)[0, 1] @ w, x)[0][0, 4]
        assert (g.abs().max() == 0) == future_zero


def test_adam_first_update_is_lr_times_sign_of_gradient():
    grads = torch.randn(5, 1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v_hat, update = B.adam_moments(grads, [1e-3] * 5)
    torch.testing.assert_close(v_hat[0], grads[0] ** 2)
    torch.testing.assert_close(update[0], 1e-3 * grads[0].sign(),
                               atol=1e-7, rtol=1e-6)  # eps = 1e-8 shifts tiny gradients
    p = torch.nn.Parameter(torch.zeros(1000, dtype=torch.float64))
    opt = torch.optim.Adam([p], lr=1e-3)
    for g in grads:
        before = p.detach().clone()
        p.grad = g.clone()
        opt.step()
    torch.testing.assert_close(p.detach() - before, -update[-1])


def test_known_value_checks_pass_the_reference_and_catch_mistakes():
    C.check_schedule_known_values(B.linear_warmup_decay)
    C.check_chunks_known_value(B.sliding_window_chunks)
    C.check_merge_known_value(B.merge_chunk_predictions)
    with pytest.raises(CheckFailed, match="lr\\(0\\) must be 0"):
        C.check_schedule_known_values(lambda s, p, w, t: p * (s + 1) / w if s < w else p * (t - s) / (t - w))
    with pytest.raises(CheckFailed, match="LAST chunk"):
        C.check_merge_known_value(_merge_by("last"))
    with pytest.raises(CheckFailed, match="tail is missing"):
        C.check_chunks_known_value(lambda n, w, s: [(a, a + w) for a in range(0, n - w + 1, s)])


def test_schedule_without_decay_is_diagnosed():
    with pytest.raises(CheckFailed, match="no decay"):
        C.check_linear_warmup_decay(lambda s, p, w, t: 0.0 if s >= t else (p * s / w if s < w else p), 1e-3, 5, 20)


def test_banned_table_catches_ready_made_schedules():
    from autograder.banned import banned_for, find
    banned = banned_for("bert")["*"]
    assert find("import numpy as np\ndef f(s):\n    return np.interp(s, [0, 1], [0, 1])", banned)
    assert find("from torch.optim.lr_scheduler import LambdaLR", banned)
    assert find("from transformers import DataCollatorForLanguageModeling", banned)
    assert not find("def f(s):\n    return min(s, 1)", banned)
