"""Widgets for the transformer chapter: the sinusoidal PE table and the Noam learning-rate schedule."""

from __future__ import annotations

import math

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from qkv.positional import pair_frequencies, sinusoidal_positional_encoding
from qkv.schedules import noam_curve
from qkv.widgets.live import live_view


def pe_heatmap(n_positions: int = 100, d_model: int = 64, default_position: int = 20,
               default_pair: int = 4) -> widgets.Widget:
    """Heatmap of PE (positions × dims) with a position slider and a frequency (pair index i) slider.

    Left: the table with the chosen row (position) and column pair (frequency) outlined.
    Right, top: the chosen position's encoding vector. Right, bottom: the chosen
    frequency's sin and cos across positions, with its wavelength 2π·10000^(2i/d).
    """
    pe = sinusoidal_positional_encoding(n_positions, d_model)
    position = widgets.IntSlider(value=default_position, min=0, max=n_positions - 1, description="position",
                                 continuous_update=False)
    pair = widgets.IntSlider(value=default_pair, min=0, max=d_model // 2 - 1, description="pair i",
                             continuous_update=False)
    omega = pair_frequencies(d_model)

    def draw():
        pos, i = position.value, pair.value
        fig = plt.figure(figsize=(11, 4))
        grid = fig.add_gridspec(2, 2, width_ratios=[1.1, 1])
        ax = fig.add_subplot(grid[:, 0])
        im = ax.imshow(pe.numpy(), aspect="auto", cmap="RdBu", vmin=-1, vmax=1)
        ax.add_patch(plt.Rectangle((-0.5, pos - 0.5), d_model, 1, fill=False, ec="black", lw=1.5))
        ax.add_patch(plt.Rectangle((2 * i - 0.5, -0.5), 2, n_positions, fill=False, ec="green", lw=1.5))
        ax.set_xlabel("dimension (even: sin, odd: cos)")
        ax.set_ylabel("position")
        ax.set_title(f"PE, {n_positions} positions × d_model = {d_model}")
        fig.colorbar(im, ax=ax, fraction=0.04)
        top = fig.add_subplot(grid[0, 1])
        top.bar(range(d_model), pe[pos].numpy(), color="black")
        top.set_ylim(-1.1, 1.1)
        top.set_title(f"PE[{pos}]: fast pairs on the left, slow on the right", fontsize=10)
        bottom = fig.add_subplot(grid[1, 1])
        bottom.plot(pe[:, 2 * i].numpy(), color="green", label=f"sin (dim {2 * i})")
        bottom.plot(pe[:, 2 * i + 1].numpy(), color="green", ls="--", label=f"cos (dim {2 * i + 1})")
        bottom.axvline(pos, color="black", lw=1)
        bottom.set_xlabel("position")
        bottom.set_title(f"pair {i}: wavelength 2π/ω = {2 * math.pi / omega[i].item():.1f} positions", fontsize=10)
        bottom.legend(fontsize=8, loc="lower left")
        fig.tight_layout()
        plt.show()

    # Static book: five positions and five frequencies (every one in JupyterLab).
    positions = sorted({0, 10, 50, n_positions - 1, default_position})
    pairs = sorted({0, 2, 12, d_model // 2 - 1, default_pair})
    return live_view(draw, [position, pair], title="Sinusoidal positional encoding table",
                     grid={position: positions, pair: pairs})


def lr_schedule(d_model: int = 512, default_warmup: int = 4000, total_steps: int = 40_000) -> widgets.Widget:
    """The Noam schedule lr = d_model^-0.5 · min(step^-0.5, step · warmup^-1.5) with a warm-up slider.

    The peak, at step = warmup, is (d_model · warmup)^-0.5: more warm-up means a lower, later peak.
    """
    warmup = widgets.IntSlider(value=default_warmup, min=500, max=16_000, step=500, description="warmup",
                               continuous_update=False)
    width = widgets.Dropdown(options=[256, 512, 1024], value=d_model, description="d_model")
    steps = torch.arange(1, total_steps + 1)

    def draw():
        w, d = warmup.value, width.value
        lr = noam_curve(steps, d, w)
        peak = (d * w) ** -0.5
        fig, ax = plt.subplots(figsize=(8, 3.2))
        ax.plot(steps.numpy(), lr.numpy(), color="tab:purple")
        ax.plot(steps.numpy(), noam_curve(steps, 512, 4000).numpy(), color="gray", lw=0.8, ls=":",
                label="Vaswani base model: d_model 512, warmup 4000")
        ax.axvline(w, color="tab:purple", lw=0.8, ls="--")
        ax.plot([w], [peak], "o", color="tab:purple")
        ax.set_xlabel("training step")
        ax.set_ylabel("learning rate")
        ax.set_ylim(0, 1.25 * max(peak, (512 * 4000) ** -0.5))   # the base curve stays visible
        ax.set_title(f"peak at step {w}: lr = (d_model·warmup)^-0.5 = {peak:.2e}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        plt.show()

    # Static book: warm-ups doubling from 500 to 16,000 (every step of 500 in JupyterLab).
    warmups = sorted({500, 1000, 2000, 4000, 8000, 16_000, default_warmup})
    return live_view(draw, [warmup, width], title="Noam learning-rate schedule", grid={warmup: warmups})
