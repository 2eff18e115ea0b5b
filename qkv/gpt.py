"""A small decoder-only GPT assembled from the course's own pieces, as plain data.

The model is a dict of tensors (``params``) plus a dict of sizes (``config``), never an
``nn.Module``: that is what crosses the grader's sandbox boundary (autograder/wire.py), and
it lets the same code run with the library's pieces or with a learner's. Each piece comes
from one chapter:

| piece | chapter | used for |
|---|---|---|
| ``softmax`` | 1 attention | attention weights |
| ``causal_mask`` | 3 masking | a token sees itself and the past |
| ``split_heads``, ``merge_heads`` | 4 multihead | (B, T, H·d_head) ↔ (B, H, T, d_head) |
| ``repeat_kv`` | 5 mqa_gqa | grouped-query attention: one KV head per block of query heads |
| ``apply_rope`` | 6 transformer | rotary positions on queries and keys |
| ``noam_lr`` | 6 transformer | the learning-rate schedule (warm-up, then 1/√step) |
| ``rms_norm`` | 8 norms | Pre-LN blocks with RMSNorm |

(The tokenizer, chapter 9's byte-level BPE, turns text into the token ids; see qkv.capstone.)

Architecture (GPT-2's Pre-LN layout, Radford et al. 2019 §2.3, with LLaMA's RMSNorm and RoPE):

    x = tok_emb[tokens]                                       (B, T, d)
    repeat n_layers times:
        x = x + Attention(rms_norm(x))                        GQA, RoPE on q and k, causal mask
        x = x + W2 · gelu(W1 · rms_norm(x))
    logits = rms_norm(x) @ tok_embᵀ                           (B, T, V): the output layer is tied

Parameter names and shapes (every matrix is (d_in, d_out), so a linear layer is ``x @ W``):

| key | shape |
|---|---|
| ``tok_emb`` | (V, d) — the input embedding *and* the output layer |
| ``blocks.{i}.attn_norm``, ``blocks.{i}.mlp_norm``, ``final_norm`` | (d,) |
| ``blocks.{i}.wq`` | (d, H·d_head) |
| ``blocks.{i}.wk``, ``blocks.{i}.wv`` | (d, H_kv·d_head) |
| ``blocks.{i}.wo`` | (H·d_head, d) |
| ``blocks.{i}.w1`` / ``blocks.{i}.w2`` | (d, d_ff) / (d_ff, d) |

The KV cache is a list with one ``(k, v)`` pair per layer, each (B, H_kv, S, d_head): the
keys (already rotated by RoPE) and values of the S tokens seen so far.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from functools import partial

import torch
import torch.nn.functional as F

from qkv.attention import softmax as _softmax
from qkv.gqa import repeat_kv as _repeat_kv
from qkv.masks import causal_mask as _causal_mask
from qkv.multihead import merge_heads as _merge_heads
from qkv.multihead import split_heads as _split_heads
from qkv.norms import rms_norm as _rms_norm
from qkv.positional import apply_rope as _apply_rope
from qkv.schedules import noam_lr as _noam_lr

Params = dict[str, torch.Tensor]
Cache = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Pieces:
    """The functions the model is assembled from: the library's, or a learner's (same signatures)."""

    softmax: Callable  # (x, dim=-1) -> x's shape
    causal_mask: Callable  # (n) -> bool (n, n), True where key j <= query i
    split_heads: Callable  # (B, T, H·d_h), H -> (B, H, T, d_h)
    merge_heads: Callable  # (B, H, T, d_h) -> (B, T, H·d_h)
    repeat_kv: Callable  # (B, H_kv, S, d_h), n_rep -> (B, H_kv·n_rep, S, d_h)
    apply_rope: Callable  # (..., T, d_h), positions (T,) -> same shape
    rms_norm: Callable  # (..., C), weight (C,), eps -> same shape
    noam_lr: Callable  # (step, d_model, warmup) -> float

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def with_(self, **overrides: Callable) -> Pieces:
        """A copy with some pieces replaced (e.g. a learner's softmax)."""
        return replace(self, **overrides)


LIBRARY_PIECES = Pieces(softmax=_softmax, causal_mask=_causal_mask, split_heads=_split_heads,
                        merge_heads=_merge_heads, repeat_kv=_repeat_kv, apply_rope=_apply_rope,
                        rms_norm=_rms_norm, noam_lr=_noam_lr)

# The chapter that teaches each piece (slugs of qkv.chapters).
PIECE_CHAPTERS: dict[str, str] = {
    "softmax": "attention", "causal_mask": "masking", "split_heads": "multihead", "merge_heads": "multihead",
    "repeat_kv": "mqa_gqa", "apply_rope": "transformer", "noam_lr": "transformer", "rms_norm": "norms",
}

CONFIG_KEYS = ("vocab_size", "d_model", "n_heads", "n_kv_heads", "n_layers", "d_ff", "rope_base", "norm_eps",
               "adam_betas", "adam_eps")


def make_config(vocab_size: int, d_model: int = 64, n_heads: int = 4, n_kv_heads: int = 2, n_layers: int = 2,
                d_ff: int | None = None, rope_base: float = 10000.0, norm_eps: float = 1e-6,
                adam_betas: tuple[float, float] = (0.9, 0.98), adam_eps: float = 1e-9) -> dict:
    """A model config as a plain dict (it crosses the grader's boundary).

    ``d_ff`` defaults to 4·d_model. Adam's β = (0.9, 0.98) and ε = 1e-9 are Vaswani et al.
    2017, §5.3, the paper whose warm-up schedule (chapter 6) trains this model.

    Raises:
        ValueError: if the sizes do not fit together (d_model % n_heads, n_heads % n_kv_heads,
            an odd head width, which RoPE cannot rotate in pairs).
    """
    config = {"vocab_size": vocab_size, "d_model": d_model, "n_heads": n_heads, "n_kv_heads": n_kv_heads,
              "n_layers": n_layers, "d_ff": 4 * d_model if d_ff is None else d_ff, "rope_base": float(rope_base),
              "norm_eps": float(norm_eps), "adam_betas": tuple(float(b) for b in adam_betas),
              "adam_eps": float(adam_eps)}
    check_config(config)
    return config


def check_config(config: dict) -> None:
    """Raise ValueError naming what is wrong with ``config``."""
    missing = [k for k in CONFIG_KEYS if k not in config]
    if missing:
        raise ValueError(f"config is missing {missing}; build it with qkv.gpt.make_config(...)")
    for key in ("vocab_size", "d_model", "n_heads", "n_kv_heads", "n_layers", "d_ff"):
        if not isinstance(config[key], int) or config[key] < 1:
            raise ValueError(f"config[{key!r}] must be a positive int, got {config[key]!r}")
    d, h, h_kv = config["d_model"], config["n_heads"], config["n_kv_heads"]
    if d % h:
        raise ValueError(f"d_model = {d} must be divisible by n_heads = {h}")
    if h % h_kv:
        raise ValueError(f"n_heads = {h} must be a multiple of n_kv_heads = {h_kv}")
    if (d // h) % 2:
        raise ValueError(f"the head width d_model / n_heads = {d // h} must be even: RoPE rotates pairs of dims")


def param_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in the order :func:`init_params` creates them."""
    d, d_ff, v = config["d_model"], config["d_ff"], config["vocab_size"]
    d_head = d // config["n_heads"]
    d_q, d_kv = config["n_heads"] * d_head, config["n_kv_heads"] * d_head
    shapes: dict[str, tuple[int, ...]] = {"tok_emb": (v, d)}
    for i in range(config["n_layers"]):
        p = f"blocks.{i}."
        shapes.update({p + "attn_norm": (d,), p + "wq": (d, d_q), p + "wk": (d, d_kv), p + "wv": (d, d_kv),
                       p + "wo": (d_q, d), p + "mlp_norm": (d,), p + "w1": (d, d_ff), p + "w2": (d_ff, d)})
    shapes["final_norm"] = (d,)
    return shapes


def init_params(config: dict, seed: int = 0, dtype: torch.dtype = torch.float32) -> Params:
    """GPT-2's initialization (Radford et al. 2019, §2.3; the released code): weights N(0, 0.02²),
    the two matrices that write into the residual stream scaled by 1/√(2·n_layers), norm gains 1.

    With embeddings this small the first logits are nearly 0, so the loss starts at ≈ ln V.
    """
    check_config(config)
    gen = torch.Generator().manual_seed(seed)
    residual_scale = 1 / math.sqrt(2 * config["n_layers"])
    params: Params = {}
    for name, shape in param_shapes(config).items():
        if name.endswith("norm"):
            params[name] = torch.ones(shape, dtype=torch.float64)
        else:
            std = 0.02 * (residual_scale if name.endswith(("wo", "w2")) else 1.0)
            params[name] = torch.randn(shape, generator=gen, dtype=torch.float64) * std
    return {k: t.to(dtype) for k, t in params.items()}


def count_params(params: Params) -> int:
    """Number of scalars in ``params`` (the tied embedding is stored, and counted, once)."""
    return sum(t.numel() for t in params.values())


def param_formula(config: dict) -> dict[str, int]:
    """The parameter count by the block accounting of chapter 6, adapted to this model.

    Per layer: attention W_Q, W_O (d·d each) and W_K, W_V (d·d_kv each, d_kv = H_kv·d_head,
    which is d for multi-head attention: 4d² in all), the FFN 2·d·d_ff, two RMSNorm gains d.
    Plus the embedding V·d, counted once because the output layer reuses it, and the final norm.
    """
    d, d_ff, v, n = config["d_model"], config["d_ff"], config["vocab_size"], config["n_layers"]
    d_kv = config["n_kv_heads"] * (d // config["n_heads"])
    attention = 2 * d * d + 2 * d * d_kv
    ffn = 2 * d * d_ff
    norms = 2 * d
    out = {"embedding (tied)": v * d, "attention": n * attention, "ffn": n * ffn, "norms": n * norms + d}
    out["total"] = sum(out.values())
    return out


# ----------------------------------------------------------------------------- the forward pass


def _check_tokens(tokens: torch.Tensor, config: dict) -> None:
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.dtype != torch.int64:
        shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ValueError(f"expected tokens of shape (B, T) and dtype int64, got {shape}"
                         + (f" {tokens.dtype}" if isinstance(tokens, torch.Tensor) else ""))
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= config["vocab_size"]):
        raise ValueError(f"token ids must lie in [0, {config['vocab_size']}), got {tokens.min().item()}"
                         f"..{tokens.max().item()}")


def attention(h: torch.Tensor, params: Params, prefix: str, config: dict, cache_kv, pieces: Pieces):
    """One grouped-query self-attention sublayer (no residual, no norm).

    h: (B, T, d); cache_kv: None or the layer's (k, v), each (B, H_kv, S, d_head).
    Returns (output (B, T, d), (k, v) with the T new positions appended).
    """
    n_heads, n_kv = config["n_heads"], config["n_kv_heads"]
    d_head = config["d_model"] // n_heads
    past = 0 if cache_kv is None else cache_kv[0].shape[2]
    t = h.shape[1]
    positions = torch.arange(past, past + t)  # absolute positions: the new tokens follow the cache
    q = pieces.apply_rope(pieces.split_heads(h @ params[prefix + "wq"], n_heads), positions, config["rope_base"])
    k = pieces.apply_rope(pieces.split_heads(h @ params[prefix + "wk"], n_kv), positions, config["rope_base"])
    v = pieces.split_heads(h @ params[prefix + "wv"], n_kv)  # q (B, H, T, d_h); k, v (B, H_kv, T, d_h)
    if cache_kv is not None:
        k = torch.cat([cache_kv[0], k], dim=2)  # (B, H_kv, S + T, d_h)
        v = torch.cat([cache_kv[1], v], dim=2)
    group = n_heads // n_kv
    keys, values = pieces.repeat_kv(k, group), pieces.repeat_kv(v, group)  # (B, H, S + T, d_h)
    logits = q @ keys.transpose(-2, -1) / math.sqrt(d_head)  # (B, H, T, S + T)
    allowed = pieces.causal_mask(past + t)[past:]  # (T, S + T): query i sits at position S + i
    weights = pieces.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
    return pieces.merge_heads(weights @ values) @ params[prefix + "wo"], (k, v)


def forward(params: Params, config: dict, tokens: torch.Tensor, cache: Cache | None = None,
            *, pieces: Pieces = LIBRARY_PIECES) -> tuple[torch.Tensor, Cache]:
    """Logits for ``tokens`` and the KV cache after them.

    Args:
        params, config: the model (see the module docstring).
        tokens: (B, T) int64 token ids.
        cache: None to start from nothing, or the cache a previous call returned: then
            ``tokens`` continue that sequence (positions S, S+1, … for a cache of S tokens).
        pieces: the functions the model is built from (default: the library's).

    Returns:
        (logits (B, T, V) in the params' dtype, the new cache: one (k, v) per layer,
        each (B, H_kv, S + T, d_head)). Calling with all tokens at once or in pieces through
        the cache gives the same logits (up to float rounding).

    Raises:
        ValueError: on malformed tokens or config.
    """
    check_config(config)
    _check_tokens(tokens, config)
    eps = config["norm_eps"]
    x = params["tok_emb"][tokens]  # (B, T, d)
    new_cache: Cache = []
    for i in range(config["n_layers"]):
        p = f"blocks.{i}."
        out, kv = attention(pieces.rms_norm(x, params[p + "attn_norm"], eps), params, p, config,
                            None if cache is None else cache[i], pieces)
        x = x + out
        x = x + F.gelu(pieces.rms_norm(x, params[p + "mlp_norm"], eps) @ params[p + "w1"]) @ params[p + "w2"]
        new_cache.append(kv)
    x = pieces.rms_norm(x, params["final_norm"], eps)
    return x @ params["tok_emb"].T, new_cache  # tied: the output layer is the embedding


# ----------------------------------------------------------------------------- training


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats) of logits (B, T, V) against targets (B, T)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def empty_adam_state(params: Params) -> dict:
    """Adam's state before the first step: step 0 and zero moments, as plain data."""
    return {"step": 0, "m": {k: torch.zeros_like(t) for k, t in params.items()},
            "v": {k: torch.zeros_like(t) for k, t in params.items()}}


def train_step(params: Params, config: dict, tokens: torch.Tensor, lr: float, state: dict | None = None,
               *, pieces: Pieces = LIBRARY_PIECES, forward_fn: Callable | None = None) -> tuple[Params, dict, float]:
    """One step of Adam (Kingma & Ba 2015, Algorithm 1) on next-token prediction.

    Args:
        tokens: (B, T + 1) int64: the model reads tokens[:, :-1] and predicts tokens[:, 1:].
        lr: the learning rate of this step (e.g. from the Noam schedule).
        state: Adam's state returned by the previous step, or None for the first step:
            {"step": int, "m": {name: tensor}, "v": {name: tensor}}.
        forward_fn: the forward pass to differentiate, with :func:`forward`'s signature
            (default: :func:`forward` built from ``pieces``).

    Returns:
        (new params, new state, the loss *before* the update as a float). ``params`` and
        ``state`` are not modified.
    """
    if tokens.dim() != 2 or tokens.shape[1] < 2:
        raise ValueError(f"expected tokens of shape (B, T + 1) with T >= 1, got {tuple(tokens.shape)}")
    beta1, beta2 = config["adam_betas"]
    eps = config["adam_eps"]
    state = empty_adam_state(params) if state is None else state
    forward_fn = forward_fn or partial(forward, pieces=pieces)
    leaves = {k: t.detach().clone().requires_grad_(True) for k, t in params.items()}
    logits, _ = forward_fn(leaves, config, tokens[:, :-1])
    loss = next_token_loss(logits, tokens[:, 1:])
    grads = torch.autograd.grad(loss, list(leaves.values()))
    step = state["step"] + 1
    new_params, m, v = {}, {}, {}
    with torch.no_grad():
        for (name, p), g in zip(leaves.items(), grads):
            m[name] = beta1 * state["m"][name] + (1 - beta1) * g
            v[name] = beta2 * state["v"][name] + (1 - beta2) * g * g
            m_hat = m[name] / (1 - beta1 ** step)  # bias correction: the moments start at 0
            v_hat = v[name] / (1 - beta2 ** step)
            new_params[name] = p - lr * m_hat / (v_hat.sqrt() + eps)
    return new_params, {"step": step, "m": m, "v": v}, loss.item()


# ----------------------------------------------------------------------------- generation


def next_tokens(logits: torch.Tensor, temperature: float, generator: torch.Generator | None,
                softmax: Callable = _softmax) -> torch.Tensor:
    """(B, V) logits of the last position → (B, 1) int64: argmax if temperature == 0, else a sample
    from softmax(logits / temperature) drawn with ``generator``."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    probs = softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


@torch.no_grad()
def generate(model: dict, prompt_ids: torch.Tensor, n: int, kv_cache: bool = True, temperature: float = 0.0,
             generator: torch.Generator | None = None, *, pieces: Pieces = LIBRARY_PIECES,
             forward_fn: Callable | None = None) -> torch.Tensor:
    """Continue ``prompt_ids`` by ``n`` tokens.

    Args:
        model: {"params": ..., "config": ...}.
        prompt_ids: (B, T0) int64, T0 >= 1.
        n: number of new tokens (>= 0).
        kv_cache: True: feed the prompt once, then one new token per step through the cache;
            False: recompute the whole sequence at every step. Both give the same tokens.
        temperature: 0 for greedy decoding, else sample from softmax(logits / temperature).
        generator: the random source for sampling (torch.Generator), for reproducible samples.
        forward_fn: the forward pass, with :func:`forward`'s signature (default: :func:`forward`
            built from ``pieces``).

    Returns:
        (B, T0 + n) int64: the prompt followed by the new tokens.
    """
    params, config = model["params"], model["config"]
    if prompt_ids.dim() != 2 or prompt_ids.shape[1] < 1:
        raise ValueError(f"expected prompt_ids of shape (B, T0) with T0 >= 1, got {tuple(prompt_ids.shape)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    forward_fn = forward_fn or partial(forward, pieces=pieces)
    tokens = prompt_ids
    if kv_cache:
        logits, cache = forward_fn(params, config, prompt_ids)  # prefill: the whole prompt at once
        for step in range(n):
            new = next_tokens(logits[:, -1], temperature, generator, pieces.softmax)  # (B, 1)
            tokens = torch.cat([tokens, new], dim=1)
            if step < n - 1:
                logits, cache = forward_fn(params, config, new, cache)  # only the new token
    else:
        for _ in range(n):
            logits, _ = forward_fn(params, config, tokens)  # every position, every step
            tokens = torch.cat([tokens, next_tokens(logits[:, -1], temperature, generator, pieces.softmax)], dim=1)
    return tokens
