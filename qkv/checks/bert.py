"""Checks for the BERT exercise: MLM masking, the warm-up schedule, chunking, pooling.

Oracles are independent of learner code and of qkv's own demo code:

- ``mlm_mask`` is random, so it is checked by *properties* (labels, untouched
  positions, special tokens never selected, determinism for a seed) and by
  *statistics*: over ~100k tokens the selection rate and the [MASK]/random/kept
  split must lie within 5 binomial standard deviations of their expectations
  (a correct implementation fails such a bound with probability below 1e-6).
- ``linear_warmup_decay`` against ``numpy.interp`` through (0, 0), (warmup, peak),
  (total, 0), and known values.
- ``sliding_window_chunks`` and ``merge_chunk_predictions`` against explicit loops
  and the coverage property.
- ``mean_pool`` against a per-sequence loop over boolean indexing, in float64.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from qkv.checks import sections
from qkv.checks.core import CheckFailed, call_learner, expect_close, explain_points, fail, report_all
from qkv.checks.graded import check_of
from qkv.checks.registry import Diag, Property, declare

IGNORE = -100
Z_BOUND = 5.0  # standard deviations allowed in the statistical checks

# ----------------------------------------------------------------------------- mlm_mask


def mlm_batch(n_seqs: int = 200, max_len: int = 512, vocab_size: int = 1000, *, seed: int = 0,
              dtype: torch.dtype = torch.long, left_pad: bool = False):
    """A padded batch shaped like BERT input: [CLS] tokens [SEP] [PAD]...

    Special ids: PAD = 0, CLS = 1, SEP = 2, MASK = 3, UNK = 4; ordinary tokens are 5..vocab_size-1.
    Returns ``(input_ids (n_seqs, max_len), special_ids, pad_id, mask_id)``.
    """
    gen = torch.Generator().manual_seed(seed)
    pad, cls, sep, mask = 0, 1, 2, 3
    ids = torch.full((n_seqs, max_len), pad, dtype=torch.long)
    lengths = torch.randint(max_len // 4, max_len + 1, (n_seqs,), generator=gen)
    for row, n in enumerate(lengths.tolist()):
        seq = torch.cat([torch.tensor([cls]), torch.randint(5, vocab_size, (n - 2,), generator=gen),
                         torch.tensor([sep])])
        if left_pad:
            ids[row, max_len - n:] = seq
        else:
            ids[row, :n] = seq
    return ids.to(dtype), [cls, sep, mask, 4], pad, mask


def _z_fail(observed: float, expected: float, n: int) -> bool:
    sd = math.sqrt(max(expected * (1 - expected), 1e-12) / max(n, 1))
    return abs(observed - expected) > Z_BOUND * sd + 1e-9


def _call_mlm(mlm_mask, input_ids, special_ids, pad_id, mask_id, vocab_size, rate, seed):
    gen = torch.Generator().manual_seed(seed)
    result = call_learner(mlm_mask, input_ids, special_ids, pad_id, mask_id, vocab_size, rate, gen, name="mlm_mask")
    if not isinstance(result, tuple) or len(result) != 2:
        raise CheckFailed(f"mlm_mask: expected a tuple (corrupted_ids, labels), got {type(result).__name__}.")
    corrupted, labels = result
    for name, t in (("corrupted_ids", corrupted), ("labels", labels)):
        if not isinstance(t, torch.Tensor):
            raise CheckFailed(f"mlm_mask: {name} must be a torch.Tensor, got {type(t).__name__}.")
        if t.shape != input_ids.shape:
            raise CheckFailed(f"mlm_mask: {name} must have the shape of input_ids {tuple(input_ids.shape)}, "
                              f"got {tuple(t.shape)}.")
        if t.dtype != input_ids.dtype:
            raise CheckFailed(f"mlm_mask: {name} must have the dtype of input_ids ({input_ids.dtype}), got {t.dtype}.")
    return corrupted, labels


@check_of("mlm_mask")
def check_mlm_mask_properties(mlm_mask, input_ids, special_ids, pad_id, mask_id, vocab_size, rate=0.15, seed=0) -> None:
    """Labels, untouched positions, never-selected special tokens and padding, random ids in range.
    Every broken property is reported, not only the first."""
    original = input_ids.clone()
    corrupted, labels = _call_mlm(mlm_mask, input_ids, special_ids, pad_id, mask_id, vocab_size, rate, seed)
    if not torch.equal(input_ids, original):
        raise fail("mlm_mask", "mlm_mask modified input_ids in place; work on a copy (input_ids.clone()).")
    problems: list[str] = []
    if rate < 1 and not (labels == IGNORE).any():
        if torch.equal(labels, input_ids):
            why = "labels equal input_ids everywhere."
        elif (labels == 0).float().mean() > 0.5:
            why = "unselected labels are 0, but 0 is a real token id ([PAD] here)."
        else:
            why = "no label is -100."
        problems.append(Diag(f"{why} Labels must be -100 (the ignore_index of F.cross_entropy) on every position "
                             "that was not selected, so that the loss covers only the selected ~15%.", sections.MLM))
    selected = labels != IGNORE
    if not torch.equal(labels[selected], input_ids[selected]):
        problems.append(Diag("at a selected position the label must be the ORIGINAL token id (what the model must "
                             "predict), not the corrupted one; elsewhere -100.", sections.MLM))
    is_pad = input_ids == pad_id
    is_special = torch.isin(input_ids, torch.tensor(special_ids, dtype=input_ids.dtype)) & ~is_pad
    if (selected & is_pad).any():
        problems.append(Diag(f"{int((selected & is_pad).sum())} padding position(s) were selected. Padding is not "
                             "text: it must never be selected (label -100, id unchanged).", sections.MLM))
    if (selected & is_special).any():
        problems.append(Diag(f"{int((selected & is_special).sum())} special token(s) ([CLS], [SEP], ...) were "
                             "selected. Special tokens must never be selected: exclude them before drawing.",
                             sections.MLM))
    changed = corrupted != input_ids
    if (changed & ~selected).any():
        problems.append(Diag(f"{int((changed & ~selected).sum())} unselected position(s) were changed. Only selected "
                             "positions (label != -100) may be corrupted, and every corrupted position, including the "
                             "ones given a random id, needs its label.", sections.MLM))
    out_of_range = (corrupted < 0) | (corrupted >= vocab_size)
    if out_of_range.any():
        problems.append(f"corrupted ids must lie in [0, vocab_size={vocab_size}); found "
                        f"{corrupted[out_of_range][:3].tolist()}.")
    report_all("mlm_mask", problems)


def mlm_fractions(input_ids, corrupted, labels, mask_id) -> dict[str, float]:
    """Observed selection rate among eligible tokens and the [MASK]/random/kept split of the selected."""
    selected = labels != IGNORE
    n_sel = int(selected.sum())
    is_mask = (corrupted == mask_id) & selected
    kept = (corrupted == input_ids) & selected & ~is_mask
    return {
        "n_selected": n_sel,
        "mask": is_mask.sum().item() / max(n_sel, 1),
        "kept": kept.sum().item() / max(n_sel, 1),
        "random": (selected & ~is_mask & ~kept).sum().item() / max(n_sel, 1),
    }


@check_of("mlm_mask")
def check_mlm_mask_proportions(mlm_mask, input_ids, special_ids, pad_id, mask_id, vocab_size, rate=0.15,
                               seed=0) -> None:
    """Selection rate ≈ rate among eligible tokens; 80/10/10 within Z_BOUND binomial standard deviations."""
    corrupted, labels = _call_mlm(mlm_mask, input_ids, special_ids, pad_id, mask_id, vocab_size, rate, seed)
    eligible = ~torch.isin(input_ids, torch.tensor(list(special_ids) + [pad_id], dtype=input_ids.dtype))
    n_eligible = int(eligible.sum())
    selected = (labels != IGNORE) & eligible
    observed_rate = selected.sum().item() / n_eligible
    if _z_fail(observed_rate, rate, n_eligible):
        hint = ""
        if not _z_fail(observed_rate, 0.8 * rate, n_eligible):
            hint = (" That is 80% of the rate: labels were set only where [MASK] was written. The model must also "
                    "predict the randomly replaced and the kept tokens: label every selected position.")
        raise CheckFailed(f"mlm_mask(rate={rate}): {observed_rate:.4f} "
                          f"of the {n_eligible} eligible tokens were selected; "
                          f"expected {rate} ± {Z_BOUND * math.sqrt(rate * (1 - rate) / n_eligible):.4f}.{hint}")
    f = mlm_fractions(input_ids, corrupted, labels, mask_id)
    n = f["n_selected"]
    if n == 0:
        return
    # A random draw can hit [MASK] or the original id (1/vocab_size each): fold those into the expectations.
    p_hit = 1.0 / vocab_size
    want = {"mask": 0.8 + 0.1 * p_hit, "random": 0.1 * (1 - 2 * p_hit), "kept": 0.1 + 0.1 * p_hit}
    if not any(_z_fail(f[key], want[key], n) for key in want):
        return
    split = f"[MASK] {f['mask']:.1%} / random {f['random']:.1%} / kept {f['kept']:.1%}"
    if f["mask"] > 0.97:
        why = ("every selected token became [MASK]. BERT replaces only 80% by [MASK], 10% by a random token and keeps "
               "10% unchanged, because [MASK] never appears at fine-tuning time.")
    elif abs(f["kept"] - 0.8) < 0.05 and abs(f["mask"] - 0.1) < 0.05:
        why = ("the proportions are reversed (10/10/80): 80% of the selected tokens must become [MASK] "
               "and 10% stay unchanged.")
    elif abs(f["mask"] - 0.8) < 0.03 and abs(f["random"] - 0.02) < 0.015:
        why = ("only ~2% random: the random replacement was drawn with probability 0.1 among the remaining 20%. "
               "Of the tokens not turned into [MASK], half (0.1 / 0.2) must get a random id.")
    elif abs(f["mask"] - 0.8) < 0.03 and f["random"] < 0.01:
        why = "no random replacements: 10% of the selected tokens must get a uniformly random id in [0, vocab_size)."
    else:
        why = "expected 80% [MASK] / 10% random / 10% kept among the selected tokens."
    raise fail("mlm_mask", Diag(f"among {n} selected tokens the split is {split}: {why}", sections.MLM))


@check_of("mlm_mask")
def check_mlm_mask_seeded(mlm_mask, input_ids, special_ids, pad_id, mask_id, vocab_size, rate=0.15) -> None:
    """Same seed -> identical outputs; different seed -> different outputs; rate 0 and 1 are exact."""
    first = _call_mlm(mlm_mask, input_ids, special_ids, pad_id, mask_id, vocab_size, rate, 1234)
    again = _call_mlm(mlm_mask, input_ids, special_ids, pad_id, mask_id, vocab_size, rate, 1234)
    if not (torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])):
        raise CheckFailed("mlm_mask: two calls with generators seeded alike gave different results. Pass "
                          "generator=generator to every random call (torch.rand, torch.bernoulli, torch.randint).")
    other = _call_mlm(mlm_mask, input_ids, special_ids, pad_id, mask_id, vocab_size, rate, 4321)
    if torch.equal(first[1], other[1]):
        raise CheckFailed("mlm_mask: different seeds selected exactly the same positions: the generator is not used "
                          "(or the seed is fixed inside your function).")
    eligible = ~torch.isin(input_ids, torch.tensor(list(special_ids) + [pad_id], dtype=input_ids.dtype))
    _, labels0 = _call_mlm(mlm_mask, input_ids, special_ids, pad_id, mask_id, vocab_size, 0.0, 0)
    if (labels0 != IGNORE).any():
        raise CheckFailed("mlm_mask(rate=0): nothing may be selected, but some labels are not -100.")
    _, labels1 = _call_mlm(mlm_mask, input_ids, special_ids, pad_id, mask_id, vocab_size, 1.0, 0)
    if not torch.equal(labels1 != IGNORE, eligible):
        raise CheckFailed("mlm_mask(rate=1): every ordinary token (and no special token or padding) must be selected.")


# ----------------------------------------------------------------------------- linear_warmup_decay


def oracle_schedule(steps, peak_lr, warmup_steps, total_steps) -> torch.Tensor:
    """Piecewise-linear interpolation through (0, 0), (warmup, peak), (total, 0); 0 after total."""
    steps = np.asarray(steps, dtype=np.float64)
    if warmup_steps == 0:
        lr = np.interp(steps, [0, total_steps], [peak_lr, 0.0])
    else:
        lr = np.interp(steps, [0, warmup_steps, total_steps], [0.0, peak_lr, 0.0])
    lr[steps >= total_steps] = 0.0
    return torch.from_numpy(lr)


def schedule_variants(steps, peak, warmup, total) -> list[tuple[torch.Tensor, str]]:
    """Named wrong schedules for diagnosis."""
    s = np.asarray(steps, dtype=np.float64)
    w = max(warmup, 1)
    decay = peak * (total - s) / (total - warmup)
    out = []
    plus_one = np.where(s < warmup, peak * np.minimum((s + 1) / w, 1.0), decay)
    out.append((np.where(s >= total, 0.0, plus_one),
                "warm-up is off by one: it uses (step + 1) / warmup_steps. "
                "lr(0) must be 0 and lr(warmup_steps) = peak_lr."))
    out.append((np.where(s >= total, 0.0, np.where(s < warmup, peak * s / w, peak * (1 - s / total))),
                "the decay is measured from step 0 (1 - step / total_steps), so lr jumps down right after warm-up. "
                "Decay over the total_steps - warmup_steps steps after warm-up."))
    out.append((np.where(s < warmup, peak * s / w, decay),
                "lr becomes negative after total_steps: clamp it at 0."))
    late = peak * (total + 1 - s) / (total + 1 - warmup)
    out.append((np.where(s > total, 0.0, np.where(s < warmup, peak * s / w, late)),
                "the decay does not reach 0 at total_steps (the denominator or numerator is off by one): "
                "lr(total_steps) must be exactly 0."))
    out.append((np.where(s >= total, 0.0, np.where(s < warmup, peak * s / w, peak)),
                "there is no decay: after warm-up the lr must fall linearly to 0 at total_steps."))
    return [(torch.from_numpy(v), Diag(m, sections.WARMUP)) for v, m in out]


@check_of("linear_warmup_decay")
def check_linear_warmup_decay(fn, peak_lr: float, warmup_steps: int, total_steps: int) -> None:
    """Every step from 0 to total_steps + 3 against the interpolation oracle."""
    steps = list(range(total_steps + 4))
    values = []
    for s in steps:
        got = call_learner(fn, s, peak_lr, warmup_steps, total_steps, name="linear_warmup_decay")
        try:
            values.append(float(got))
        except (TypeError, ValueError):
            raise CheckFailed(f"linear_warmup_decay({s}, ...) must return a number, "
                              f"got {type(got).__name__}.") from None
    actual = torch.tensor(values, dtype=torch.float64)
    what = (f"linear_warmup_decay(step, peak_lr={peak_lr}, warmup_steps={warmup_steps}, total_steps={total_steps}) "
            f"for steps 0..{total_steps + 3}")
    expect_close(actual, oracle_schedule(steps, peak_lr, warmup_steps, total_steps), what=what,
                 diagnoses=lambda: schedule_variants(steps, peak_lr, warmup_steps, total_steps),
                 atol=1e-12 + 1e-9 * abs(peak_lr), rtol=1e-9)


@check_of("linear_warmup_decay")
def check_schedule_known_values(fn) -> None:
    """peak 1, warm-up 4, total 12: lr(0) = 0, lr(2) = 0.5, lr(4) = 1, lr(8) = 0.5, lr(12) = lr(13) = 0.

    Every point is evaluated; a known wrong schedule that explains the failing points is named
    (the off-by-one warm-up explains lr(0) = 0.25 better than "lr(0) must be 0" does)."""
    known = [(0, 0.0, "lr(0) must be 0: warm-up starts from zero."),
             (2, 0.5, "halfway through warm-up the lr is half the peak."),
             (4, 1.0, "lr(warmup_steps) must be peak_lr."),
             (8, 0.5, "halfway through the decay the lr is half the peak."),
             (12, 0.0, "lr(total_steps) must be 0."),
             (13, 0.0, "after total_steps the lr stays 0 (never negative).")]
    points = []
    for step, want, why in known:
        got = call_learner(fn, step, 1.0, 4, 12, name="linear_warmup_decay")
        if not isinstance(got, (int, float, torch.Tensor, np.floating)):
            raise fail(f"linear_warmup_decay({step}, peak_lr=1.0, warmup_steps=4, total_steps=12)",
                       f"must return a number, got {type(got).__name__}.")
        points.append((f"lr({step})", float(got), want, why))
    variants = [(v.tolist(), m) for v, m in schedule_variants([s for s, _, _ in known], 1.0, 4, 12)]
    report_all("linear_warmup_decay(step, peak_lr=1.0, warmup_steps=4, total_steps=12)",
               explain_points(points, variants, tol=1e-12))


# ----------------------------------------------------------------------------- chunks


def oracle_chunks(n_tokens: int, window: int, stride: int) -> list[tuple[int, int]]:
    """Explicit loop: starts 0, stride, ...; stop at the first chunk that reaches n_tokens."""
    chunks, start = [], 0
    while start < n_tokens:
        chunks.append((start, min(start + window, n_tokens)))
        if start + window >= n_tokens:
            break
        start += stride
    return chunks


def chunk_variants(n, window, stride) -> list[tuple[list, str]]:
    return [
        ([(s, s + window) for s in range(0, n - window + 1, stride)] if n >= window else [],
         "the tail is missing: the last tokens are in no chunk. Keep adding chunks until one ends at n_tokens "
         "(the last chunk may be shorter than window)."),
        ([(s, min(s + window, n)) for s in range(0, n, stride)],
         "there are redundant chunks at the end: stop at the first chunk that reaches n_tokens, otherwise later "
         "chunks lie entirely inside it."),
        (oracle_chunks(n, window, window - stride) if 0 < window - stride <= window else [],
         "stride was used as the overlap between chunks; here stride is the step between chunk starts "
         "(consecutive chunks overlap by window - stride)."),
        ([(s, min(s + window, n)) for s in range(0, n, window)],
         "the chunks do not overlap: consecutive starts must be `stride` apart, not `window` apart."),
    ]


def _as_pairs(got, what):
    try:
        pairs = [tuple(int(x) for x in c) for c in got]
    except Exception:
        raise CheckFailed(f"{what}: expected a list of (start, end) pairs, got {type(got).__name__}.") from None
    if any(len(p) != 2 for p in pairs):
        raise CheckFailed(f"{what}: every chunk must be a (start, end) pair.")
    return pairs


@check_of("sliding_window_chunks")
def check_sliding_window_chunks(fn, n_tokens: int, window: int, stride: int) -> None:
    what = f"sliding_window_chunks(n_tokens={n_tokens}, window={window}, stride={stride})"
    got = _as_pairs(call_learner(fn, n_tokens, window, stride, name="sliding_window_chunks"), what)
    want = oracle_chunks(n_tokens, window, stride)
    if got == want:
        return
    for wrong, message in chunk_variants(n_tokens, window, stride):
        if got == wrong:
            raise fail(what, Diag(message, sections.LONG_DOCS))
    problems = []
    covered = set()
    for s, e in got:
        covered.update(range(s, e))
    if covered != set(range(n_tokens)):
        missing = sorted(set(range(n_tokens)) - covered)
        problems.append(f"tokens {missing[:5]} are in no chunk (every token must be covered).")
    if any(e - s > window for s, e in got):
        problems.append(f"a chunk is longer than window = {window}.")
    starts = [s for s, _ in got]
    if len(starts) > 1 and any(b - a != stride for a, b in zip(starts, starts[1:])):
        steps = sorted({b - a for a, b in zip(starts, starts[1:])})
        problems.append(f"consecutive chunks start {steps} apart; they must start `stride` = {stride} apart.")
    if any(e - s < window and e != n_tokens for s, e in got):
        problems.append(f"a chunk that does not reach the end is shorter than window = {window}: end = "
                        "min(start + window, n_tokens), [start, end) excludes end.")
    if got and got[0][0] != 0:
        problems.append("the first chunk must start at token 0.")
    report_all(what, problems)
    raise fail(what, f"expected {want[:4]}{' ...' if len(want) > 4 else ''}, "
                     f"got {got[:4]}{' ...' if len(got) > 4 else ''}.")


@check_of("sliding_window_chunks")
def check_chunks_known_value(fn) -> None:
    """(10, 4, 3) -> [(0, 4), (3, 7), (6, 10)] and (11, 4, 3) -> [(0, 4), (3, 7), (6, 10), (9, 11)]."""
    check_sliding_window_chunks(fn, 10, 4, 3)
    check_sliding_window_chunks(fn, 11, 4, 3)


@check_of("sliding_window_chunks")
def check_chunks_reject_gaps(fn) -> None:
    """stride > window would skip tokens: the function must raise ValueError."""
    try:
        fn(100, 10, 20)
    except NotImplementedError:
        call_learner(fn, 100, 10, 20, name="sliding_window_chunks")
    except ValueError:
        return
    except Exception as exc:
        raise CheckFailed(f"sliding_window_chunks(100, window=10, stride=20) raised {type(exc).__name__}; "
                          "raise ValueError.") from exc
    raise CheckFailed("sliding_window_chunks(100, window=10, stride=20) must raise ValueError: a stride larger than "
                      "the window skips the tokens between chunks.")


# ----------------------------------------------------------------------------- merging


def _score(i, chunk):
    s, e = chunk
    return min(i - s, e - 1 - i) + 0.01 * (e - s)


def oracle_merge(chunk_preds, chunks, n_tokens) -> torch.Tensor:
    """Explicit loop over tokens: the first chunk with the highest max-context score wins."""
    rows = []
    for i in range(n_tokens):
        candidates = [(c, ch) for c, ch in enumerate(chunks) if ch[0] <= i < ch[1]]
        best_c, best_ch = max(candidates, key=lambda cc: (_score(i, cc[1]), -cc[0]))
        rows.append(chunk_preds[best_c][i - best_ch[0]].double())
    return torch.stack(rows)


def merge_variants(chunk_preds, chunks, n_tokens) -> list[tuple[torch.Tensor, str]]:
    def by(rule):
        rows = []
        for i in range(n_tokens):
            cands = [(c, ch) for c, ch in enumerate(chunks) if ch[0] <= i < ch[1]]
            c, ch = rule(cands)
            rows.append(chunk_preds[c][i - ch[0]].double())
        return torch.stack(rows)

    avg = []
    for i in range(n_tokens):
        avg.append(torch.stack([chunk_preds[c][i - ch[0]].double()
                                for c, ch in enumerate(chunks) if ch[0] <= i < ch[1]]).mean(0))
    return [
        (by(lambda cands: cands[-1]), "each token took the LAST chunk that contains it; take the chunk where it has "
                                      "the most context on both sides: max of min(left, right) + 0.01 · length."),
        (by(lambda cands: cands[0]), "each token took the FIRST chunk that contains it; take the chunk where it has "
                                     "the most context on both sides: max of min(left, right) + 0.01 · length."),
        (torch.stack(avg), "the overlapping predictions were averaged; the rule keeps the one prediction from the "
                           "chunk where the token is most central."),
    ]


@check_of("merge_chunk_predictions")
def check_merge_chunk_predictions(fn, chunk_preds, chunks, n_tokens) -> None:
    got = call_learner(fn, chunk_preds, chunks, n_tokens, name="merge_chunk_predictions")
    want = oracle_merge(chunk_preds, chunks, n_tokens).to(chunk_preds[0].dtype)
    what = f"merge_chunk_predictions(chunks={chunks}, n_tokens={n_tokens})"
    expect_close(got, want, what=what, diagnoses=lambda: merge_variants(chunk_preds, chunks, n_tokens))


@check_of("merge_chunk_predictions")
def check_merge_known_value(fn) -> None:
    """Chunks (0, 4) and (2, 6): tokens 0-2 come from chunk 0, tokens 3-5 from chunk 1."""
    preds, chunks = [torch.zeros(4, 1), torch.ones(4, 1)], [(0, 4), (2, 6)]
    got = call_learner(fn, preds, chunks, 6, name="merge_chunk_predictions")
    expect_close(got, torch.tensor([[0.0], [0.0], [0.0], [1.0], [1.0], [1.0]]),
                 diagnoses=lambda: [(w.float(), m) for w, m in merge_variants(preds, chunks, 6)],
                 what="merge_chunk_predictions(chunks [(0, 4), (2, 6)], 6 tokens); "
                      "token 2 has context (2 left, 1 right) in chunk 0 and (0, 3) in chunk 1, "
                      "so it comes from chunk 0; token 3 from chunk 1")


def _merge_row_sources(p) -> str | None:
    """Each token's row must come from a chunk that contains it, at row i − start; say where yours come from."""
    preds, chunks, n = p.get("chunk_preds"), p.get("chunks"), p.get("n_tokens")
    if preds is None:
        return None
    got = p.call(preds, chunks, n)
    if not isinstance(got, torch.Tensor) or got.shape[0] != n:
        return None
    offsets = set()
    for i in range(n):
        row = got[i].double()
        for c, (s, e) in enumerate(chunks):
            for r in range(preds[c].shape[0]):
                if torch.allclose(row, preds[c][r].double()):
                    if s <= i < e and r == i - s:
                        break
                    offsets.add(r - (i - s))
            else:
                continue
            break
    offsets.discard(0)
    if len(offsets) == 1:
        d = offsets.pop()
        return Diag(f"some tokens took the row {abs(d)} position{'s' if abs(d) > 1 else ''} "
                    f"{'after' if d > 0 else 'before'} theirs: token i's row inside chunk (start, end) is i − start "
                    "(an off-by-one in the row index).", sections.LONG_DOCS)
    return None


