"""Widgets for the BERT chapter: an MLM masking playground."""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from qkv.bert import mlm_categories, mlm_mask
from qkv.widgets.live import live_view

SENTENCE = (
    "the quick brown fox jumps over the lazy dog while the farmer sleeps under an old oak tree "
    "and the cows walk slowly back to the barn before the rain starts to fall on the quiet valley"
)
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
COLORS = {"unselected": "#e8e8e8", "mask": "#d62728", "random": "#ff7f0e", "kept": "#2ca02c", "special": "#9ecae1"}


def toy_vocab(sentence: str = SENTENCE) -> list[str]:
    """Special tokens, then the sentence's words in first-seen order, then a few extra words for random draws."""
    words = list(dict.fromkeys(sentence.split()))
    return SPECIALS + words + ["piano", "seven", "blue", "quantum", "river", "yesterday"]


def encode(sentence: str = SENTENCE) -> tuple[torch.Tensor, list[str]]:
    """([CLS] words [SEP]) as a (T,) id tensor, and the vocabulary."""
    vocab = toy_vocab(sentence)
    index = {w: i for i, w in enumerate(vocab)}
    ids = [index["[CLS]"]] + [index[w] for w in sentence.split()] + [index["[SEP]"]]
    return torch.tensor(ids), vocab


def draw_masking(rate: float, seed: int, sentence: str = SENTENCE, per_row: int = 10, ax=None):
    """Draw the sentence with each token's MLM fate; return the per-category counts."""
    ids, vocab = encode(sentence)
    specials = [vocab.index(t) for t in ("[CLS]", "[SEP]", "[UNK]", "[MASK]")]
    gen = torch.Generator().manual_seed(seed)
    corrupted, labels = mlm_mask(ids, specials, vocab.index("[PAD]"), vocab.index("[MASK]"), len(vocab), rate, gen)
    cats = mlm_categories(ids, corrupted, labels, vocab.index("[MASK]"))
    cats = ["special" if i in specials else c for i, c in zip(ids.tolist(), cats)]
    n_rows = -(-len(ids) // per_row)
    ax = ax or plt.gca()
    for k, (orig, new, cat) in enumerate(zip(ids.tolist(), corrupted.tolist(), cats)):
        r, c = divmod(k, per_row)
        ax.add_patch(plt.Rectangle((c, -r), 0.95, 0.9, color=COLORS[cat]))
        text = vocab[orig] if cat in ("unselected", "special", "kept") else f"{vocab[new]}\n({vocab[orig]})"
        ax.text(c + 0.475, -r + 0.45, text, ha="center", va="center", fontsize=10,
                color="white" if cat in ("mask", "random") else "black")
    ax.set_xlim(0, per_row)
    ax.set_ylim(-n_rows + 0.9, 1)
    ax.axis("off")
    counts = {k: cats.count(k) for k in ("mask", "random", "kept", "unselected", "special")}
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLORS[k]) for k in counts]
    ax.legend(handles, [f"{k}: {n}" for k, n in counts.items()], loc="upper center", bbox_to_anchor=(0.5, 0.0),
              ncol=5, frameon=False, fontsize=10)
    return counts


def masking_playground(default_rate: float = 0.15, default_seed: int = 35) -> widgets.Widget:
    """Sliders for the selection rate and the seed; the sentence shows [MASK] (red),
    random replacements (orange, original in brackets), kept-but-predicted tokens
    (green) and special tokens (blue), which are never selected."""
    rate = widgets.FloatSlider(value=default_rate, min=0.0, max=0.6, step=0.05, description="rate",
                               continuous_update=False, readout_format=".2f")
    seed = widgets.IntSlider(value=default_seed, min=0, max=50, description="seed", continuous_update=False)

    def draw():
        fig, ax = plt.subplots(figsize=(9, 4.4))
        counts = draw_masking(rate.value, seed.value, ax=ax)
        selected = counts["mask"] + counts["random"] + counts["kept"]
        ax.set_title(f"rate = {rate.value:.2f}, seed = {seed.value}: {selected} of {selected + counts['unselected']} "
                     "ordinary tokens selected\n(the loss is computed at exactly these)", fontsize=11)
        fig.tight_layout()
        plt.show()

    # Static book: every rate, three seeds (the seed only re-draws which tokens are picked).
    return live_view(draw, [rate, seed], title="BERT's masking of a sentence",
                     grid={seed: sorted({0, default_seed, 50})})
