"""A Transformer encoder block written out: multi-head self-attention, the FFN, residuals, LayerNorm.

Parameters travel in a plain dict whose names and shapes follow torch's modules,
so a block can be compared with ``nn.MultiheadAttention`` / ``nn.LayerNorm`` /
``nn.Linear`` (or ``nn.TransformerEncoderLayer``) holding copied weights:

| key | shape | torch counterpart |
|---|---|---|
| ``in_proj_weight``, ``in_proj_bias`` | (3d, d), (3d,) | ``MultiheadAttention`` (rows: W_Q, W_K, W_V) |
| ``out_proj_weight``, ``out_proj_bias`` | (d, d), (d,) | ``MultiheadAttention.out_proj`` |
| ``ln1_weight``, ``ln1_bias`` | (d,), (d,) | LayerNorm around the attention sublayer |
| ``ln2_weight``, ``ln2_bias`` | (d,), (d,) | LayerNorm around the FFN sublayer |
| ``ff1_weight``, ``ff1_bias`` | (d_ff, d), (d_ff,) | first ``Linear`` of the FFN |
| ``ff2_weight``, ``ff2_bias`` | (d, d_ff), (d,) | second ``Linear`` of the FFN |

Linear weights are stored (out, in) as in ``nn.Linear``: y = x Wᵀ + b.
Inputs x are (B, T, d). No dropout: these are the blocks in eval mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qkv.attention import scaled_dot_product_attention

PARAM_SHAPES = {
    "in_proj_weight": ("3d", "d"), "in_proj_bias": ("3d",),
    "out_proj_weight": ("d", "d"), "out_proj_bias": ("d",),
    "ln1_weight": ("d",), "ln1_bias": ("d",), "ln2_weight": ("d",), "ln2_bias": ("d",),
    "ff1_weight": ("d_ff", "d"), "ff1_bias": ("d_ff",), "ff2_weight": ("d", "d_ff"), "ff2_bias": ("d",),
}


def make_block_params(d_model: int, n_heads: int, d_ff: int, *, seed: int = 0,
                      dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random block parameters (fixed seed) in the dict convention above.

    LayerNorm gains and all biases are random too (not 1 and 0), so that a block
    which skips one of them gives a visibly different answer.
    """
    if d_model % n_heads:
        raise ValueError(f"d_model = {d_model} must be divisible by n_heads = {n_heads}")
    gen = torch.Generator().manual_seed(seed)
    dims = {"d": d_model, "3d": 3 * d_model, "d_ff": d_ff}
    params = {}
    for name, shape in PARAM_SHAPES.items():
        size = tuple(dims[s] for s in shape)
        if name.startswith("ln") and name.endswith("weight"):
            t = 1.0 + 0.2 * torch.randn(size, generator=gen, dtype=torch.float64)
        elif len(size) == 2:  # fan-in scaling keeps activations O(1)
            t = torch.randn(size, generator=gen, dtype=torch.float64) / size[1] ** 0.5
        else:
            t = 0.1 * torch.randn(size, generator=gen, dtype=torch.float64)
        params[name] = t.to(dtype)
    return params


def _check_x(x: torch.Tensor, params: dict[str, torch.Tensor], n_heads: int) -> None:
    missing = sorted(set(PARAM_SHAPES) - set(params))
    if missing:
        raise ValueError(f"params is missing {missing}")
    d = params["out_proj_weight"].shape[0]
    if x.dim() != 3 or x.shape[-1] != d:
        raise ValueError(f"expected x of shape (B, T, {d}), got {tuple(x.shape)}")
    if d % n_heads:
        raise ValueError(f"d_model = {d} must be divisible by n_heads = {n_heads}")


def multi_head_self_attention(x: torch.Tensor, params: dict[str, torch.Tensor], n_heads: int,
                              mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, d) → (B, T, d): the attention sublayer (Vaswani §3.2.2) without residual or norm."""
    b, t, d = x.shape
    q, k, v = F.linear(x, params["in_proj_weight"], params["in_proj_bias"]).chunk(3, dim=-1)  # 3 × (B, T, d)
    q, k, v = (z.view(b, t, n_heads, d // n_heads).transpose(1, 2) for z in (q, k, v))       # (B, h, T, d_head)
    heads, _ = scaled_dot_product_attention(q, k, v, mask)
    return F.linear(heads.transpose(1, 2).reshape(b, t, d), params["out_proj_weight"], params["out_proj_bias"])


def feed_forward(x: torch.Tensor, params: dict[str, torch.Tensor], activation=F.relu) -> torch.Tensor:
    """FFN(x) = max(0, x W1ᵀ + b1) W2ᵀ + b2 (Vaswani §3.3), applied to every position separately."""
    return F.linear(activation(F.linear(x, params["ff1_weight"], params["ff1_bias"])),
                    params["ff2_weight"], params["ff2_bias"])


def _ln(x: torch.Tensor, params: dict[str, torch.Tensor], which: int) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], params[f"ln{which}_weight"], params[f"ln{which}_bias"], eps=1e-5)


def post_ln_block(x: torch.Tensor, params: dict[str, torch.Tensor], n_heads: int,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """The original block (Vaswani §3.1): x = LN1(x + Attn(x)); x = LN2(x + FFN(x)).

    Matches ``nn.TransformerEncoderLayer(norm_first=False)`` in eval mode.
    Raises ValueError if x is not (B, T, d) or params is incomplete.
    """
    _check_x(x, params, n_heads)
    x = _ln(x + multi_head_self_attention(x, params, n_heads, mask), params, 1)
    return _ln(x + feed_forward(x, params), params, 2)


def pre_ln_block(x: torch.Tensor, params: dict[str, torch.Tensor], n_heads: int,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """The Pre-LN block (Xiong et al. 2020; GPT-2): x = x + Attn(LN1(x)); x = x + FFN(LN2(x)).

    The residual path carries x untouched from input to output, which is why
    Pre-LN trains stably without warm-up. Matches ``nn.TransformerEncoderLayer(norm_first=True)``.
    Raises ValueError if x is not (B, T, d) or params is incomplete.
    """
    _check_x(x, params, n_heads)
    x = x + multi_head_self_attention(_ln(x, params, 1), params, n_heads, mask)
    return x + feed_forward(_ln(x, params, 2), params)


def torch_encoder_layer(params: dict[str, torch.Tensor], n_heads: int, *,
                        norm_first: bool) -> torch.nn.TransformerEncoderLayer:
    """An ``nn.TransformerEncoderLayer`` (ReLU, no dropout, batch_first, eval mode) holding copies of ``params``."""
    d_ff, d = params["ff1_weight"].shape
    layer = torch.nn.TransformerEncoderLayer(d, n_heads, d_ff, dropout=0.0, batch_first=True, norm_first=norm_first,
                                             dtype=params["ff1_weight"].dtype)
    with torch.no_grad():
        layer.self_attn.in_proj_weight.copy_(params["in_proj_weight"])
        layer.self_attn.in_proj_bias.copy_(params["in_proj_bias"])
        layer.self_attn.out_proj.weight.copy_(params["out_proj_weight"])
        layer.self_attn.out_proj.bias.copy_(params["out_proj_bias"])
        for i, norm in ((1, layer.norm1), (2, layer.norm2)):
            norm.weight.copy_(params[f"ln{i}_weight"])
            norm.bias.copy_(params[f"ln{i}_bias"])
        for i, lin in ((1, layer.linear1), (2, layer.linear2)):
            lin.weight.copy_(params[f"ff{i}_weight"])
            lin.bias.copy_(params[f"ff{i}_bias"])
    return layer.eval()