def _mean_pool_padding(p) -> str | None:
    """The result must not depend on the vectors at padding positions."""
    hidden, mask = p.get("hidden"), p.get("attention_mask")
    if hidden is None or mask is None or mask.bool().all():
        return None
    a = p.call(hidden, mask)
    b = p.call(hidden.masked_fill(~mask.bool()[..., None], 5.0), mask)
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and \
            not torch.allclose(a.double(), b.double(), atol=1e-3, equal_nan=True):
        return Diag("changing only the vectors at padding positions changed your result: padding leaks into the "
                    "mean. Zero the padding vectors (or select the real ones) before summing, and divide by the "
                    "number of real tokens.", sections.POOLING)
    return None


def _cls_position(p) -> str | None:
    hidden = p.get("hidden")
    got = p.call(hidden)
    if not isinstance(got, torch.Tensor) or got.shape != hidden[:, 0].shape:
        return None
    for j in range(1, hidden.shape[1]):
        if torch.allclose(got.double(), hidden[:, j].double()):
            return Diag(f"you took position {j}; [CLS] is position 0 of every sequence: hidden[:, 0].",
                        sections.POOLING)
    return None


declare("mlm_mask", chapter="bert", args=("input_ids", "special_ids", "pad_id", "mask_id", "vocab_size", "rate",
                                          "generator"))
