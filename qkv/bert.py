"""BERT, written out: the demo implementations the BERT chapter runs.

One idea per function, in the order a BERT pipeline uses them:

- :func:`mlm_mask`: masked-language-model corruption (15% of tokens, 80/10/10).
- :func:`linear_warmup_decay`: BERT's learning-rate schedule.
- :func:`sliding_window_chunks` and :func:`merge_chunk_predictions`: documents longer
  than the 512 learned positions.
- :func:`cls_pool` and :func:`mean_pool`: one vector per sentence.
- :class:`TinyBertEmbeddings`: token + learned position + segment embeddings, which
  is where the 512-token limit comes from.
- :class:`TinyEncoder`: a few self-attention layers with a choice of attention mask,
  for the "why corrupt the input instead of masking attention" experiment.

Token ids are integer tensors; ``-100`` in a label tensor means "no loss here"
(the default ``ignore_index`` of ``torch.nn.functional.cross_entropy``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index: unselected positions carry no loss

# BERT's split of the selected tokens (Devlin et al. 2019, §3.1): [MASK], random token, unchanged.
MASK_FRACTION, RANDOM_FRACTION, KEEP_FRACTION = 0.8, 0.1, 0.1


# ----------------------------------------------------------------------------- masked language modelling


def _special_mask(input_ids: torch.Tensor, special: torch.Tensor | Iterable[int], pad_id: int) -> torch.Tensor:
    if isinstance(special, torch.Tensor) and special.dtype == torch.bool:
        if special.shape != input_ids.shape:
            raise ValueError(
                f"a boolean special-token mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                f"got {tuple(special.shape)}"
            )
        is_special = special.clone()
    else:
        ids = torch.as_tensor(list(special) if not isinstance(special, torch.Tensor) else special,
                              dtype=input_ids.dtype)
        is_special = torch.isin(input_ids, ids)
    return is_special | (input_ids == pad_id)


def mlm_mask(
    input_ids: torch.Tensor,
    special: torch.Tensor | Sequence[int],
    pad_id: int,
    mask_id: int,
    vocab_size: int,
    rate: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masked-LM corruption (Devlin et al. 2019, §3.1 and appendix A.1).

    Each token that is neither special nor padding is *selected* with probability
    ``rate``. A selected token is replaced by ``mask_id`` with probability 0.8, by a
    uniformly random id in ``[0, vocab_size)`` with probability 0.1, and left
    unchanged with probability 0.1. The model must predict the original token at
    every selected position, and only there.

    Args:
        input_ids: integer tensor of any shape, e.g. (B, T).
        special: either a bool tensor shaped like ``input_ids`` (True = special token)
            or a sequence of special token ids ([CLS], [SEP], ...). Never selected.
        pad_id: padding id; never selected.
        mask_id: the [MASK] id.
        vocab_size: random replacements are drawn from ``[0, vocab_size)``.
        rate: selection probability, in [0, 1].
        generator: a seeded ``torch.Generator`` makes the result reproducible.

    Returns:
        ``(corrupted_ids, labels)``, both shaped and typed like ``input_ids``:
        ``labels`` holds the original id at selected positions and -100 elsewhere.

    Raises:
        ValueError: if ``input_ids`` is not an integer tensor, ``rate`` is outside
            [0, 1] or ``vocab_size`` < 1.
    """
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise ValueError(f"expected integer input_ids, got dtype {input_ids.dtype}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    eligible = ~_special_mask(input_ids, special, pad_id)
    probs = torch.full(input_ids.shape, float(rate)) * eligible
    selected = torch.bernoulli(probs, generator=generator).bool()
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    # One uniform draw per position splits the selected tokens 80/10/10.
    u = torch.rand(input_ids.shape, generator=generator)
    to_mask = selected & (u < MASK_FRACTION)
    to_random = selected & (u >= MASK_FRACTION) & (u < MASK_FRACTION + RANDOM_FRACTION)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator).to(input_ids.dtype)
    corrupted = torch.where(to_mask, torch.full_like(input_ids, mask_id), input_ids)
    corrupted = torch.where(to_random, random_ids, corrupted)
    return corrupted, labels


