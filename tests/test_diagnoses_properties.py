"""Property-based diagnosis (issue 16, weak spot 2): when no known wrong variant matches, the
chapter's properties of the function say which fact the learner's answer breaks, in words.

Every learner function here makes a mistake that is in no wrong-variant list of its chapter;
each test checks that the message names that mistake (and is not "values differ"), and that
the reread points to the section that explains it.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import regex
import torch
import torch.nn.functional as F

from diagnosis_tools import assert_named, failure_of
from qkv import gqa as RG
from qkv import norms as RN
from qkv import positional as RP
from qkv.checks import attention as A
from qkv.checks import bert as BE
from qkv.checks import masking as MK
from qkv.checks import mqa_gqa as G
from qkv.checks import multihead as MH
from qkv.checks import norms as N
from qkv.checks import scaling as SC
from qkv.checks import sections
from qkv.checks import tokenization as TK
from qkv.checks import transformer as TR


def _softmax(x, dim=-1):
    m = x.amax(dim, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = (x - m).exp()
    return e / e.sum(dim, keepdim=True).clamp_min(1e-30)


X45 = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
QKV = A.random_attention_inputs((2,), 4, 6, 8, 5, seed=0)
PAD = torch.tensor([True, True, True, True, False, False])


def _sdpa(q, k, v, mask=None, *, fill=float("-inf"), scale=None):
    logits = q @ k.transpose(-2, -1) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    if mask is not None:
        logits = logits.masked_fill(~mask, fill)
    w = _softmax(logits, -1)
    return w @ v, w


# ----------------------------------------------------------------------------- attention

def test_softmax_without_normalisation_is_named():
    failure = failure_of(A.check_softmax, lambda x, dim=-1: (x - x.amax(dim, keepdim=True)).exp(), X45, -1)
    assert_named(failure, "must sum to 1", "divide the exponentials by their sum")
    assert failure.reread == sections.STABLE_SOFTMAX


def test_softmax_with_the_sign_flipped_is_named():
    failure = failure_of(A.check_softmax, lambda x, dim=-1: _softmax(-x, dim), X45, -1)
    assert_named(failure, "largest", "smallest", "sign is flipped")


def test_masked_logits_filled_with_zero_are_named():
    failure = failure_of(A.check_sdpa, lambda q, k, v, m=None: _sdpa(q, k, v, m, fill=0.0), *QKV, PAD)
    assert_named(failure, "masked keys", "still receive weight", "-inf")
    assert failure.reread == sections.MINUS_INF


def test_a_scale_by_the_value_width_is_named_with_its_size():
    failure = failure_of(A.check_sdpa, lambda q, k, v, m=None: _sdpa(q, k, v, m, scale=1 / math.sqrt(v.shape[-1])),
                         *QKV)
    assert_named(failure, "1/√5", "d_v", "1/√d_k")
    assert failure.reread == sections.WHY_SQRT_DK


def test_additive_attention_without_tanh_is_named():
    g = torch.Generator().manual_seed(3)
    w_q, w_k, w_v = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g), torch.randn(6, generator=g)

    def no_tanh(q, k, v, wq, wk, wv, mask=None):
        w = _softmax(((q @ wq).unsqueeze(-2) + (k @ wk).unsqueeze(-3)) @ wv, -1)
        return w @ v, w

    failure = failure_of(A.check_additive_attention, no_tanh, *QKV, w_q, w_k, w_v)
    assert_named(failure, "same weights", "tanh")


# ----------------------------------------------------------------------------- scaling

def test_a_jacobian_that_is_not_symmetric_is_named():
    def lopsided(p):  # the outer product built from two different axes of a batch: not p pᵀ
        return torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-1).transpose(-1, -2).flip(-1)

    failure = failure_of(SC.check_softmax_jacobian, lopsided, SC.random_probs((2, 4), seed=1, dtype=torch.float64))
    assert_named(failure, "symmetric")


def test_a_jacobian_with_a_wrong_diagonal_is_named():
    def squared_diagonal(p):   # diag(p²) instead of diag(p): the diagonal becomes 0
        return torch.diag_embed(p * p) - p.unsqueeze(-1) * p.unsqueeze(-2)

    failure = failure_of(SC.check_softmax_jacobian, squared_diagonal,
                         SC.random_probs((2, 5), seed=3, dtype=torch.float64))
    assert_named(failure, "diagonal must be", "p_i(1 − p_i)")
    assert failure.reread == sections.SOFTMAX_JACOBIAN


# ----------------------------------------------------------------------------- masking

def test_padding_mask_that_counts_the_padding_is_named():
    failure = failure_of(MK.check_padding_mask, lambda lengths, n: torch.arange(n)[None] < (n - lengths)[:, None],
                         torch.tensor([3, 1]), 5)
    assert_named(failure, "max_len − lengths[b]", "padding")


def test_a_mask_added_to_the_logits_is_named():
    logits = torch.tensor([[2.0, 1.0, 0.0, 0.0], [0.5, -1.0, 3.0, 2.0]])
    mask = torch.tensor([[True, True, False, False], [True, False, True, True]])
    failure = failure_of(MK.check_masked_softmax, lambda x, m: torch.softmax(x + m.float(), -1) * m, logits, mask)
    assert_named(failure, "masked keys still count")


# ----------------------------------------------------------------------------- multihead

def test_heads_mixed_with_positions_break_the_set_property():
    def mixed(query, key, value, in_w, in_b, out_w, out_b, n_heads, mask=None):
        B, T, d = query.shape
        S, h = key.shape[1], d // n_heads
        (wq, wk, wv), (bq, bk, bv) = in_w.chunk(3), in_b.chunk(3)
        q = F.linear(query, wq, bq).reshape(B, n_heads, T, h)   # no transpose: positions mixed into heads
        k = F.linear(key, wk, bk).reshape(B, n_heads, S, h)
        v = F.linear(value, wv, bv).reshape(B, S, n_heads, h).transpose(1, 2)
        w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(h), -1)
        return F.linear((w @ v).transpose(1, 2).reshape(B, T, d), out_w, out_b), w.mean(1)

    failure = failure_of(MH.check_mha, mixed, *MH.random_mha_inputs(2, 5, 5, 16, seed=0), 4)
    assert_named(failure, "reordering the keys and values", "positions got mixed")


def test_flops_that_depend_on_the_number_of_heads_are_named():
    def per_head_d_model(T, d_model, n_heads, d_head=None):
        d_head = d_model // n_heads if d_head is None else d_head
        return 8 * T * d_model * d_head + 4 * n_heads * T * T * d_head   # projections to one head's width
    failure = failure_of(MH.check_attention_flops, per_head_d_model, 512, 512, 8)
    assert_named(failure, "does not depend on the number of heads", "d_head")


# ----------------------------------------------------------------------------- mqa_gqa

Q8, K8, V8 = G.random_gqa_inputs(2, 8, 2, 5, 5, 16, seed=0)


def test_gqa_scaled_by_the_sequence_length_is_named():
    def by_length(q, k, v, mask=None):
        g = q.shape[1] // k.shape[1]
        k, v = RG.repeat_kv(k, g), RG.repeat_kv(v, g)
        return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(k.shape[-2]), -1) @ v
    assert_named(failure_of(G.check_gqa, by_length, Q8, K8, V8), "1/√5", "S", "1/√d_k")


def test_gqa_softmax_over_the_queries_is_named_from_the_output_alone():
    def over_queries(q, k, v, mask=None):
        g = q.shape[1] // k.shape[1]
        k, v = RG.repeat_kv(k, g), RG.repeat_kv(v, g)
        return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), -2) @ v
    assert_named(failure_of(G.check_gqa, over_queries, Q8, K8, V8), "sum to 1 over the queries", "dim=-1")


def test_decode_step_with_a_causal_mask_on_one_row_is_named():
    def gqa(q, k, v, mask=None):
        g = q.shape[1] // k.shape[1]
        logits = q @ k.repeat_interleave(g, 1).transpose(-2, -1) / math.sqrt(q.shape[-1])
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        return torch.softmax(logits, -1) @ v.repeat_interleave(g, 1)

    def decode(q_t, k_t, v_t, cache_k, cache_v):
        ck, cv = torch.cat([cache_k, k_t], 2), torch.cat([cache_v, v_t], 2)
        return gqa(q_t, ck, cv, torch.ones(1, ck.shape[2], dtype=torch.bool).tril()), ck, cv

    q, k, v = G.random_gqa_inputs(2, 4, 2, 1, 1, 8, seed=3)
    _, ck, cv = G.random_gqa_inputs(2, 4, 2, 1, 5, 8, seed=4)
    failure = failure_of(G.check_decode_step, decode, q, k, v, ck, cv)
    assert_named(failure, "new token got no weight on itself")
    assert failure.reread == sections.KV_CACHE


def test_kv_cache_bytes_ignoring_the_layers_is_named():
    failure = failure_of(G.check_kv_cache_bytes, lambda L, H, d, S, b=1, e=2: 2 * H * d * S * b * e,
                         80, 8, 128, 1, expected=327_680)
    assert_named(failure, "`n_layers` is ignored")


# ----------------------------------------------------------------------------- transformer

def _pe(base):
    def pe(n, d):
        pos = torch.arange(n, dtype=torch.float64)[:, None]
        freq = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        out = torch.empty(n, d, dtype=torch.float64)
        out[:, 0::2], out[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
        return out.float()
    return pe


def test_sinusoids_with_another_base_are_named_with_the_base():
    assert_named(failure_of(TR.check_pe, _pe(1000.0), 50, 16), "base ≈ 1000", "10000")


def test_sinusoids_starting_at_position_one_are_named():
    failure = failure_of(TR.check_pe, lambda n, d: _pe(10000.0)(n + 1, d)[1:], 50, 16)
    assert_named(failure, "positions start at 0")


def test_rope_with_an_offset_position_is_named():
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0))
    failure = failure_of(TR.check_rope, lambda x, pos, base=10000.0: RP.apply_rope(x, pos + 1, base),
                         x, torch.arange(5))
    assert_named(failure, "position 0", "unchanged")


def test_rope_with_another_base_is_named():
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0))
    failure = failure_of(TR.check_rope, lambda x, pos, base=10000.0: RP.apply_rope(x, pos, 500.0), x, torch.arange(5))
    assert_named(failure, "base ≈ 500")


def _ln(x, w, b):
    return F.layer_norm(x, (x.shape[-1],), w, b, 1e-5)


def _attn(x, p, h):
    b, t, d = x.shape
    q, k, v = (z.reshape(b, t, h, d // h).transpose(1, 2)
               for z in F.linear(x, p["in_proj_weight"], p["in_proj_bias"]).chunk(3, -1))
    return F.linear(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d), p["out_proj_weight"],
                    p["out_proj_bias"])


def _ffn(x, p):
    return F.linear(F.relu(F.linear(x, p["ff1_weight"], p["ff1_bias"])), p["ff2_weight"], p["ff2_bias"])


BLOCK_X = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(6))
BLOCK_P = TR.random_block_params(d_model=16, d_ff=32, seed=1)


def test_post_ln_written_as_x_plus_ln_of_the_sublayer_is_named():
    """The issue's example: x + LN(f(x)) got "values differ (largest difference 3.39)"."""
    def wrong(x, p, h):
        x = x + _ln(_attn(x, p, h), p["ln1_weight"], p["ln1_bias"])
        return x + _ln(_ffn(x, p), p["ln2_weight"], p["ln2_bias"])
    failure = failure_of(TR.check_block, wrong, BLOCK_X, BLOCK_P, 4, pre_ln=False)
    assert_named(failure, "mean 0 and variance 1", "LN2(x + FFN(x))")
    assert failure.reread == sections.PRE_POST_LN


