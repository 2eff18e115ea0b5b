"""Multi-head attention, written out: the demo implementations the multihead chapter runs.

Shapes: ``B`` batch, ``T`` (``T_q``/``T_k``) sequence length, ``d_model`` the model
width, ``H`` the number of heads and ``d_head = d_model / H`` the width of one head.
Weights follow ``torch.nn.MultiheadAttention``: ``in_proj_weight`` stacks
``[W_Q; W_K; W_V]`` as a (3·d_model, d_model) matrix applied as ``x @ W.T + b``.
Masks are boolean and ``True`` means "may attend" (as in the attention chapter;
note that ``nn.MultiheadAttention``'s own ``attn_mask`` uses the opposite polarity).
"""

from __future__ import annotations

import math

import torch

from qkv.attention import softmax


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, T, d_model) → (B, H, T, d_head): head h owns features h·d_head … (h+1)·d_head − 1.

    The reshape splits the feature axis into (H, d_head); the transpose then moves
    the head axis in front of T so that each head is an independent batch of
    (T, d_head) matrices. Reshaping straight to (B, H, T, d_head) would instead cut
    the flattened (T, d_model) block into H pieces and mix positions across heads.

    Raises:
        ValueError: if ``x`` is not 3-D or ``d_model`` is not divisible by ``n_heads``.
    """
    if x.dim() != 3:
        raise ValueError(f"expected x of shape (B, T, d_model), got {tuple(x.shape)}")
    B, T, d_model = x.shape
    if n_heads < 1 or d_model % n_heads:
        raise ValueError(f"d_model = {d_model} is not divisible by n_heads = {n_heads}")
    return x.reshape(B, T, n_heads, d_model // n_heads).transpose(1, 2)  # (B, H, T, d_head)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, d_head) → (B, T, H·d_head), the exact inverse of :func:`split_heads`.

    The transpose puts T back before H; ``reshape`` (not ``view``) then copies,
    because the transposed tensor is no longer contiguous.

    Raises:
        ValueError: if ``x`` is not 4-D.
    """
    if x.dim() != 4:
        raise ValueError(f"expected x of shape (B, H, T, d_head), got {tuple(x.shape)}")
    B, H, T, d_head = x.shape
    return x.transpose(1, 2).reshape(B, T, H * d_head)