declare("linear_warmup_decay", chapter="bert", args=("step", "peak_lr", "warmup_steps", "total_steps"))
declare("sliding_window_chunks", chapter="bert", args=("n_tokens", "window", "stride"))
declare("merge_chunk_predictions", chapter="bert", args=("chunk_preds", "chunks", "n_tokens"),
        properties=(Property("token i's row comes from row i − start of a chunk containing it", _merge_row_sources),))
declare("cls_pool", chapter="bert", args=("hidden",),
        properties=(Property("the row of position 0", _cls_position),))
declare("mean_pool", chapter="bert", args=("hidden", "attention_mask"),
        properties=(Property("independent of the padding vectors", _mean_pool_padding),))


def random_chunk_predictions(chunks, n_classes: int, *, seed: int = 0, dtype=torch.float32):
    """One distinct random (end - start, n_classes) tensor per chunk."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(e - s, n_classes, generator=gen, dtype=torch.float64).to(dtype) for s, e in chunks]


# ----------------------------------------------------------------------------- pooling


def padded_hidden(lengths, d: int, *, seed: int = 0, dtype=torch.float32, left_pad: bool = False):
    """(hidden (B, T, d), attention_mask (B, T) long). Padding positions hold nonzero values, as in BERT."""
    gen = torch.Generator().manual_seed(seed)
    B, T = len(lengths), max(max(lengths), 1)
    hidden = (torch.randn(B, T, d, generator=gen, dtype=torch.float64) + 1.0).to(dtype)
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate(lengths):
        if left_pad:
            mask[b, T - n:] = 1 if n else 0
        else:
            mask[b, :n] = 1
    return hidden, mask


def oracle_mean_pool(hidden, attention_mask) -> torch.Tensor:
    rows = []
    for b in range(hidden.shape[0]):
        real = hidden[b].double()[attention_mask[b].bool()]
        rows.append(real.mean(0) if len(real) else torch.zeros(hidden.shape[-1], dtype=torch.float64))
    return torch.stack(rows).to(hidden.dtype)


@check_of("cls_pool")
def check_cls_pool(fn, hidden) -> None:
    got = call_learner(fn, hidden, name="cls_pool")
    h = hidden.double()
    expect_close(got, hidden[:, 0].clone(), what=f"cls_pool(hidden{tuple(hidden.shape)})", diagnoses=lambda: [
        (h[:, -1], "you took the LAST token; [CLS] is the first token of every BERT input (position 0)."),
        (h.mean(1), "you averaged over the tokens; cls_pool returns the vector of the first token, [CLS]."),
        (h[0], "you took the first sequence of the batch (hidden[0]); [CLS] is position 0 of every sequence: "
               "hidden[:, 0]."),
    ])


@check_of("mean_pool")
def check_mean_pool(fn, hidden, attention_mask) -> None:
    got = call_learner(fn, hidden, attention_mask, name="mean_pool")
    h, keep = hidden.double(), attention_mask.bool().unsqueeze(-1)
    masked_sum = (h * keep).sum(1)
    expect_close(got, oracle_mean_pool(hidden, attention_mask),
                 what=f"mean_pool(hidden{tuple(hidden.shape)}, attention_mask{tuple(attention_mask.shape)})",
                 diagnoses=lambda: [
                     (h.mean(1), "padding was included in the mean: "
                                 "average only the positions where attention_mask is 1."),
                     (masked_sum / h.shape[1], "padding vectors were zeroed but the sum was divided by the padded "
                                               "length T; divide by the number of real tokens in each sequence."),
                     (h.sum(1) / keep.sum(1).clamp_min(1), "you divided by the number of real tokens but summed over "
                                                           "all positions: zero the padding vectors first "
                                                           "(BERT's outputs at [PAD] are not zero)."),
                     (h[:, 0], "this is the [CLS] vector, not the mean of the real tokens."),
                 ])


# ----------------------------------------------------------------------------- learner guidance

# What answers may not call: ready-made versions of what this exercise asks learners to write
# (read by the grader's static check, autograder/banned.py; "*" = every answer).
BANNED = {
    "*": ["transformers", "torch.optim.lr_scheduler", "numpy.interp"],
}

# Graded function -> the heading of the book section to reread when it fails.
REREAD = {
    "mlm_mask": "Why mask 15% of the tokens, and why the 80/10/10 rule?",
    "linear_warmup_decay": "What does warm-up do, and why does BERT need it?",
    "sliding_window_chunks": "How does BERT handle documents longer than 512 tokens?",
    "merge_chunk_predictions": "How does BERT handle documents longer than 512 tokens?",
    "cls_pool": "What is [CLS] for, and is it a good sentence vector?",
    "mean_pool": "What is [CLS] for, and is it a good sentence vector?",
}

# Graded function -> progressive hints: each leads further without giving the code away.
HINTS = {
    "mlm_mask": [
        "Start with a boolean tensor of eligible positions: not padding and not one of the special ids. "
        "Only those may be selected.",
        "Select eligible positions with probability `rate`, then make a second, independent uniform draw per "
        "position to split the selected ones: below 0.8 becomes [MASK], between 0.8 and 0.9 a random id, "
        "the rest unchanged.",
        "Labels are the original ids where selected and -100 elsewhere. Pass the generator to every random call "
        "so that the same seed gives the same result, and never modify input_ids in place.",
    ],
    "linear_warmup_decay": [
        "Write down three points the schedule must pass through: lr is 0 at step 0, peak_lr at warmup_steps, "
        "and 0 at total_steps; it is a straight line between them.",
        "During warm-up the fraction is step / warmup_steps; after it, the fraction of the decay phase still "
        "remaining is (total_steps - step) / (total_steps - warmup_steps).",
        "Handle the ends: at or after total_steps return 0 (never a negative number); with warmup_steps = 0 "
        "there is no warm-up, so do not divide by it.",
    ],
    "sliding_window_chunks": [
        "Chunk starts are 0, stride, 2·stride, ...; each chunk ends at start + window or at n_tokens, "
        "whichever comes first.",
        "Stop as soon as a chunk reaches n_tokens: the next start would give a chunk entirely inside this one. "
        "A document no longer than window is one chunk.",
        "Validate the arguments: a stride larger than the window leaves gaps, so raise ValueError.",
    ],
    "merge_chunk_predictions": [
        "For every token, look at each chunk that contains it and ask how many tokens of context it has on its "
        "left and on its right inside that chunk.",
        "The score is the smaller of the two, plus 0.01 times the chunk's length; keep the prediction row from the "
        "chunk with the highest score.",
        "The row of token i inside chunk (start, end) is i - start. Compare scores with a strict > so that the "
        "earlier chunk wins an exact tie.",
    ],
    "cls_pool": [
        "Every BERT input starts with [CLS]: which position is that, in every sequence of the batch?",
        "Index the token axis, not the batch axis: the result has shape (B, d).",
    ],
    "mean_pool": [
        "The attention mask says which positions are real tokens. Padding outputs are not zero, so they must be "
        "excluded from the sum.",
        "Turn the mask into the hidden dtype with a trailing singleton axis so it broadcasts over d; sum over the "
        "token axis, then divide by the number of real tokens per sequence.",
        "A sequence with no real tokens would divide by zero: clamp the count at 1 so that its mean is a zero vector.",
    ],
}