def test_pre_ln_that_normalises_the_residual_path_is_named():
    def wrong(x, p, h):
        x = _ln(x, p["ln1_weight"], p["ln1_bias"])
        x = x + _attn(x, p, h)
        return x + _ffn(_ln(x, p["ln2_weight"], p["ln2_bias"]), p)
    assert_named(failure_of(TR.check_block, wrong, BLOCK_X, BLOCK_P, 4, pre_ln=True), "return x unchanged",
                 "residual path")


def test_a_mistake_in_one_sublayer_is_located():
    def ln1_twice(x, p, h):
        x = x + _attn(_ln(x, p["ln1_weight"], p["ln1_bias"]), p, h)
        return x + _ffn(_ln(x, p["ln1_weight"], p["ln1_bias"]), p)
    assert_named(failure_of(TR.check_block, ln1_twice, BLOCK_X, BLOCK_P, 4, pre_ln=True), "feed-forward sublayer")


# ----------------------------------------------------------------------------- norms

XN = N.random_input((2, 5, 8), seed=0, scale=2.0, shift=1.0)


def test_layer_norm_ignoring_eps_is_named():
    def no_eps(x, ns, w=None, b=None, eps=1e-5):
        m = x.mean(-1, keepdim=True)
        return (x - m) / ((x - m) ** 2).mean(-1, keepdim=True).sqrt()
    assert_named(failure_of(N.check_layer_norm, no_eps, XN, 8, None, None, 0.5),
                 "ignores eps", "inside the square root")


