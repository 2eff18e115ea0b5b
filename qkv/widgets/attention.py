"""Widgets for the attention chapter: a query-token heatmap and a softmax temperature view."""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from qkv.attention import scaled_dot_product_attention, softmax
from qkv.widgets.live import live_view

# A toy sentence with hand-made 6-d embeddings along readable directions
# (animal, object/place, action, function word, pronoun, state), so that the
# attention pattern can be read; learned embeddings are not this tidy.
TOY_TOKENS = ["the", "cat", "sat", "on", "the", "mat", "because", "it", "was", "tired"]
_FEATURES = {
    "the": [0, 0, 0, 1.0, 0, 0],
    "cat": [1.2, 0, 0, 0, 0.3, 0.2],
    "sat": [0.2, 0, 1.0, 0, 0, 0.3],
    "on": [0, 0.3, 0, 0.9, 0, 0],
    "mat": [0, 1.2, 0, 0, 0, 0],
    "because": [0, 0, 0, 1.0, 0, 0.2],
    "it": [0.9, 0.2, 0, 0.2, 1.0, 0],
    "was": [0, 0, 0.6, 0.5, 0, 0.3],
    "tired": [0.5, 0, 0.3, 0, 0, 1.2],
}


def toy_embeddings() -> torch.Tensor:
    """(T, 6) embeddings of TOY_TOKENS, with a little fixed noise so repeated words differ by position."""
    gen = torch.Generator().manual_seed(0)
    x = 2.0 * torch.tensor([_FEATURES[t] for t in TOY_TOKENS])  # x2: sharper, readable weights
    return x + 0.1 * torch.randn(x.shape, generator=gen)


def plot_attention(weights: torch.Tensor, q_tokens, k_tokens, *, highlight: int | None = None, ax=None, title=None):
    """Heatmap of (T_q, T_k) attention weights; rows are queries."""
    ax = ax or plt.gca()
    ax.imshow(weights.detach().numpy(), cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(k_tokens)), k_tokens, rotation=60, ha="right")
    ax.set_yticks(range(len(q_tokens)), q_tokens)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query")
    if highlight is not None:
        ax.add_patch(plt.Rectangle((-0.5, highlight - 0.5), len(k_tokens), 1, fill=False, ec="red", lw=2))
    if title:
        ax.set_title(title)
    return ax


def query_heatmap(tokens=None, x: torch.Tensor | None = None, default_query: int = 7) -> widgets.Widget:
    """Pick a query token, see its attention weights over every key.

    Uses plain dot-product self-attention with Q = K = V = X (no learned
    projections) so that the weights reflect the embeddings' similarity.
    """
    tokens = tokens or TOY_TOKENS
    x = toy_embeddings() if x is None else x
    _, weights = scaled_dot_product_attention(x, x, x)  # (T, T)
    labels = [f"{i}:{t}" for i, t in enumerate(tokens)]
    choose = widgets.Dropdown(options=[(lab, i) for i, lab in enumerate(labels)], value=default_query,
                              description="query")

    def draw():
        i = choose.value
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [1.2, 1]})
        plot_attention(weights, labels, labels, highlight=i, ax=left, title="all queries")
        right.bar(range(len(tokens)), weights[i].numpy(), color="tab:blue")
        right.set_xticks(range(len(tokens)), labels, rotation=60, ha="right")
        right.set_ylim(0, 1)
        right.set_title(f"weights of query {labels[i]!r} (sum = {weights[i].sum():.3f})")
        fig.tight_layout()
        plt.show()

    return live_view(draw, [choose], title="Attention weights of the toy sentence, one query highlighted")


def softmax_temperature(logits=(2.0, 1.0, 0.5, 0.1, -1.0), default_scale: float = 1.0) -> widgets.Widget:
    """Slider over a multiplier s applied to the logits: softmax(s · z).

    s > 1 sharpens toward one-hot (what unscaled dot products do at large d_k),
    s < 1 flattens toward uniform; s is the inverse temperature 1/τ.
    """
    z = torch.tensor(logits, dtype=torch.float64)
    scale = widgets.FloatLogSlider(value=default_scale, base=10, min=-1.5, max=1.5, step=0.05,
                                   description="scale s", readout_format=".2f", continuous_update=False)

    def draw():
        s = scale.value
        p = softmax(s * z)
        entropy = -(p * torch.log(p.clamp_min(1e-300))).sum().item()
        fig, ax = plt.subplots(figsize=(6, 2.8))
        ax.bar([f"z={v:g}" for v in logits], p.numpy(), color="tab:orange")
        ax.set_ylim(0, 1)
        ax.set_ylabel("probability")
        ax.set_title(f"softmax(s·z), s = {s:.2f}: max p = {p.max():.3f}, entropy = {entropy:.3f} nats")
        fig.tight_layout()
        plt.show()

    # Static book: every second step of the slider (31 frames; each step in JupyterLab).
    exponents = [round(-1.5 + 0.1 * k, 10) for k in range(31)]
    return live_view(draw, [scale], title="Softmax of five logits multiplied by s",
                     grid={scale: [10 ** e for e in exponents]})
