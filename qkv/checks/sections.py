"""The book sections that diagnoses point to, with the key terms each section must explain.

A diagnosis is worth a pointer only if the section it points to explains the thing it
names: the mask-polarity messages point to the section that states PyTorch's True/False
conventions, dividing by d_k to the scaling chapter's derivation. ``tests/test_diagnoses_rereads.py``
checks every section here against the chapter page: the heading exists and the section's
text contains every key term. A chapter's per-function ``REREAD`` (what ``qkv check``
shows for any failure of that function) stays in the chapter's checks module.
"""

from __future__ import annotations

from qkv.checks.registry import Reread

# attention
ATTENTION_STEPS = Reread("attention", "How is attention computed, step by step?", ("score", "softmax", "K.T"))
STABLE_SOFTMAX = Reread("attention", "Softmax, temperature and the scale of the logits", ("maximum", "overflow"))
ADDITIVE = Reread("attention", "Dot-product or additive attention?", ("additive", "tanh"))

# scaling
WHY_SQRT_DK = Reread("scaling", "Why does attention divide the logits by √d_k?",
                     ("variance", "√d_k", "standard deviation"))
DERIVE_VARIANCE = Reread("scaling", "Derive it: why is the variance of q·k equal to d_k?",
                         ("variance", "Dividing by $d_k$", "overshoot"))
SOFTMAX_JACOBIAN = Reread("scaling", "What happens without the scaling?", ("Jacobian",))

# masking
MASK_POLARITY = Reread("masking", "How do you mask padding in self-attention?",
                       ("True", "allowed", "forbidden", "nn.MultiheadAttention"))
MASK_KEYS = Reread("masking", "How do you mask padding in self-attention?", ("key", "queries", "column"))
MINUS_INF = Reread("masking", "Why −inf and not 0? And is −1000 enough?", ("softmax", "finfo", "float16"))
CAUSAL = Reread("masking", "Why does the decoder need a causal mask?", ("subsequent positions", "diagonal"))
MASK_PLACES = Reread("masking", "Where do the masks go in the encoder, the decoder and cross-attention?",
                     ("cross-attention", "causal", "padding"))

# multihead
MHA_COMPUTED = Reread("multihead", "How is multi-head attention computed?", ("head", "transpose", "output projection"))
HEAD_DIM = Reread("multihead", "Why does each head work in a lower dimension?", ("d_model", "FLOPs"))

# mqa_gqa
GQA = Reread("mqa_gqa", "What are MQA and GQA?", ("group", "consecutive query heads"))
KV_CACHE = Reread("mqa_gqa", "What does the KV cache store, and does caching change the result?",
                  ("cache", "appending", "recomputing"))
KV_BYTES = Reread("mqa_gqa", "How big is the KV cache?", ("bytes", "2"))
MEAN_POOL = Reread("mqa_gqa", "How does an MHA checkpoint become GQA?", ("mean",))

# transformer
SINUSOIDS = Reread("transformer", "What positional encodings are there, and why sinusoids?", ("sin", "cos", "10000"))
ROPE = Reread("transformer", "What does RoPE do, and why does it give relative positions?", ("rotat", "m - n"))
DROPOUT = Reread("transformer", "Where does dropout go, and what happens at test time?", ("1 - p", "test time"))
NOAM = Reread("transformer", "What learning-rate schedule does the Transformer use?", ("warmup", "d_model"))
PRE_POST_LN = Reread("transformer", "Post-LN and Pre-LN blocks", ("Post-LN", "Pre-LN", "residual"))

# norms
NORM_AXES = Reread("norms", "Which axes do LayerNorm, BatchNorm and RMSNorm normalize over?",
                   ("LayerNorm", "BatchNorm", "axes"))
BATCHNORM = Reread("norms", "What are the pros and cons of BatchNorm?", ("running", "momentum"))
RMSNORM = Reread("norms", "What is RMSNorm and why do modern models use it?", ("RMSNorm", "mean"))
PADDING_IN_BN = Reread("norms", "Why do Transformers use LayerNorm rather than BatchNorm?", ("padding",))

# tokenization
BPE = Reread("tokenization", "How is BPE trained and applied?", ("merge", "pair"))
BYTE_LEVEL = Reread("tokenization", "What is byte-level BPE?", ("UTF-8", "bytes"))
WORDPIECE = Reread("tokenization", "How does WordPiece differ from BPE?", ("##", "longest"))

# bert
MLM = Reread("bert", "Why mask 15% of the tokens, and why the 80/10/10 rule?", ("80", "[MASK]", "random"))
WARMUP = Reread("bert", "What does warm-up do, and why does BERT need it?", ("warm-up", "linear"))
LONG_DOCS = Reread("bert", "How does BERT handle documents longer than 512 tokens?", ("stride", "window"))
POOLING = Reread("bert", "What is [CLS] for, and is it a good sentence vector?", ("[CLS]", "mean"))


def all_sections() -> dict[str, Reread]:
    """Every section constant of this module, by name."""
    return {name: value for name, value in globals().items() if isinstance(value, Reread)}