def mlm_categories(input_ids: torch.Tensor, corrupted: torch.Tensor, labels: torch.Tensor, mask_id: int) -> list[str]:
    """Per-token status of a flat sequence: 'unselected', 'mask', 'random' or 'kept'.

    A random replacement that happens to draw the original id counts as 'kept',
    exactly as the model sees it.
    """
    out = []
    for orig, new, lab in zip(input_ids.tolist(), corrupted.tolist(), labels.tolist()):
        if lab == IGNORE_INDEX:
            out.append("unselected")
        elif new == mask_id:
            out.append("mask")
        elif new == orig:
            out.append("kept")
        else:
            out.append("random")
    return out


# ----------------------------------------------------------------------------- learning-rate schedule


def linear_warmup_decay(step: int, peak_lr: float, warmup_steps: int, total_steps: int) -> float:
    """BERT's schedule: linear warm-up from 0 to ``peak_lr``, then linear decay to 0.

    lr(step) = peak · step / warmup              for step < warmup,
               peak · (total − step) / (total − warmup)  for warmup ≤ step < total,
               0                                 for step ≥ total.

    So lr(0) = 0, lr(warmup) = peak and lr(total) = 0 (Devlin et al. 2019, appendix A.2:
    10,000 warm-up steps of 1,000,000, peak 1e-4). ``warmup_steps = 0`` starts at the peak.

    Raises:
        ValueError: if step < 0, total_steps < 1 or warmup_steps is not in [0, total_steps).
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if total_steps < 1 or not 0 <= warmup_steps < total_steps:
        raise ValueError("need 0 <= warmup_steps < total_steps, "
                         f"got warmup_steps={warmup_steps}, total_steps={total_steps}")
    if step >= total_steps:
        return 0.0
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    return peak_lr * (total_steps - step) / (total_steps - warmup_steps)


def adam_moments(grads: torch.Tensor, lrs: Sequence[float], betas=(0.9, 0.999), eps: float = 1e-8):
    """Run Adam's moment estimates over a sequence of gradients.

    Args:
        grads: (steps, n) gradients of n independent scalar parameters.
        lrs: the learning rate at each step (length ``steps``).

    Returns:
        ``(v_hat, update)``, both (steps, n): the bias-corrected second moment v̂_t and
        the parameter change lr_t · m̂_t / (√v̂_t + eps) (Kingma & Ba 2015, Algorithm 1).
    """
    if grads.dim() != 2 or len(lrs) != grads.shape[0]:
        raise ValueError("expected grads of shape (steps, n) and one lr per step, "
                         f"got {tuple(grads.shape)} and {len(lrs)} lrs")
    b1, b2 = betas
    m = torch.zeros(grads.shape[1], dtype=grads.dtype)
    v = torch.zeros_like(m)
    v_hats, updates = [], []
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        v_hats.append(v_hat)
        updates.append(lr * m_hat / (v_hat.sqrt() + eps))
    return torch.stack(v_hats), torch.stack(updates)


# ----------------------------------------------------------------------------- long documents


def sliding_window_chunks(n_tokens: int, window: int, stride: int) -> list[tuple[int, int]]:
    """Split positions ``0 .. n_tokens-1`` into overlapping windows ``[start, end)``.

    Starts are 0, stride, 2·stride, ...; each chunk is ``[start, min(start + window, n))``
    and the list stops at the first chunk that reaches the end, so every token is
    covered and no chunk lies inside the previous one. Consecutive chunks overlap by
    ``window - stride`` tokens. (``stride`` here is the step between starts; the
    ``stride`` argument of Hugging Face tokenizers means the overlap instead.)

    Raises:
        ValueError: if window < 1, stride < 1, stride > window (tokens would be
            skipped) or n_tokens < 0.
    """
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be positive, got window={window}, stride={stride}")
    if stride > window:
        raise ValueError(f"stride {stride} > window {window} would skip tokens between chunks; use stride <= window")
    if n_tokens < 0:
        raise ValueError(f"n_tokens must be >= 0, got {n_tokens}")
    chunks: list[tuple[int, int]] = []
    start = 0
    while start < n_tokens:
        end = min(start + window, n_tokens)
        chunks.append((start, end))
        if end == n_tokens:
            break
        start += stride
    return chunks


def max_context_score(position: int, chunk: tuple[int, int]) -> float:
    """How much context a chunk gives a token: min(left, right) + 0.01 · chunk length.

    This is the rule of BERT's SQuAD code (``_check_is_max_context`` in run_squad.py):
    a token is best predicted in the chunk where it is most central; the small length
    term prefers the longer chunk on ties.
    """
    start, end = chunk
    return min(position - start, end - 1 - position) + 0.01 * (end - start)


def merge_chunk_predictions(chunk_preds: Sequence[torch.Tensor], chunks: Sequence[tuple[int, int]],
                            n_tokens: int) -> torch.Tensor:
    """Merge per-chunk predictions into one prediction per token (the max-context rule).

    Args:
        chunk_preds: one tensor per chunk, shape (end - start, C).
        chunks: the (start, end) of each chunk, as from :func:`sliding_window_chunks`.
        n_tokens: document length.

    Returns:
        (n_tokens, C): token i takes its row from the chunk with the highest
        :func:`max_context_score`; on an exact tie the earlier chunk wins.

    Raises:
        ValueError: if the lists differ in length, a prediction has the wrong number of
            rows, or some token is not covered by any chunk.
    """
    if len(chunk_preds) != len(chunks):
        raise ValueError(f"got {len(chunk_preds)} predictions for {len(chunks)} chunks")
    for pred, (s, e) in zip(chunk_preds, chunks):
        if pred.shape[0] != e - s:
            raise ValueError(f"chunk ({s}, {e}) needs {e - s} rows of predictions, got {tuple(pred.shape)}")
    width = chunk_preds[0].shape[1:] if chunk_preds else ()
    out = torch.zeros(n_tokens, *width, dtype=chunk_preds[0].dtype if chunk_preds else torch.float32)
    best = [-math.inf] * n_tokens
    for pred, chunk in zip(chunk_preds, chunks):
        for i in range(chunk[0], chunk[1]):
            score = max_context_score(i, chunk)
            if score > best[i]:  # strict: the earlier chunk keeps an exact tie
                best[i] = score
                out[i] = pred[i - chunk[0]]
    if any(b == -math.inf for b in best):
        missing = [i for i, b in enumerate(best) if b == -math.inf]
        raise ValueError(f"tokens {missing[:5]}{'...' if len(missing) > 5 else ''} are in no chunk")
    return out


# ----------------------------------------------------------------------------- pooling


def _check_hidden(hidden: torch.Tensor) -> None:
    if hidden.dim() != 3:
        raise ValueError(f"expected hidden of shape (B, T, d), got {tuple(hidden.shape)}")


def cls_pool(hidden: torch.Tensor) -> torch.Tensor:
    """The output vector of the first token ([CLS]): (B, T, d) -> (B, d)."""
    _check_hidden(hidden)
    return hidden[:, 0]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the real tokens' vectors, ignoring padding: (B, T, d), (B, T) -> (B, d).

    ``attention_mask`` is 1/True for real tokens, 0/False for padding (any position,
    left or right padding). A row without real tokens gives a zero vector. The result
    keeps ``hidden``'s dtype.

    Raises:
        ValueError: if the shapes do not fit.
    """
    _check_hidden(hidden)
    if attention_mask.shape != hidden.shape[:2]:
        raise ValueError(f"expected attention_mask of shape {tuple(hidden.shape[:2])}, "
                         f"got {tuple(attention_mask.shape)}")
    keep = attention_mask.bool().unsqueeze(-1)                               # (B, T, 1)
    # Zero the padding vectors: BERT's outputs at [PAD] positions are not zero.
    total = torch.where(keep, hidden, torch.zeros_like(hidden)).sum(dim=1)   # (B, d)
    count = keep.sum(dim=1).clamp_min(1).to(hidden.dtype)                    # (B, 1)
    return total / count


