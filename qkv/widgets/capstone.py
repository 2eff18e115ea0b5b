"""Widgets for the capstone chapter: sample from the trained GPT."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from qkv import bpe, gpt
from qkv.widgets.live import live_view
from qkv.widgets.static_frames import Part

PROMPTS = ("Return the", "The number of", "If the")

# The static book renders these values only (every combination of them); the live widget takes any.
TEMPERATURE_GRID = (0.0, 0.5, 0.8, 1.2)
TOKENS_GRID = (20, 60)
SEED_GRID = (1, 2, 3)


def next_token_table(params, config, prompt_ids: torch.Tensor, vocab: dict[int, bytes], temperature: float,
                     k: int = 10) -> list[tuple[str, float]]:
    """The ``k`` most likely next tokens after ``prompt_ids`` (1, T0) and their probabilities at ``temperature``
    (0 means greedy: probability 1 on the argmax)."""
    with torch.no_grad():
        logits = gpt.forward(params, config, prompt_ids)[0][0, -1]  # (V,)
    if temperature == 0:
        probs = torch.zeros_like(logits)
        probs[logits.argmax()] = 1.0
    else:
        probs = torch.softmax(logits / temperature, dim=-1)
    top = probs.topk(k)
    return [(vocab[int(i)].decode("utf-8", errors="backslashreplace"), float(p))
            for p, i in zip(top.values, top.indices)]


def counted_generation(params, config, prompt_ids: torch.Tensor, n: int, kv_cache: bool, temperature: float,
                       seed: int) -> tuple[torch.Tensor, int]:
    """gpt.generate, and the number of token positions the model ran over to produce the ``n`` new tokens
    (counted at each forward call: the cost the KV cache saves)."""
    positions = 0

    def counting_forward(params, config, tokens, cache=None):
        nonlocal positions
        positions += tokens.shape[1]
        return gpt.forward(params, config, tokens, cache)

    with torch.no_grad():
        out = gpt.generate({"params": params, "config": config}, prompt_ids, n, kv_cache, temperature,
                           torch.Generator().manual_seed(seed), forward_fn=counting_forward)
    return out, positions


def generation_playground(params, config, vocab: dict[int, bytes], merges, *, prompts: Sequence[str] = PROMPTS,
                          encode: Callable = bpe.encode, decode: Callable = bpe.decode) -> widgets.Widget:
    """Continue a prompt with the trained model: prompt, temperature, length, seed and the KV cache as controls.

    Shows the continuation with the number of token positions the model ran over (the KV cache
    changes that count, never the tokens), and a bar chart of the next-token probabilities after
    the prompt at the chosen temperature (0 = greedy). The static book renders the temperatures
    :data:`TEMPERATURE_GRID`, the lengths :data:`TOKENS_GRID` and the seeds :data:`SEED_GRID`.
    """
    style = {"description_width": "90px"}
    prompt_w = widgets.Dropdown(options=list(prompts), value=prompts[0], description="prompt", style=style)
    temperature_w = widgets.FloatSlider(value=0.8, min=0.0, max=1.5, step=0.1, description="temperature", style=style)
    tokens_w = widgets.IntSlider(value=60, min=5, max=150, step=5, description="new tokens", style=style)
    seed_w = widgets.IntSlider(value=1, min=0, max=20, description="seed", style=style)
    cache_w = widgets.Checkbox(value=True, description="KV cache")

    def ids() -> torch.Tensor:
        return torch.tensor([encode(prompt_w.value, merges)], dtype=torch.int64)  # (1, T0)

    def continuation():
        prompt_ids = ids()
        out, positions = counted_generation(params, config, prompt_ids, tokens_w.value, cache_w.value,
                                            temperature_w.value, seed_w.value)
        print(repr(decode(out[0].tolist(), vocab)))
        how = "with the KV cache" if cache_w.value else "recomputing every position at every step"
        print(f"{tokens_w.value} new tokens after a prompt of {prompt_ids.shape[1]}: the model ran over "
              f"{positions:,} token positions ({how})")

    def bars():
        table = next_token_table(params, config, ids(), vocab, temperature_w.value)
        fig, ax = plt.subplots(figsize=(7, 2.6))
        ax.bar(range(len(table)), [p for _, p in table])
        ax.set_xticks(range(len(table)), [repr(t) for t, _ in table], rotation=30, fontsize=8)
        ax.set_ylabel("probability")
        ax.set_title(f"next token after {prompt_w.value!r} at temperature {temperature_w.value:g}", fontsize=9)
        plt.tight_layout()
        plt.show()

    def draw():
        continuation()
        bars()

    controls = [prompt_w, temperature_w, tokens_w, seed_w, cache_w]
    header = [widgets.HBox([prompt_w, cache_w]), widgets.HBox([temperature_w, tokens_w]), seed_w]
    return live_view(draw, controls, header, title="sampling from the trained GPT",
                     grid={temperature_w: list(TEMPERATURE_GRID), tokens_w: list(TOKENS_GRID), seed_w: list(SEED_GRID)},
                     parts=[Part(continuation, controls, wide=True), Part(bars, [prompt_w, temperature_w], wide=True)])