def test_layer_norm_over_the_time_axis_is_named():
    def over_time(x, ns, w=None, b=None, eps=1e-5):
        m = x.mean(1, keepdim=True)
        return (x - m) / (((x - m) ** 2).mean(1, keepdim=True) + eps).sqrt()
    failure = failure_of(N.check_layer_norm, over_time, XN, 8, None, None, 1e-5)
    assert_named(failure, "wrong axes")
    assert failure.reread == sections.NORM_AXES


def test_batch_norm_over_the_batch_axis_only_is_named():
    def dim0(x, rm, rv, w=None, b=None, training=True, momentum=0.1, eps=1e-5):
        if x.dim() == 3 and training:
            m = x.mean(0, keepdim=True)
            return (x - m) / (((x - m) ** 2).mean(0, keepdim=True) + eps).sqrt(), rm.clone(), rv.clone()
        return RN.batch_norm(x, rm, rv, w, b, training, momentum, eps)
    rm, rv = N.random_running_stats(4, seed=0)
    failure = failure_of(N.check_batch_norm, dim0, N.random_input((3, 4, 5), seed=3),
                         rm, rv, None, None, True, 0.1, 1e-5)
    assert_named(failure, "dim 0 only", "(0, 2)")


def test_batch_norm_updating_statistics_in_eval_is_named():
    def always_update(x, rm, rv, w=None, b=None, training=True, momentum=0.1, eps=1e-5):
        _, nm, nv = RN.batch_norm(x, rm, rv, w, b, True, momentum, eps)
        return RN.batch_norm(x, rm, rv, w, b, training, momentum, eps)[0], nm, nv
    rm, rv = N.random_running_stats(4, seed=0)
    failure = failure_of(N.check_batch_norm, always_update, N.random_input((6, 4), seed=2), rm, rv, None, None, False)
    assert_named(failure, "eval mode the running statistics must come back unchanged")


