"""Widget for the scaling chapter: a d_k slider over logits, softmax output and gradient norm."""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from qkv.scaling import grad_norm_to_q, random_logits
from qkv.widgets.live import live_view

D_KS = (4, 16, 64, 256, 1024)


def dk_explorer(default_dk: int = 256, n_keys: int = 16, seed: int = 0) -> widgets.Widget:
    """Slide d_k; see three views of one attention layer, unscaled (red) vs scaled by 1/√d_k (blue).

    Top left: histogram of the logits q·k (their spread grows like √d_k unless scaled).
    Top right: median gradient norm reaching q (log scale), which collapses when the softmax saturates.
    Bottom: the softmax weights of a typical query over ``n_keys`` keys (one-hot when saturated).
    """
    if default_dk not in D_KS:
        raise ValueError(f"default_dk must be one of {D_KS}, got {default_dk}")
    slider = widgets.SelectionSlider(options=list(D_KS), value=default_dk, description="d_k",
                                     continuous_update=False)

    def draw():
        d_k = slider.value
        raw = random_logits(d_k, scaled=False, n_keys=n_keys, seed=seed)
        scaled = random_logits(d_k, scaled=True, n_keys=n_keys, seed=seed)
        # Show a typical query: the one whose unscaled max weight is the median over all queries.
        max_raw = torch.softmax(raw, -1).amax(-1)
        i = int((max_raw - max_raw.median()).abs().argmin())
        p_raw, p_scaled = torch.softmax(raw[i], -1), torch.softmax(scaled[i], -1)
        g_raw = grad_norm_to_q(d_k, scaled=False, n_keys=n_keys, seed=seed)
        g_scaled = grad_norm_to_q(d_k, scaled=True, n_keys=n_keys, seed=seed)
        fig = plt.figure(figsize=(8, 6))
        grid = fig.add_gridspec(2, 3)
        ax_h, ax_g, ax_p = fig.add_subplot(grid[0, :2]), fig.add_subplot(grid[0, 2]), fig.add_subplot(grid[1, :])
        bins = torch.linspace(-4 * d_k ** 0.5, 4 * d_k ** 0.5, 60).numpy()
        ax_h.hist(raw.flatten().numpy(), bins=bins, color="tab:red", alpha=0.6, label=f"q·k (std {raw.std():.1f})")
        ax_h.hist(scaled.flatten().numpy(), bins=bins, color="tab:blue", alpha=0.6,
                  label=f"q·k/√d_k (std {scaled.std():.2f})")
        ax_h.set_title(f"logits, d_k = {d_k}")
        ax_h.set_xlabel("logit")
        ax_h.legend(fontsize=9)
        ax_g.bar(["unscaled", "scaled"], [g_raw, g_scaled], color=["tab:red", "tab:blue"])
        ax_g.set_yscale("log")
        ax_g.set_ylim(1e-4, 1e2)
        ax_g.set_title(f"median ‖∂L/∂q‖\n{g_raw:.2g} vs {g_scaled:.2g}")
        idx = torch.arange(n_keys).numpy()
        ax_p.bar(idx - 0.2, p_raw.numpy(), width=0.4, color="tab:red", label=f"unscaled (max {p_raw.max():.2f})")
        ax_p.bar(idx + 0.2, p_scaled.numpy(), width=0.4, color="tab:blue", label=f"scaled (max {p_scaled.max():.2f})")
        ax_p.set_ylim(0, 1)
        ax_p.set_xticks(idx)
        ax_p.set_xlabel("key")
        ax_p.set_title(f"softmax weights of a typical query (median max weight) over {n_keys} keys")
        ax_p.legend(fontsize=9)
        fig.tight_layout()
        plt.show()

    return live_view(draw, [slider], title="Logits, gradient norm and softmax weights, unscaled and scaled by 1/√d_k")
