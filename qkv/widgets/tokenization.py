"""Widgets for the tokenization chapter: step through BPE merges; type text and see its tokens."""

from __future__ import annotations

from collections.abc import Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch

from qkv.bpe import build_vocab, encode, pretokenize, token_strings, train_bpe
from qkv.widgets.live import live_view

# A small corpus whose words share stems and suffixes, so the first merges are easy to read.
STEP_CORPUS = ("low low low lower lowest newer newest newest widest wider new new lower "
               "slow slower slowest show shower showing low new")

_COLORS = ["#cfe2f3", "#d9ead3", "#fff2cc", "#f4cccc", "#d9d2e9", "#fce5cd", "#d0e0e3", "#ead1dc"]


def _visible(token: str) -> str:
    # Spaces and newlines are real bytes of a token; show them instead of drawing nothing.
    return token.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥")


def plot_tokens(lines: Sequence[Sequence[str]], ax=None, *, title: str | None = None, max_cols: int = 72):
    """Draw each line of token strings as adjacent colored boxes (monospace, wrapped at ``max_cols``)."""
    ax = ax or plt.gca()
    row, col = 0, 0
    for tokens in lines:
        for k, tok in enumerate(tokens):
            text = _visible(tok)
            width = max(len(text), 1)
            if col + width > max_cols and col > 0:
                row, col = row + 1, 0
            ax.add_patch(FancyBboxPatch((col + 0.08, -row - 0.8), width - 0.16, 0.7, boxstyle="round,pad=0.02",
                                        fc=_COLORS[k % len(_COLORS)], ec="#666666", lw=0.6))
            ax.text(col + width / 2, -row - 0.45, text, ha="center", va="center", family="monospace", fontsize=10)
            col += width
        row, col = row + 1, 0
    ax.set_xlim(-0.2, max_cols + 0.2)
    ax.set_ylim(-row - 0.1, 0.1)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10, loc="left")
    return ax


def merge_stepper(corpus: str = STEP_CORPUS, n_merges: int = 20, default_step: int = 6) -> widgets.Widget:
    """Slider over the merge number k: the corpus's distinct pre-tokens segmented with the first k merges.

    The merges are learned once by :func:`qkv.bpe.train_bpe` (byte-level, GPT-2
    pre-tokenization, ties to the greatest byte pair); step k applies ``merges[:k]``.
    """
    vocab, merges = train_bpe(corpus, 256 + n_merges)
    words = list(dict.fromkeys(pretokenize(corpus)))  # distinct pre-tokens: the leading space belongs to the word
    step = widgets.IntSlider(value=min(default_step, len(merges)), min=0, max=len(merges), description="merges",
                             continuous_update=False)

    def draw():
        k = step.value
        lines = [token_strings(encode(w, merges[:k]), vocab) for w in words]
        n_tokens = len(encode(corpus, merges[:k]))
        fig, (ax, side) = plt.subplots(1, 2, figsize=(9, 0.36 * len(words) + 0.9),
                                       gridspec_kw={"width_ratios": [1.1, 1]})
        plot_tokens(lines, ax, max_cols=11, title=f"after {k} merges: corpus = {n_tokens} tokens "
                                                  f"({len(corpus.encode())} bytes)")
        side.axis("off")
        side.text(0, 1, "merges in learned order:\n" + "\n".join(
            f"{i:>2}. {vocab[a].decode()!r} + {vocab[b].decode()!r} -> {vocab[256 + i].decode()!r}"
            for i, (a, b) in enumerate(merges[:k])), family="monospace", fontsize=9, va="top")
        plt.show()

    return live_view(draw, [step], title="BPE merges applied to a small corpus")


def tokenizer_playground(merges, special_tokens: Sequence[str] = (),
                         default_text: str = "Tokenizers split unbelievably long words into pieces: 1234567!",
                         label: str = "BPE") -> widgets.Widget:
    """Type text, see its tokens as colored boxes and the count of tokens per character."""
    vocab = build_vocab(merges, special_tokens)
    box = widgets.Text(value=default_text, description="text", layout=widgets.Layout(width="90%"),
                       continuous_update=False)

    def draw():
        try:
            ids = encode(box.value, merges, special_tokens)
            tokens = token_strings(ids, vocab)
            title = (f"{label}: {len(ids)} tokens for {len(box.value)} characters "
                     f"({len(ids) / max(len(box.value), 1):.2f} per character)")
        except ValueError as err:
            tokens, title = [], f"cannot encode: {err}"
        fig, ax = plt.subplots(figsize=(9, 1.3 + 0.35 * (sum(len(_visible(t)) for t in tokens) // 72)))
        plot_tokens([tokens], ax, title=title)
        plt.show()
        print("ids (this course's numbering: bytes are 0-255):", ids if tokens else [])

    def static() -> str:
        # Free text cannot be pre-rendered: the static book encodes it in the page with a
        # JavaScript port of qkv.bpe.encode (qkv-bpe.js), checked against it on a corpus.
        return playground_static_html(draw, box, merges, special_tokens, label)

    return live_view(draw, [box], title=f"{label} tokenizer playground", static=static)


def playground_static_html(draw, box: widgets.Text, merges, special_tokens: Sequence[str], label: str) -> str:
    """The playground for the static book: a text box whose text is tokenized in the page.

    The merges travel in the page as little-endian integers (base64; ``[a0, b0, a1, b1, ...]``,
    16-bit when every id fits); ``book/_ext/static_widgets/qkv-bpe.js`` replays them exactly as
    :func:`qkv.bpe.encode` does and draws the tokens as coloured boxes, with the same title and
    id list as the live widget. The default figure rendered here is the view without JavaScript.
    """
    import base64

    import numpy as np

    from qkv.widgets.static_html import esc, json_script, new_id, recorded_view_html

    flat = np.asarray(merges, dtype=np.int64).reshape(-1)
    dtype = "<u2" if flat.size == 0 or flat.max() < 2**16 else "<u4"
    uid = new_id("qkv-bpe")
    config = {"label": label, "specials": list(dict.fromkeys(special_tokens)), "colors": _COLORS,
              "n_merges": len(merges), "merges_dtype": "u16" if dtype == "<u2" else "u32",
              "merges": base64.b64encode(flat.astype(dtype).tobytes()).decode("ascii")}
    fallback = recorded_view_html(draw, f"{label} tokens of the default text")
    return (f'<div class="qkv-static-widget" id="{uid}" data-qkv-widget="bpe" role="group" '
            f'aria-label="{esc(label)} tokenizer playground"><div class="qkv-controls">'
            '<div class="qkv-control qkv-text-control">'
            f'<label for="{uid}-text">{esc(box.description)}</label><input type="text" id="{uid}-text" '
            f'data-qkv-field="text" value="{esc(box.value)}" spellcheck="false" autocomplete="off"></div></div>'
            '<p class="qkv-static-note">Tokenized as you type, in this page, by a JavaScript copy of the '
            "course's encoder (<code>qkv.bpe.encode</code>) with the same merges.</p>"
            f'<div class="qkv-frame" aria-live="polite">{fallback}</div>{json_script(config)}</div>')