def test_rms_norm_without_the_square_root_is_named():
    failure = failure_of(N.check_rms_norm, lambda x, w=None, eps=1e-6: x / ((x * x).mean(-1, keepdim=True) + eps),
                         XN, None, 0.5)
    assert_named(failure, "mean square 1")


def test_masked_batch_norm_dividing_by_every_position_is_named():
    def all_positions(x, mask, rm, rv, w=None, b=None, training=True, momentum=0.1, eps=1e-5):
        keep = mask[..., None].to(x.dtype)
        n = mask.numel()
        m = (x * keep).sum((0, 1)) / n
        v = (((x - m) * keep) ** 2).sum((0, 1)) / n
        return (x - m) / (v + eps).sqrt() * keep, rm, rv
    x, mask = N.padded_batch([5, 2, 3], 4, seed=0, pad_value=9.0)
    rm, rv = N.random_running_stats(4, seed=1)
    assert_named(failure_of(N.check_masked_batch_norm, all_positions, x, mask, rm, rv), "wrong count")


# ----------------------------------------------------------------------------- tokenization

def test_merge_that_drops_the_last_id_is_named():
    def drops_last(ids, pair, new_id):
        out, i = [], 0
        while i < len(ids) - 1:
            if (ids[i], ids[i + 1]) == tuple(pair):
                out.append(new_id)
                i += 2
            else:
                out.append(ids[i])
                i += 1
        return out
    assert_named(failure_of(TK.check_merge, drops_last, [1, 2, 3, 1, 2, 5], (1, 2), 99), "ids were lost")


def test_pair_counts_with_a_stride_of_two_are_named():
    def every_other(ids):
        counts = {}
        for i in range(0, len(ids) - 1, 2):
            counts[(ids[i], ids[i + 1])] = counts.get((ids[i], ids[i + 1]), 0) + 1
        return counts
    assert_named(failure_of(TK.check_get_pair_counts, every_other, [1, 2, 3, 1, 2]), "add up to 2", "4 adjacent pairs")


