"""Widgets for the capstone chapter: sample from the trained GPT."""

from __future__ import annotations

from typing import Callable

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from qkv import bpe, gpt
from qkv.widgets.live import live_view


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
    return [(vocab[int(i)].decode("utf-8", errors="backslashreplace"), float(p)) for p, i in zip(top.values, top.indices)]


def generation_playground(params, config, vocab: dict[int, bytes], merges, *, prompt: str = "Return the",
                          encode: Callable = bpe.encode, decode: Callable = bpe.decode) -> widgets.Widget:
    """Continue a prompt with the trained model: temperature, length, seed and the KV cache as controls.

    Shows the continuation and a bar chart of the next-token probabilities after the prompt at
    the chosen temperature (0 = greedy). The static book shows the default view.
    """
    style = {"description_width": "90px"}
    temperature_w = widgets.FloatSlider(value=0.8, min=0.0, max=1.5, step=0.1, description="temperature", style=style)
    tokens_w = widgets.IntSlider(value=40, min=5, max=150, step=5, description="new tokens", style=style)
    seed_w = widgets.BoundedIntText(value=1, min=0, max=10_000, description="seed", style=style)
    cache_w = widgets.Checkbox(value=True, description="KV cache")
    prompt_w = widgets.Text(value=prompt, description="prompt", style=style)
    model = {"params": params, "config": config}

    def draw():
        ids = torch.tensor([encode(prompt_w.value or " ", merges)], dtype=torch.int64)
        out = gpt.generate(model, ids, tokens_w.value, cache_w.value, temperature_w.value,
                           torch.Generator().manual_seed(seed_w.value))
        print(decode(out[0].tolist(), vocab))
        table = next_token_table(params, config, ids, vocab, temperature_w.value)
        fig, ax = plt.subplots(figsize=(7, 2.6))
        ax.bar(range(len(table)), [p for _, p in table])
        ax.set_xticks(range(len(table)), [repr(t) for t, _ in table], rotation=30, fontsize=8)
        ax.set_ylabel("probability")
        ax.set_title(f"next token after {prompt_w.value!r} at temperature {temperature_w.value:g}", fontsize=9)
        plt.tight_layout()
        plt.show()

    controls = [temperature_w, tokens_w, seed_w, cache_w, prompt_w]
    header = [widgets.HBox([temperature_w, tokens_w]), widgets.HBox([seed_w, cache_w]), prompt_w]
    return live_view(draw, controls, header)