# ----------------------------------------------------------------------------- tiny BERT pieces


class TinyBertEmbeddings(nn.Module):
    """BERT's input embedding: token + learned absolute position + segment, then LayerNorm.

    The position table has ``max_positions`` rows (512 in BERT, Devlin et al. 2019,
    §3 and appendix A.2), so longer inputs have no position vector: forward raises.
    """

    def __init__(self, vocab_size: int, d_model: int, max_positions: int = 512, n_segments: int = 2, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.max_positions = max_positions
        self.token = nn.Embedding(vocab_size, d_model)
        self.position = nn.Embedding(max_positions, d_model)
        self.segment = nn.Embedding(n_segments, d_model)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, input_ids: torch.Tensor, segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) integer ids -> (B, T, d_model).

        Raises:
            ValueError: if T > max_positions, with what to do about it.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"expected input_ids of shape (B, T), got {tuple(input_ids.shape)}")
        T = input_ids.shape[1]
        if T > self.max_positions:
            raise ValueError(
                f"input has {T} tokens but the model has only {self.max_positions} learned positions "
                f"(positions 0..{self.max_positions - 1}); truncate it, or split it with "
                f"sliding_window_chunks(n_tokens={T}, window={self.max_positions}, stride=...) "
                "and merge the predictions"
            )
        positions = torch.arange(T, device=input_ids.device)
        segments = torch.zeros_like(input_ids) if segment_ids is None else segment_ids
        return self.norm(self.token(input_ids) + self.position(positions) + self.segment(segments))


