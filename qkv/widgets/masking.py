"""Widgets for the masking chapter: the combined attention mask of a padded batch, drawn as grids."""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from qkv.masks import attention_mask, causal_mask, padding_mask
from qkv.widgets.live import live_view
from qkv.widgets.static_frames import Part

# One colour per reason a (query, key) pair is allowed or blocked.
_STATES = ["may attend", "key is padding", "query is padding", "future key (causal)"]
_COLOURS = ["#2b8cbe", "#bdbdbd", "#f2f2f2", "#fdae6b"]


def mask_reasons(lengths: torch.Tensor, max_len: int, causal: bool) -> torch.Tensor:
    """int (B, T, T): 0 allowed, 1 blocked because the key is padding, 2 because the query is
    padding, 3 because the key is in the future. Self-attention over one padded batch."""
    real = padding_mask(lengths, max_len)  # (B, T)
    reasons = torch.zeros(len(lengths), max_len, max_len, dtype=torch.long)
    if causal:
        reasons[:, ~causal_mask(max_len)] = 3
    reasons[~real[:, None, :].expand(-1, max_len, -1)] = 1  # padding keys: columns
    reasons[~real[:, :, None].expand(-1, -1, max_len)] = 2  # padding queries: rows
    return reasons


def draw_mask_panel(ax, b: int, length: int, max_len: int, causal: bool):
    """Draw sequence ``b``'s (T, T) grid (rows are queries, columns keys) for its real ``length``."""
    lengths = torch.tensor([length])
    allowed = int(attention_mask(lengths, lengths, max_len, max_len, causal=causal)[0, 0].sum())
    reasons = mask_reasons(lengths, max_len, causal)[0]  # sequences of a batch do not interact
    ax.imshow(reasons.numpy(), cmap=ListedColormap(_COLOURS), vmin=0, vmax=len(_COLOURS) - 1)
    ax.set_xticks(range(max_len))
    ax.set_yticks(range(max_len))
    ax.set_xticks(np.arange(-0.5, max_len), minor=True)
    ax.set_yticks(np.arange(-0.5, max_len), minor=True)
    ax.grid(which="minor", color="white", lw=1)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("key j")
    ax.set_ylabel("query i")
    ax.set_title(f"sequence {b}: length {length}\n{allowed} of {max_len * max_len} pairs allowed", fontsize=10)
    return ax


def draw_masks(lengths, max_len: int, causal: bool, axes=None):
    """Draw one (T, T) grid per sequence of the batch: rows are queries, columns keys."""
    lengths = torch.as_tensor(lengths)
    if axes is None:
        _, axes = plt.subplots(1, len(lengths), figsize=(2.6 * len(lengths), 3.0))
    for b, ax in enumerate(np.atleast_1d(axes)):
        draw_mask_panel(ax, b, int(lengths[b]), max_len, causal)
    return axes


def _legend_handles() -> list[Patch]:
    return [Patch(facecolor=c, edgecolor="gray", label=s) for c, s in zip(_COLOURS, _STATES)]


def padded_batch_masks(default_lengths=(6, 4, 2), max_len: int = 6, default_causal: bool = True) -> widgets.Widget:
    """Sliders for the lengths of a padded batch of three sequences and a causal checkbox.

    Shows the combined self-attention mask ``attention_mask(lengths, lengths, T, T, causal)``
    for each sequence, coloured by why a pair is blocked: padding key, padding query, or future key.
    """
    sliders = [widgets.IntSlider(value=n, min=0, max=max_len, description=f"length {b}", continuous_update=False,
                                 style={"description_width": "60px"}, layout=widgets.Layout(width="240px"))
               for b, n in enumerate(default_lengths)]
    causal = widgets.Checkbox(value=default_causal, description="causal (decoder self-attention)", indent=False)

    def draw():
        lengths = torch.tensor([s.value for s in sliders])
        fig, axes = plt.subplots(1, len(sliders), figsize=(2.6 * len(sliders), 3.4))
        draw_masks(lengths, max_len, causal.value, axes)
        fig.legend(handles=_legend_handles(), loc="lower center", ncol=4, frameon=False, fontsize=10)
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        plt.show()

    # The static book draws each sequence's panel on its own (they do not interact), so every
    # length renders: 3 x 7 x 2 small panels instead of 7 x 7 x 7 x 2 whole figures.
    def panel(b: int) -> Part:
        def draw_one():
            fig, ax = plt.subplots(figsize=(2.6, 3.1))
            draw_mask_panel(ax, b, sliders[b].value, max_len, causal.value)
            fig.tight_layout()
            plt.show()
        return Part(draw_one, [sliders[b], causal])

    def legend():
        fig = plt.figure(figsize=(2.6 * len(sliders), 0.35))
        fig.legend(handles=_legend_handles(), loc="center", ncol=4, frameon=False, fontsize=10)
        plt.show()

    return live_view(draw, [*sliders, causal], header=[widgets.HBox(sliders), causal],
                     title="Combined attention masks of a padded batch of three sequences",
                     parts=[*(panel(b) for b in range(len(sliders))), Part(legend, [], wide=True)])
