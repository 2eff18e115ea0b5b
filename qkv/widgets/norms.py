"""Widgets for the norms chapter: which elements of a (B, T, C) batch share normalization statistics."""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle

from qkv.widgets.live import live_view

# What each choice normalizes over, for the element (b, t, c) marked with a star.
NORMS = {
    "LayerNorm": "mean and variance over the C channels of one token",
    "RMSNorm": "root mean square over the C channels of one token (no mean)",
    "BatchNorm": "mean and variance of one channel over every (sequence, position), padding included",
    "masked BatchNorm": "mean and variance of one channel over the real tokens of the batch",
}


def shared_elements(norm: str, lengths: tuple[int, ...], n_channels: int, b: int, t: int,
                    c: int) -> set[tuple[int, int, int]]:
    """The (b, t, c) indices whose values enter the statistics used to normalize element (b, t, c).

    ``lengths`` are the real lengths of the sequences; a batch is padded to max(lengths).

    Raises:
        ValueError: for an unknown ``norm``.
    """
    T = max(lengths)
    if norm in ("LayerNorm", "RMSNorm"):
        return {(b, t, k) for k in range(n_channels)}
    if norm == "BatchNorm":
        return {(i, j, c) for i in range(len(lengths)) for j in range(T)}
    if norm == "masked BatchNorm":
        return {(i, j, c) for i, n in enumerate(lengths) for j in range(n)}
    raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")


def draw_axes_picture(norm: str, lengths=(5, 3, 2), n_channels: int = 6, element=(1, 1, 2)):
    """One panel per sequence (rows = positions T, columns = channels C); shared elements in colour."""
    b0, t0, c0 = element
    T = max(lengths)
    shared = shared_elements(norm, lengths, n_channels, b0, t0, c0)
    fig, axes = plt.subplots(1, len(lengths), figsize=(3.2 * len(lengths), 3.4))
    for b, ax in enumerate(axes):
        for t in range(T):
            for c in range(n_channels):
                pad = t >= lengths[b]
                on = (b, t, c) in shared
                face = "tab:orange" if on else ("0.85" if pad else "white")
                ax.add_patch(Rectangle((c, T - 1 - t), 1, 1, facecolor=face, edgecolor="0.4",
                                       hatch="//" if pad else None, lw=0.8))
        if b == b0:
            ax.plot(c0 + 0.5, T - 1 - t0 + 0.5, marker="*", ms=16, color="black")
        ax.set_xlim(0, n_channels)
        ax.set_ylim(0, T)
        ax.set_aspect("equal")
        ax.set_xticks([c + 0.5 for c in range(n_channels)], [str(c) for c in range(n_channels)])
        ax.set_yticks([T - 1 - t + 0.5 for t in range(T)], [str(t) for t in range(T)])
        ax.set_xlabel("channel c")
        if b == 0:
            ax.set_ylabel("position t")
        ax.set_title(f"sequence b={b} (length {lengths[b]})")
    fig.suptitle(f"{norm}: the ★ is normalized with the {len(shared)} orange elements\n"
                 f"({NORMS[norm]}; hatched = padding)",
                 fontsize=11)
    fig.tight_layout()
    return fig


def axes_picture(default: str = "LayerNorm", lengths=(5, 3, 2), n_channels: int = 6) -> widgets.Widget:
    """Dropdown over LayerNorm / RMSNorm / BatchNorm / masked BatchNorm; redraws the (B, T, C) picture."""
    choose = widgets.Dropdown(options=list(NORMS), value=default, description="norm")

    def draw():
        draw_axes_picture(choose.value, lengths, n_channels)
        plt.show()

    return live_view(draw, [choose], title="Elements that share normalization statistics in a (B, T, C) batch")
