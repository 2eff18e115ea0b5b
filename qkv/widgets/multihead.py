"""Widgets for the multihead chapter: per-head attention maps for a chosen number of heads, and a cost table."""

from __future__ import annotations

import math

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import HTML, display

from qkv.multihead import attention_cost, multi_head_attention
from qkv.widgets.attention import TOY_TOKENS, toy_embeddings
from qkv.widgets.live import live_view

HEAD_CHOICES = (1, 2, 4, 8)
D_MODEL = 24  # divisible by every entry of HEAD_CHOICES


def toy_layer(d_model: int = D_MODEL, seed: int = 0) -> dict[str, torch.Tensor]:
    """Fixed random weights of one attention layer and the toy sentence lifted to d_model features.

    The same (3·d_model, d_model) projection is used for every number of heads:
    changing H only changes how the d_model features are cut into heads.
    """
    gen = torch.Generator().manual_seed(seed)
    lift = torch.linalg.qr(torch.randn(d_model, 6, generator=gen))[0].T * math.sqrt(d_model / 6)  # (6, d_model)
    scale = 2.0 / math.sqrt(d_model)  # O(1)-to-large logits, so that the maps are readable
    return {
        "x": (toy_embeddings() @ lift)[None],  # (1, T, d_model)
        "in_proj_weight": torch.randn(3 * d_model, d_model, generator=gen) * scale,
        "out_proj_weight": torch.randn(d_model, d_model, generator=gen) / math.sqrt(d_model),
    }


def per_head_weights(n_heads: int, layer: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """(H, T, T) attention weights of each head of the toy layer on the toy sentence."""
    layer = layer or toy_layer()
    x = layer["x"]
    _, weights = multi_head_attention(x, x, x, layer["in_proj_weight"], None, layer["out_proj_weight"], None,
                                      n_heads, average_weights=False)
    return weights[0]


def head_maps(default_heads: int = 4) -> widgets.Widget:
    """Choose the number of heads H; see every head's (T, T) map and their average.

    The projection weights are fixed and random (not trained): the point is that
    H heads give H different distributions over the same keys, where one head has one.
    """
    layer = toy_layer()
    choose = widgets.ToggleButtons(options=list(HEAD_CHOICES), value=default_heads, description="heads H")

    def draw():
        H = choose.value
        w = per_head_weights(H, layer)
        maps = [(w[h], f"head {h} (d_head = {D_MODEL // H})") for h in range(H)]
        if H > 1:
            maps.append((w.mean(0), "average of the heads"))
        cols = min(len(maps), 5)  # at most 5 maps per row keeps the token labels readable
        rows = math.ceil(len(maps) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols + 0.8, 2.6 * rows + 0.4), squeeze=False)
        for ax in axes.flat[len(maps):]:
            ax.axis("off")
        for i, (ax, (m, title)) in enumerate(zip(axes.flat, maps)):
            ax.imshow(m.numpy(), cmap="viridis", vmin=0, vmax=1)
            ax.set_title(title, fontsize=9)
            ax.set_xticks(range(len(TOY_TOKENS)), TOY_TOKENS, rotation=90, fontsize=7)
            ax.set_yticks(range(len(TOY_TOKENS)), TOY_TOKENS if i % cols == 0 else [], fontsize=7)
        fig.suptitle(f"H = {H}: one (T, T) weight map per head (rows: queries, columns: keys)", fontsize=10)
        fig.tight_layout()
        plt.show()

    return live_view(draw, [choose], title="Attention maps of every head of one layer")


def cost_rows(T: int, d_model: int, n_heads: int) -> list[tuple[str, dict[str, int]]]:
    """The three configurations the chapter compares, with their costs (see ``attention_cost``)."""
    return [
        (f"1 head, d_head = {d_model}", attention_cost(T, d_model, 1)),
        (f"{n_heads} heads, d_head = {d_model // n_heads}", attention_cost(T, d_model, n_heads)),
        (f"{n_heads} heads, d_head = {d_model} (full width)", attention_cost(T, d_model, n_heads, d_model)),
    ]


def cost_table_html(T: int, d_model: int, n_heads: int) -> str:
    """An HTML table of parameters, FLOPs and attention-matrix entries for :func:`cost_rows`."""
    header = ["configuration", "parameters", "projection FLOPs", "QKᵀ + weights·V FLOPs", "total FLOPs",
              "attention entries H·T²"]
    rows = "".join(
        "<tr>" + f"<td style='text-align:left'>{name}</td>" + "".join(
            f"<td>{c[key]:,}</td>" for key in ("params", "proj_flops", "attn_flops", "flops", "attn_entries"))
        + "</tr>"
        for name, c in cost_rows(T, d_model, n_heads))
    head = "".join(f"<th>{h}</th>" for h in header)
    return (f"<p>One self-attention layer, one sequence of T = {T} tokens, d_model = {d_model}:</p>"
            f"<table style='text-align:right'><tr>{head}</tr>{rows}</table>")


def cost_table(T: int = 512, d_model: int = 512, n_heads: int = 8) -> widgets.Widget:
    """Sliders for T, d_model and H; a table comparing 1 head, H narrow heads and H full-width heads."""
    t_slider = widgets.SelectionSlider(options=[2 ** i for i in range(4, 14)], value=T, description="T")
    d_choice = widgets.Dropdown(options=[64, 128, 256, 512, 768, 1024], value=d_model, description="d_model")
    h_choice = widgets.Dropdown(options=[1, 2, 4, 8, 16, 32], value=n_heads, description="heads H")

    def draw():
        display(HTML(cost_table_html(t_slider.value, d_choice.value, h_choice.value)))

    return live_view(draw, [t_slider, d_choice, h_choice], title="Cost of one self-attention layer")
