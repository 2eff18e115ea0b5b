"""The KV cache: its size, one cached decoding step, a tiny decoder and a decode-time benchmark.

While generating, a decoder produces one token per step. The keys and values of
earlier tokens never change (causal attention: a token only sees the past), so
they are computed once and kept: the *KV cache*. Each step appends one key and
one value per layer and KV head, and the new query attends over all of them.

Shapes: ``B`` batch, ``H`` query heads, ``H_kv`` KV heads, ``S`` cached length, ``d`` head width.
"""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qkv.gqa import grouped_query_attention

# Bytes per element of the dtypes a KV cache is commonly stored in.
DTYPE_BYTES: dict[str, float] = {"float32": 4, "float16": 2, "bfloat16": 2, "fp8 / int8": 1, "int4": 0.5}


def kv_cache_bytes(
    n_layers: int,
    n_kv_heads: int,
    d_head: int,
    seq_len: int,
    batch: int = 1,
    bytes_per_element: float = 2,
) -> int:
    """Bytes held by a KV cache: 2 (K and V) · layers · KV heads · d_head · tokens · batch · bytes/element.

    The number of *query* heads does not appear: only KV heads are cached. That is
    why MQA (1 KV head) and GQA (a few) shrink the cache by H / H_kv.

    Args:
        n_layers, n_kv_heads, d_head: the model's attention geometry (positive ints).
        seq_len: cached tokens per sequence (>= 0); batch: sequences (>= 1).
        bytes_per_element: 4 for float32, 2 for float16/bfloat16, 1 for 8-bit, 0.5 for 4-bit.
            Bytes, not bits: float16 is 2, not 16.

    Returns:
        int number of bytes.

    Raises:
        ValueError: on non-positive sizes.
    """
    for name, value in (("n_layers", n_layers), ("n_kv_heads", n_kv_heads), ("d_head", d_head), ("batch", batch)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if int(seq_len) != seq_len or seq_len < 0:
        raise ValueError(f"seq_len must be a non-negative integer, got {seq_len!r}")
    if bytes_per_element <= 0:
        raise ValueError(f"bytes_per_element must be positive (float16 = 2 bytes), got {bytes_per_element!r}")
    return int(round(2 * n_layers * n_kv_heads * d_head * seq_len * batch * bytes_per_element))


def empty_cache(batch: int, n_kv_heads: int, d_head: int,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """An empty (k, v) cache: two (B, H_kv, 0, d) tensors."""
    shape = (batch, n_kv_heads, 0, d_head)
    return torch.empty(shape, dtype=dtype), torch.empty(shape, dtype=dtype)


def decode_step(
    q_t: torch.Tensor,
    k_t: torch.Tensor,
    v_t: torch.Tensor,
    cache_k: torch.Tensor,
    cache_v: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of cached attention for the newest token.

    Args:
        q_t: (B, H, 1, d) query of the new token.
        k_t, v_t: (B, H_kv, 1, d) its key and value.
        cache_k, cache_v: (B, H_kv, S, d) keys and values of the S earlier tokens (S may be 0).

    Returns:
        (output (B, H, 1, d), new cache_k (B, H_kv, S+1, d), new cache_v (B, H_kv, S+1, d)).
        The new token is appended *before* attending: it must see itself, like
        the last row of a causal mask. No mask is needed, since the cache holds only the past.

    ``torch.cat`` copies the cache every step (O(S)); serving systems preallocate
    a (B, H_kv, S_max, d) buffer and write in place. The result is the same.

    Raises:
        ValueError: on shapes that do not fit together.
    """
    if q_t.dim() != 4 or q_t.shape[2] != 1:
        raise ValueError(f"expected q_t of shape (B, H, 1, d), got {tuple(q_t.shape)}")
    for name, t in (("k_t", k_t), ("v_t", v_t)):
        if t.dim() != 4 or t.shape[2] != 1:
            raise ValueError(f"expected {name} of shape (B, H_kv, 1, d), got {tuple(t.shape)}")
    if cache_k.shape != cache_v.shape or cache_k.dim() != 4 or cache_k.shape[:2] != k_t.shape[:2] \
            or cache_k.shape[3] != k_t.shape[3]:
        raise ValueError(f"expected caches of shape (B, H_kv, S, d) matching k_t {tuple(k_t.shape)}, "
                         f"got {tuple(cache_k.shape)} and {tuple(cache_v.shape)}")
    cache_k = torch.cat([cache_k, k_t], dim=2)
    cache_v = torch.cat([cache_v, v_t], dim=2)
    return grouped_query_attention(q_t, cache_k, cache_v), cache_k, cache_v


# ----------------------------------------------------------------------------- a tiny decoder


@dataclass(frozen=True)
class DecoderConfig:
    vocab: int = 64
    d_model: int = 32
    n_heads: int = 4
    n_kv_heads: int = 2
    n_layers: int = 2
    max_len: int = 64

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads


class TinyDecoder(torch.nn.Module):
    """A random pre-LN decoder-only Transformer with GQA, learned positions and a KV cache.

    ``forward(tokens)`` recomputes everything (training-style, causal mask);
    ``step(tokens, cache)`` processes only new tokens and reuses the cache. Both
    return logits (B, T, vocab); they agree to float rounding.
    """

    def __init__(self, config: DecoderConfig = DecoderConfig(), seed: int = 0):
        super().__init__()
        c = self.config = config
        if c.d_model % c.n_heads or c.n_heads % c.n_kv_heads:
            raise ValueError(f"need d_model % n_heads == 0 and n_heads % n_kv_heads == 0, got {c}")
        gen = torch.Generator().manual_seed(seed)

        def param(*shape, fan_in):
            return torch.nn.Parameter(torch.randn(*shape, generator=gen) / math.sqrt(fan_in))

        d, kv = c.d_model, c.n_kv_heads * c.d_head
        self.tok_emb = param(c.vocab, d, fan_in=1)
        self.pos_emb = param(c.max_len, d, fan_in=1)
        self.layers = torch.nn.ModuleList()
        for _ in range(c.n_layers):
            layer = torch.nn.ParameterDict({
                "w_q": param(d, d, fan_in=d), "w_k": param(d, kv, fan_in=d), "w_v": param(d, kv, fan_in=d),
                "w_o": param(d, d, fan_in=d), "w_1": param(d, 4 * d, fan_in=d), "w_2": param(4 * d, d, fan_in=4 * d),
            })
            self.layers.append(layer)

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, n, self.config.d_head).transpose(1, 2)  # (B, n, T, d_head)

    def _run(self, tokens: torch.Tensor, cache: list | None, position: int) -> tuple[torch.Tensor, list]:
        c = self.config
        b, t = tokens.shape
        if position + t > c.max_len:
            raise ValueError(f"positions {position}..{position + t - 1} exceed max_len = {c.max_len}")
        x = self.tok_emb[tokens] + self.pos_emb[position:position + t]  # (B, T, d_model)
        new_cache = []
        for i, layer in enumerate(self.layers):
            h = F.layer_norm(x, (c.d_model,))
            q = self._heads(h @ layer["w_q"], c.n_heads)  # (B, H, T, d)
            k = self._heads(h @ layer["w_k"], c.n_kv_heads)  # (B, H_kv, T, d)
            v = self._heads(h @ layer["w_v"], c.n_kv_heads)
            if cache is not None:
                k = torch.cat([cache[i][0], k], dim=2)  # (B, H_kv, S + T, d)
                v = torch.cat([cache[i][1], v], dim=2)
            new_cache.append((k, v))
            s = k.shape[2]
            # query i (absolute position s - t + i) may see keys 0 .. s - t + i
            mask = torch.arange(s)[None, :] <= torch.arange(s - t, s)[:, None]  # (T, S)
            att = grouped_query_attention(q, k, v, mask)  # (B, H, T, d)
            x = x + att.transpose(1, 2).reshape(b, t, c.d_model) @ layer["w_o"]
            x = x + F.gelu(F.layer_norm(x, (c.d_model,)) @ layer["w_1"]) @ layer["w_2"]
        return F.layer_norm(x, (c.d_model,)) @ self.tok_emb.T, new_cache  # tied output embedding

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) int64 → logits (B, T, vocab), recomputing every position."""
        return self._run(tokens, None, 0)[0]

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, cache: list | None = None,
             position: int | None = None) -> tuple[torch.Tensor, list]:
        """Process only ``tokens`` (B, T_new) given ``cache`` (one (k, v) per layer); return (logits, new cache).

        ``position`` is the absolute position of the first new token and defaults to
        the cached length; passing anything else reproduces an off-by-one bug.
        """
        cached = 0 if cache is None else cache[0][0].shape[2]
        return self._run(tokens, cache, cached if position is None else position)


# ----------------------------------------------------------------------------- decode-time benchmark


def machine_description() -> str:
    """One line naming the machine the timings come from."""
    return (f"{platform.machine()}, processor {platform.processor() or 'not reported'}, "
            f"{os.cpu_count()} CPUs, torch {torch.__version__}")


def _decode_inputs(n_heads, n_kv_heads, d_head, context, batch, dtype, gen):
    q = torch.randn(batch, n_heads, 1, d_head, generator=gen).to(dtype)
    k = torch.randn(batch, n_kv_heads, context, d_head, generator=gen).to(dtype)
    v = torch.randn(batch, n_kv_heads, context, d_head, generator=gen).to(dtype)
    return q, k, v


def decode_time_table(
    n_heads: int,
    kv_options: list[int],
    d_head: int,
    contexts: list[int],
    batch: int = 1,
    repeats: int = 15,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    threads: int | None = 1,
) -> dict[int, list[float]]:
    """Best-of-``repeats`` seconds of one decode step of attention, for each KV-head count and context.

    One step = one new query per head, (B, H, 1, d), attending over a filled cache of
    (B, H_kv, context, d) keys and values, KV heads shared without copies. Only the
    attention is timed: projections and the MLP do not depend on H_kv. The settings are
    timed in interleaved rounds, so a burst of load on a shared machine hits all of them
    alike, and the minimum over rounds is kept. ``threads`` pins torch's thread count
    during the measurement (default 1; None keeps the current setting).

    Returns:
        {n_kv_heads: [seconds for each context]}.

    Raises:
        ValueError: if a KV-head count does not divide ``n_heads``.
    """
    for n_kv in kv_options:
        if n_kv < 1 or n_heads % n_kv:
            raise ValueError(f"every KV-head count must divide n_heads = {n_heads}, got {n_kv}")
    gen = torch.Generator().manual_seed(seed)
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        best = {n_kv: [float("inf")] * len(contexts) for n_kv in kv_options}
        for i, context in enumerate(contexts):
            inputs = {n_kv: _decode_inputs(n_heads, n_kv, d_head, context, batch, dtype, gen) for n_kv in kv_options}
            for n_kv in kv_options:
                grouped_query_attention(*inputs[n_kv])  # warm-up
            for _ in range(repeats):
                for n_kv in kv_options:
                    start = time.perf_counter()
                    grouped_query_attention(*inputs[n_kv])
                    best[n_kv][i] = min(best[n_kv][i], time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return best


def time_decode_attention(
    n_heads: int,
    n_kv_heads: int,
    d_head: int,
    context: int,
    batch: int = 1,
    repeats: int = 5,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    threads: int | None = 1,
) -> float:
    """Best-of-``repeats`` seconds for one decode step of attention over ``context`` cached tokens.

    A single setting of :func:`decode_time_table`; see there for what is timed.
    """
    table = decode_time_table(n_heads, [n_kv_heads], d_head, [context], batch, repeats, dtype, seed, threads)
    return table[n_kv_heads][0]