def attention_mask_for(kind: str, T: int) -> torch.Tensor:
    """(T, T) bool mask, True = may attend. ``kind``: 'bidirectional', 'causal' or 'no_diagonal'."""
    full = torch.ones(T, T, dtype=torch.bool)
    if kind == "bidirectional":
        return full
    if kind == "causal":
        return full.tril()
    if kind == "no_diagonal":
        return ~torch.eye(T, dtype=torch.bool)
    raise ValueError(f"unknown mask kind {kind!r}; use 'bidirectional', 'causal' or 'no_diagonal'")


class TinyEncoder(nn.Module):
    """A stack of single-head self-attention + feed-forward layers with a chosen mask.

    ``residual=False`` drops the residual connections so that position i's output
    reaches token i *only* through attention. ``forward(x, queries=p)`` computes every
    layer's queries from ``p`` (e.g. position embeddings) instead of the content, as
    the query stream of XLNet does (Yang et al. 2019, §2.3); together with the
    ``'no_diagonal'`` mask this is the best a one-stream model can do to hide token i
    from position i.
    """

    def __init__(self, d_model: int = 16, n_layers: int = 2, mask: str = "bidirectional", residual: bool = True,
                 seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.mask_kind, self.residual = mask, residual
        self.qkv = nn.ModuleList(nn.Linear(d_model, 3 * d_model) for _ in range(n_layers))
        self.ffn = nn.ModuleList(
            nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))
            for _ in range(n_layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(2 * n_layers))

    def forward(self, x: torch.Tensor, n_layers: int | None = None,
                queries: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, d) -> (B, T, d), through the first ``n_layers`` layers (all by default).

        ``queries``: optional (B or 1, T, d) tensor the queries are computed from at every layer.
        """
        if x.dim() != 3:
            raise ValueError(f"expected x of shape (B, T, d), got {tuple(x.shape)}")
        if queries is not None and queries.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"expected queries of shape (B, T, d) = (*, {x.shape[1]}, {x.shape[2]}), "
                             f"got {tuple(queries.shape)}")
        mask = attention_mask_for(self.mask_kind, x.shape[1])
        for layer in range(n_layers if n_layers is not None else len(self.qkv)):
            q, k, v = self.qkv[layer](x).chunk(3, dim=-1)                    # each (B, T, d)
            if queries is not None:
                q = self.qkv[layer](queries).chunk(3, dim=-1)[0]
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            x = self.norms[2 * layer](x + a if self.residual else a)
            f = self.ffn[layer](x)
            x = self.norms[2 * layer + 1](x + f if self.residual else f)
        return x