def multi_head_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    in_proj_weight: torch.Tensor,
    in_proj_bias: torch.Tensor | None,
    out_proj_weight: torch.Tensor,
    out_proj_bias: torch.Tensor | None,
    n_heads: int,
    mask: torch.Tensor | None = None,
    *,
    average_weights: bool = True,
    head_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-head attention (Vaswani et al. 2017, §3.2.2), as ``nn.MultiheadAttention(batch_first=True)``.

    Args:
        query: (B, T_q, d_model); key, value: (B, T_k, d_model).
        in_proj_weight: (3·d_model, d_model), rows [W_Q; W_K; W_V]; in_proj_bias: (3·d_model,) or None.
        out_proj_weight: (d_model, d_model); out_proj_bias: (d_model,) or None.
        n_heads: H; must divide d_model.
        mask: optional bool broadcastable to (B, T_q, T_k), the same for every head; True = may attend.
        average_weights: return weights averaged over heads (B, T_q, T_k) if True, else per head (B, H, T_q, T_k).
        head_mask: optional (H,) multipliers on each head's output before the output
            projection (0 removes a head: used for head ablation).

    Returns:
        output (B, T_q, d_model) and attention weights (see ``average_weights``).

    Raises:
        ValueError: on inconsistent shapes or when n_heads does not divide d_model.
    """
    if query.dim() != 3 or key.dim() != 3 or value.dim() != 3:
        raise ValueError(f"expected query, key, value of shape (B, T, d_model), got "
                         f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")
    d_model = query.shape[-1]
    if in_proj_weight.shape != (3 * d_model, d_model):
        raise ValueError(f"expected in_proj_weight of shape {(3 * d_model, d_model)}, "
                         f"got {tuple(in_proj_weight.shape)}")
    if key.shape[1] != value.shape[1]:
        raise ValueError("key and value must have the same length T_k; "
                         f"got {tuple(key.shape)} and {tuple(value.shape)}")
    w_q, w_k, w_v = in_proj_weight.chunk(3)
    b_q, b_k, b_v = (None, None, None) if in_proj_bias is None else in_proj_bias.chunk(3)
    q = split_heads(torch.nn.functional.linear(query, w_q, b_q), n_heads)  # (B, H, T_q, d_head)
    k = split_heads(torch.nn.functional.linear(key, w_k, b_k), n_heads)    # (B, H, T_k, d_head)
    v = split_heads(torch.nn.functional.linear(value, w_v, b_v), n_heads)  # (B, H, T_k, d_head)
    # Each head scales by its own width: q and k have d_head components, not d_model.
    logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])             # (B, H, T_q, T_k)
    if mask is not None:
        logits = logits.masked_fill(~mask.bool().unsqueeze(-3), float("-inf"))  # same mask for every head
    weights = softmax(logits, dim=-1)
    heads = weights @ v                                                    # (B, H, T_q, d_head)
    if head_mask is not None:
        heads = heads * head_mask.to(heads.dtype)[:, None, None]
    output = torch.nn.functional.linear(merge_heads(heads), out_proj_weight, out_proj_bias)
    return output, (weights.mean(dim=1) if average_weights else weights)


# ----------------------------------------------------------------------------- cost


def attention_cost(T: int, d_model: int, n_heads: int, d_head: int | None = None) -> dict[str, int]:
    """FLOPs, parameters and attention-matrix size of one self-attention layer on one sequence.

    FLOPs count the matrix products only, 2 per multiply-add (the convention of
    ``torch.utils.flop_counter``); softmax and scaling are O(H·T²) element-wise work.
    Projections map d_model → H·d_head (Q, K, V) and H·d_head → d_model (output).

    Returns a dict with ``proj_flops`` (Q, K, V and output projections),
    ``attn_flops`` (QKᵀ and weights·V), ``flops`` (their sum), ``params`` (weights
    and biases of the four projections) and ``attn_entries`` (H·T² scores to store
    and softmax).

    Raises:
        ValueError: if d_head is None and n_heads does not divide d_model.
    """
    if d_head is None:
        if d_model % n_heads:
            raise ValueError(f"d_model = {d_model} is not divisible by n_heads = {n_heads}; pass d_head")
        d_head = d_model // n_heads
    inner = n_heads * d_head  # width of the concatenated heads
    proj_flops = 2 * T * d_model * inner * 3 + 2 * T * inner * d_model
    attn_flops = 2 * n_heads * T * T * d_head * 2
    params = 3 * (d_model * inner + inner) + inner * d_model + d_model
    return {"proj_flops": proj_flops, "attn_flops": attn_flops, "flops": proj_flops + attn_flops,
            "params": params, "attn_entries": n_heads * T * T}


def attention_flops(T: int, d_model: int, n_heads: int, d_head: int | None = None) -> int:
    """Matrix-product FLOPs of one self-attention layer on a sequence of length T (see :func:`attention_cost`)."""
    return attention_cost(T, d_model, n_heads, d_head)["flops"]


# ----------------------------------------------------------------------------- a toy model to ablate


class ToyAttentionModel(torch.nn.Module):
    """Token + position embeddings → one multi-head attention layer (+ residual) → vocabulary logits.

    Small enough to train in a few seconds on a CPU; used to measure what removing
    heads costs. Input (B, T) token ids → logits (B, T, vocab).
    """

    def __init__(self, vocab: int, max_len: int, d_model: int, n_heads: int, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.n_heads = n_heads
        self.tok = torch.nn.Embedding(vocab, d_model)
        self.pos = torch.nn.Embedding(max_len, d_model)
        self.attn = torch.nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.head = torch.nn.Linear(d_model, vocab)

    def forward(self, tokens: torch.Tensor, head_mask: torch.Tensor | None = None) -> torch.Tensor:
        T = tokens.shape[1]
        x = self.tok(tokens) + self.pos(torch.arange(T))
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        a = self.attn
        y, _ = multi_head_attention(x, x, x, a.in_proj_weight, a.in_proj_bias, a.out_proj.weight, a.out_proj.bias,
                                    self.n_heads, causal, head_mask=head_mask)
        return self.head(x + y)


def previous_token_batch(batch: int, T: int, vocab: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random tokens (batch, T) and targets: the token one position earlier (position 0 has no target: -100)."""
    tokens = torch.randint(vocab, (batch, T), generator=gen)
    targets = torch.full_like(tokens, -100)
    targets[:, 1:] = tokens[:, :-1]
    return tokens, targets


def train_previous_token_model(n_heads: int = 8, d_model: int = 32, vocab: int = 16, T: int = 12,
                               steps: int = 300, seed: int = 0) -> ToyAttentionModel:
    """Train a ToyAttentionModel to copy the previous token (a task one head can solve). Seconds on a CPU."""
    model = ToyAttentionModel(vocab, T, d_model, n_heads, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        tokens, targets = previous_token_batch(64, T, vocab, gen)
        loss = torch.nn.functional.cross_entropy(model(tokens).flatten(0, 1), targets.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: ToyAttentionModel, head_mask: torch.Tensor | None = None, n: int = 512, seed: int = 1) -> float:
    """Previous-token accuracy on n fresh sequences, with some heads removed by ``head_mask`` (H,)."""
    gen = torch.Generator().manual_seed(seed)
    tokens, targets = previous_token_batch(n, model.pos.num_embeddings, model.tok.num_embeddings, gen)
    pred = model(tokens, head_mask).argmax(-1)
    keep = targets != -100
    return (pred[keep] == targets[keep]).float().mean().item()
