"""The capstone's GPT built from ``torch.nn`` modules and torch built-ins, sharing no code with qkv.gpt.

Two jobs: it is the *oracle* of the capstone checks (qkv.checks.capstone), and the
``torch.nn`` baseline that benchmarks/capstone.py times the course's pieces against. So it
uses what torch provides: ``nn.Embedding``, ``nn.RMSNorm``, ``nn.Linear``,
``F.scaled_dot_product_attention`` with ``enable_gqa``, and rotary embeddings by complex
multiplication, (x_2i + i·x_2i+1)·e^{i·m·θ_i} (RoFormer, Su et al. 2021, §3.4.2, eq. 34 is
the same rotation written with sines and cosines).

Weights are loaded from, and exported to, the plain-data ``params`` dict of qkv.gpt
(matrices there are (d_in, d_out); ``nn.Linear`` stores the transpose).

Ablation switches (all on by default) give the wrong variants a check recognizes:
``rope``, ``causal``, ``scale`` (the 1/√d_head of attention), ``grouped_kv`` (False tiles the
KV heads 0,1,0,1,… instead of 0,0,1,1,…), ``final_norm``, ``pre_ln`` (False: Post-LN).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rope_complex(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate pairs (x[..., 2i], x[..., 2i+1]) at position m by m·base^(-2i/d), as complex numbers.

    x: (..., T, d), positions: (T,). Computed in float64, returned in x's dtype.
    """
    d = x.shape[-1]
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # (d/2,)
    angles = positions.to(torch.float64)[:, None] * theta  # (T, d/2)
    rotation = torch.polar(torch.ones_like(angles), angles)  # e^{i m θ}
    pairs = torch.view_as_complex(x.to(torch.float64).reshape(*x.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(pairs * rotation).flatten(-2).to(x.dtype)


def _to_layout(name: str, t: torch.Tensor) -> torch.Tensor:
    """nn.Linear's (out, in) → qkv.gpt's (in, out); embeddings and gains unchanged. A detached copy."""
    return (t.T if t.dim() == 2 and name != "tok_emb" else t).detach().contiguous().clone()


def _from_layout(name: str, t: torch.Tensor) -> torch.Tensor:
    """qkv.gpt's (in, out) → nn.Linear's (out, in): the inverse of :func:`_to_layout` (a copy)."""
    return (t.T if t.dim() == 2 and name != "tok_emb" else t).contiguous().clone()


class Block(nn.Module):
    def __init__(self, config: dict, dtype: torch.dtype):
        super().__init__()
        d, d_ff = config["d_model"], config["d_ff"]
        d_head = d // config["n_heads"]
        kw = {"bias": False, "dtype": dtype}
        self.attn_norm = nn.RMSNorm(d, eps=config["norm_eps"], dtype=dtype)
        self.wq = nn.Linear(d, config["n_heads"] * d_head, **kw)
        self.wk = nn.Linear(d, config["n_kv_heads"] * d_head, **kw)
        self.wv = nn.Linear(d, config["n_kv_heads"] * d_head, **kw)
        self.wo = nn.Linear(config["n_heads"] * d_head, d, **kw)
        self.mlp_norm = nn.RMSNorm(d, eps=config["norm_eps"], dtype=dtype)
        self.w1 = nn.Linear(d, d_ff, **kw)
        self.w2 = nn.Linear(d_ff, d, **kw)


class TorchGPT(nn.Module):
    """The capstone model in ``torch.nn``. ``forward(tokens, cache=None)`` → (logits, cache) like qkv.gpt."""

    LINEARS = ("wq", "wk", "wv", "wo", "w1", "w2")

    def __init__(self, config: dict, dtype: torch.dtype = torch.float32, *, rope: bool = True, causal: bool = True,
                 scale: bool = True, grouped_kv: bool = True, final_norm: bool = True, pre_ln: bool = True):
        super().__init__()
        self.config = dict(config)
        self.switches = {"rope": rope, "causal": causal, "scale": scale, "grouped_kv": grouped_kv,
                         "final_norm": final_norm, "pre_ln": pre_ln}
        self.tok_emb = nn.Embedding(config["vocab_size"], config["d_model"], dtype=dtype)
        self.blocks = nn.ModuleList(Block(config, dtype) for _ in range(config["n_layers"]))
        self.final_norm = nn.RMSNorm(config["d_model"], eps=config["norm_eps"], dtype=dtype)

    @classmethod
    def from_params(cls, params: dict[str, torch.Tensor], config: dict, dtype: torch.dtype | None = None,
                    **switches) -> TorchGPT:
        """A TorchGPT holding copies of ``params`` (in ``dtype``, default the params' dtype)."""
        dtype = dtype or params["tok_emb"].dtype
        model = cls(config, dtype, **switches)
        model.load_params(params)
        return model

    @torch.no_grad()
    def load_params(self, params: dict[str, torch.Tensor]) -> None:
        """Copy qkv.gpt's params in (matrices transposed into nn.Linear's (out, in) layout)."""
        for name, target in self._targets().items():
            target.copy_(_from_layout(name, params[name]))

    def to_params(self) -> dict[str, torch.Tensor]:
        """The weights as qkv.gpt's params dict (detached copies)."""
        return {name: _to_layout(name, t) for name, t in self._targets().items()}

    def grads(self) -> dict[str, torch.Tensor]:
        """The gradients after ``backward()``, in qkv.gpt's params layout."""
        return {name: _to_layout(name, t.grad) for name, t in self._targets().items()}

    def _targets(self) -> dict[str, torch.Tensor]:
        """qkv.gpt parameter name → this module's tensor."""
        out = {"tok_emb": self.tok_emb.weight}
        for i, block in enumerate(self.blocks):
            out[f"blocks.{i}.attn_norm"] = block.attn_norm.weight
            out[f"blocks.{i}.mlp_norm"] = block.mlp_norm.weight
            for name in self.LINEARS:
                out[f"blocks.{i}.{name}"] = getattr(block, name).weight
        out["final_norm"] = self.final_norm.weight
        return out

    def _attention(self, block: Block, h: torch.Tensor, cache_kv, past: int, start: int | None):
        c, s = self.config, self.switches
        b, t, _ = h.shape
        n_heads, n_kv = c["n_heads"], c["n_kv_heads"]
        d_head = c["d_model"] // n_heads
        first = past if start is None else start
        positions = torch.arange(first, first + t)
        q = block.wq(h).view(b, t, n_heads, d_head).transpose(1, 2)  # (B, H, T, d_h)
        k = block.wk(h).view(b, t, n_kv, d_head).transpose(1, 2)  # (B, H_kv, T, d_h)
        v = block.wv(h).view(b, t, n_kv, d_head).transpose(1, 2)
        if s["rope"]:
            q, k = rope_complex(q, positions, c["rope_base"]), rope_complex(k, positions, c["rope_base"])
        if cache_kv is not None:
            k, v = torch.cat([cache_kv[0], k], dim=2), torch.cat([cache_kv[1], v], dim=2)
        keys, values, gqa = k, v, True
        if not s["grouped_kv"]:  # the tiling mistake: query head h paired with KV head h mod H_kv
            keys, values, gqa = k.repeat(1, n_heads // n_kv, 1, 1), v.repeat(1, n_heads // n_kv, 1, 1), False
        total = past + t
        allowed = torch.arange(total)[None, :] <= torch.arange(past, total)[:, None]  # (T, S + T)
        mask = allowed if s["causal"] else None
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=gqa,
                                             scale=None if s["scale"] else 1.0)
        return block.wo(out.transpose(1, 2).reshape(b, t, n_heads * d_head)), (k, v)

    def forward(self, tokens: torch.Tensor, cache=None, start: int | None = None):
        """tokens (B, T) int64 (continuing ``cache`` if given) → (logits (B, T, V), new cache).

        ``start`` is the position of the first token, by default the cache length; another value
        gives the mistake of a misplaced continuation (the mask still follows the cache)."""
        past = 0 if cache is None else cache[0][0].shape[2]
        x = self.tok_emb(tokens)
        new_cache = []
        for i, block in enumerate(self.blocks):
            layer_cache = None if cache is None else cache[i]
            if self.switches["pre_ln"]:
                out, kv = self._attention(block, block.attn_norm(x), layer_cache, past, start)
                x = x + out
                x = x + block.w2(F.gelu(block.w1(block.mlp_norm(x))))
            else:
                out, kv = self._attention(block, x, layer_cache, past, start)
                x = block.attn_norm(x + out)
                x = block.mlp_norm(x + block.w2(F.gelu(block.w1(x))))
            new_cache.append(kv)
        if self.switches["final_norm"]:
            x = self.final_norm(x)
        return F.linear(x, self.tok_emb.weight), new_cache  # tied output layer

    def loss(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy of tokens (B, T + 1)."""
        logits, _ = self(tokens[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))

    @torch.no_grad()
    def generate(self, prompt_ids: torch.Tensor, n: int, temperature: float = 0.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Full recomputation at every step (no cache): (B, T0) → (B, T0 + n)."""
        tokens = prompt_ids
        for _ in range(n):
            logits = self(tokens)[0][:, -1]
            if temperature == 0:
                new = logits.argmax(-1, keepdim=True)
            else:
                new = torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1, generator=generator)
            tokens = torch.cat([tokens, new], dim=1)
        return tokens


def adam_reference_step(params: dict[str, torch.Tensor], config: dict, tokens: torch.Tensor, lr: float,
                        state: dict | None = None, dtype: torch.dtype | None = None
                        ) -> tuple[dict[str, torch.Tensor], dict, float]:
    """One step of ``torch.optim.Adam`` on TorchGPT: the oracle of qkv.gpt.train_step.

    Runs in ``dtype`` (default: the params' dtype). Returns (new params, new state as plain data
    {"step", "m", "v"} in qkv.gpt's layout, the loss before the step).
    """
    model = TorchGPT.from_params(params, config, dtype)
    targets = model._targets()
    opt = torch.optim.Adam(list(targets.values()), lr=lr, betas=tuple(config["adam_betas"]), eps=config["adam_eps"])
    if state is not None and state["step"] > 0:
        for name, p in targets.items():
            opt.state[p] = {"step": torch.tensor(float(state["step"])),
                            "exp_avg": _from_layout(name, state["m"][name]).to(p.dtype),
                            "exp_avg_sq": _from_layout(name, state["v"][name]).to(p.dtype)}
    loss = model.loss(tokens)
    opt.zero_grad()
    loss.backward()
    opt.step()
    new_state = {"step": (0 if state is None else state["step"]) + 1,
                 "m": {name: _to_layout(name, opt.state[p]["exp_avg"]) for name, p in targets.items()},
                 "v": {name: _to_layout(name, opt.state[p]["exp_avg_sq"]) for name, p in targets.items()}}
    return model.to_params(), new_state, loss.item()


def count_parameters(model: nn.Module) -> int:
    """torch's own count: ``parameters()`` lists a tensor once even if it is used twice."""
    return sum(p.numel() for p in model.parameters())