def test_bpe_training_without_frequency_weights_is_named_at_the_step_it_goes_wrong():
    def unweighted(text, vocab_size, special_tokens=()):
        words = [list(w.encode()) for w in dict.fromkeys(regex.findall(TK.GPT2_SPLIT_PATTERN, text))]
        vocab, merges = {i: bytes([i]) for i in range(256)}, []
        for _ in range(vocab_size - 256 - len(special_tokens)):
            counts = Counter(p for w in words for p in zip(w, w[1:]))
            if not counts:
                break
            best = max(counts, key=lambda p: (counts[p], vocab[p[0]], vocab[p[1]]))
            vocab[256 + len(merges)] = vocab[best[0]] + vocab[best[1]]
            merges.append(best)
            words = [TK._merge_explicit(w, best, 255 + len(merges)) for w in words]
        return vocab, merges
    failure = failure_of(TK.check_train_bpe, unweighted, "the cat sat on the mat, the end. That's 12 cats!", 256 + 10)
    assert_named(failure, "merge 5", "occurs 2 times", "weighted")


def test_encode_that_drops_spaces_is_located_in_the_text():
    merges = TK.toy_merges(300)

    def no_spaces(text, merges, special_tokens=()):
        ranks = {p: i for i, p in enumerate(merges)}
        out = []
        for chunk in regex.findall(TK.GPT2_SPLIT_PATTERN, text.replace(" ", "")):
            ids = list(chunk.encode())
            while len(ids) > 1:
                pair = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, 1 << 30))
                if pair not in ranks:
                    break
                ids = TK._merge_explicit(ids, pair, 256 + ranks[pair])
            out += ids
        return out
    assert_named(failure_of(TK.check_encode, no_spaces, "Hello world! It's 2026.", merges), "do not decode back",
                 "character 5")


def test_wordpiece_returning_pieces_without_their_prefix_is_named():
    def stripped(word, vocab):
        vocab, out, start = set(vocab), [], 0
        while start < len(word):
            end = len(word)
            while end > start and (word[start:end] if start == 0 else "##" + word[start:end]) not in vocab:
                end -= 1
            if end == start:
                return ["[UNK]"]
            out.append(word[start:end])          # looked up with '##', returned without it
            start = end
        return out
    failure = failure_of(TK.check_wordpiece, stripped, "unaffable", ["[UNK]", "un", "##aff", "##able"])
    assert_named(failure, "'aff' is not in the vocabulary", "'##'")


# ----------------------------------------------------------------------------- bert

def test_chunk_rows_off_by_one_are_named():
    chunks = [(0, 10), (4, 14), (8, 18), (12, 22), (16, 26), (20, 30), (24, 34), (28, 37)]
    preds = BE.random_chunk_predictions(chunks, n_classes=3, seed=1)

    def shifted(chunk_preds, chunks, n_tokens):
        out, best = torch.zeros(n_tokens, 3), [-1.0] * n_tokens
        for pred, (s, e) in zip(chunk_preds, chunks):
            for i in range(s, e):
                score = min(i - s, e - 1 - i) + 0.01 * (e - s)
                if score > best[i]:
                    best[i], out[i] = score, pred[max(i - s - 1, 0)]
        return out
    assert_named(failure_of(BE.check_merge_chunk_predictions, shifted, preds, chunks, 37),
                 "1 position before", "i − start")


def test_cls_pool_from_the_wrong_position_is_named():
    hidden, _ = BE.padded_hidden([5, 2, 7], d=6, seed=0)
    assert_named(failure_of(BE.check_cls_pool, lambda h: h[:, 1], hidden), "position 1", "hidden[:, 0]")


def test_mean_pool_that_reads_the_padding_is_named():
    hidden, mask = BE.padded_hidden([5, 2, 7], d=6, seed=0)
    failure = failure_of(BE.check_mean_pool, lambda h, m: h.sum(1) / m.sum(1, keepdim=True), hidden, mask)
    assert_named(failure, "padding")


@pytest.mark.parametrize("name", ["softmax", "scaled_dot_product_attention", "additive_attention", "softmax_jacobian",
                                  "padding_mask", "masked_softmax", "multi_head_attention", "attention_flops",
                                  "grouped_query_attention", "kv_cache_bytes", "mean_pool_kv_heads", "decode_step",
                                  "sinusoidal_positional_encoding", "apply_rope", "noam_lr", "pre_ln_block",
                                  "post_ln_block", "layer_norm", "batch_norm", "rms_norm", "masked_batch_norm",
                                  "get_pair_counts", "merge", "train_bpe", "train_bpe_fast", "encode",
                                  "wordpiece_tokenize", "merge_chunk_predictions", "cls_pool", "mean_pool"])
def test_properties_are_declared_in_words(name):
    from qkv.checks.registry import spec_of

    spec = spec_of(name)
    assert spec is not None and spec.properties, name
    assert all(len(p.says) > 10 for p in spec.properties)
