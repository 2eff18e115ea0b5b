"""LayerNorm, BatchNorm and RMSNorm, written out: the demo implementations the norms chapter runs.

Shapes: ``B`` batch, ``T`` sequence length, ``C`` channels (features, ``d_model``).
BatchNorm follows ``torch.nn.BatchNorm1d``'s layout, ``(N, C)`` or ``(N, C, L)``, with the
channels on dim 1; LayerNorm and RMSNorm normalize the *last* dimensions, as in a
Transformer's ``(B, T, C)`` activations.

Functional style for the running statistics: :func:`batch_norm` and
:func:`masked_batch_norm` never modify their arguments. They return
``(output, new_running_mean, new_running_var)``; in eval mode the returned running
statistics are the ones passed in. (``torch.nn.functional.batch_norm`` instead updates
the buffers in place; returning them keeps every function pure and easy to test.)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch


def _as_shape(normalized_shape: int | Sequence[int]) -> tuple[int, ...]:
    return (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)


def layer_norm(
    x: torch.Tensor,
    normalized_shape: int | Sequence[int],
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """LayerNorm (Ba et al. 2016, §3): normalize each sample over its last dims.

    y = (x − mean) / √(var + eps) · weight + bias, with mean and the *biased*
    variance (divide by n, not n − 1) taken over the trailing ``normalized_shape``
    dims of each sample separately: no statistic is shared between samples.

    Args:
        x: (..., *normalized_shape), any float dtype; the result has the same shape and dtype.
        normalized_shape: the trailing dims to normalize over, e.g. ``C`` for (B, T, C).
        weight, bias: optional, of shape ``normalized_shape``.
        eps: added to the variance *inside* the square root.

    Raises:
        ValueError: if the trailing dims of ``x`` or the affine parameters do not match
            ``normalized_shape``.
    """
    shape = _as_shape(normalized_shape)
    if x.dim() < len(shape) or tuple(x.shape[x.dim() - len(shape):]) != shape:
        raise ValueError(f"expected x of shape (..., {', '.join(map(str, shape))}), got {tuple(x.shape)}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and tuple(p.shape) != shape:
            raise ValueError(f"expected {name} of shape {shape}, got {tuple(p.shape)}")
    dims = tuple(range(-len(shape), 0))
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)  # biased: what nn.LayerNorm uses
    y = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm (Zhang & Sennrich 2019, §4): y = x / √(mean(x²) + eps) · weight over the last dim.

    No mean is subtracted and there is no bias: RMSNorm keeps LayerNorm's re-scaling
    invariance and drops its re-centering.

    Args:
        x: (..., C), any float dtype; the result has the same shape and dtype.
        weight: optional (C,).
        eps: added to the mean square *inside* the square root.

    Raises:
        ValueError: if ``weight`` does not have shape (C,).
    """
    if x.dim() < 1:
        raise ValueError(f"expected x of shape (..., C), got {tuple(x.shape)}")
    if weight is not None and tuple(weight.shape) != (x.shape[-1],):
        raise ValueError(f"expected weight of shape ({x.shape[-1]},) for x of shape {tuple(x.shape)}, "
                         f"got {tuple(weight.shape)}")
    y = x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps)
    return y * weight if weight is not None else y


def _check_batch_norm_args(x, running_mean, running_var, weight, bias) -> int:
    if x.dim() not in (2, 3):
        raise ValueError(f"expected x of shape (N, C) or (N, C, L), got {tuple(x.shape)}")
    c = x.shape[1]
    for name, p in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        if p is not None and tuple(p.shape) != (c,):
            raise ValueError(f"expected {name} of shape ({c},) for x of shape {tuple(x.shape)}, got {tuple(p.shape)}")
    return c


def batch_norm(
    x: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BatchNorm (Ioffe & Szegedy 2015, Alg. 1 and 2), as ``torch.nn.BatchNorm1d`` computes it.

    Each channel is normalized with statistics shared by *every sample* of the batch
    (and every position L). Training mode normalizes with the batch mean and the
    *biased* batch variance, and updates the running statistics with torch's momentum
    convention, new = (1 − momentum) · old + momentum · batch, using the *unbiased*
    variance (n / (n − 1) times the biased one, n = N·L). Eval mode normalizes with the
    running statistics and leaves them unchanged.

    Args:
        x: (N, C) or (N, C, L).
        running_mean, running_var: (C,); never modified (see the module docstring).
        weight, bias: optional (C,).

    Returns:
        (output like x, new running_mean (C,), new running_var (C,)).

    Raises:
        ValueError: on mismatched shapes, or in training mode with one value per
            channel (N·L = 1), where the batch variance is undefined (as torch does).
    """
    _check_batch_norm_args(x, running_mean, running_var, weight, bias)
    dims = (0,) if x.dim() == 2 else (0, 2)
    n = x.numel() // x.shape[1]
    shape = (1, -1) if x.dim() == 2 else (1, -1, 1)  # broadcast (C,) over N (and L)
    if training:
        if n <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
        mean = x.mean(dim=dims)
        var = ((x - mean.reshape(shape)) ** 2).mean(dim=dims)  # biased: used to normalize
        new_mean = (1 - momentum) * running_mean + momentum * mean.to(running_mean.dtype)
        unbiased = var * (n / (n - 1))  # Bessel's correction: used only for the running estimate
        new_var = (1 - momentum) * running_var + momentum * unbiased.to(running_var.dtype)
    else:
        mean, var = running_mean.to(x.dtype), running_var.to(x.dtype)
        new_mean, new_var = running_mean.clone(), running_var.clone()
    y = (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + eps)
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y, new_mean, new_var


def masked_batch_norm(
    x: torch.Tensor,
    mask: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BatchNorm over the *real* tokens of a padded (B, T, C) batch.

    The batch statistics of each channel come from the tokens where ``mask`` is True
    only, so neither the amount of padding nor the pad values change them. Pad
    positions of the output are 0.

    Args:
        x: (B, T, C). mask: bool (B, T), True = real token.
        running_mean, running_var, weight, bias, training, momentum, eps: as in :func:`batch_norm`.

    Returns:
        (output (B, T, C), new running_mean (C,), new running_var (C,)).

    Raises:
        ValueError: on mismatched shapes, or in training mode with fewer than two real tokens.
    """
    if x.dim() != 3 or tuple(mask.shape) != tuple(x.shape[:2]):
        raise ValueError("expected x of shape (B, T, C) and mask of shape (B, T), "
                         f"got {tuple(x.shape)} and {tuple(mask.shape)}")
    mask = mask.bool()
    tokens = x[mask]  # (n_real, C): padding never reaches the statistics
    y_real, new_mean, new_var = batch_norm(tokens, running_mean, running_var, weight, bias, training, momentum, eps)
    y = torch.zeros_like(x)
    y[mask] = y_real
    return y, new_mean, new_var


# ----------------------------------------------------------------------------- BatchNorm in sequence models


def batch_norm_over_time(x: torch.Tensor, bn: torch.nn.BatchNorm1d) -> torch.Tensor:
    """Apply ``bn`` to (B, T, C) activations: one statistic per channel over all B·T tokens.

    This is what BatchNorm means for a sequence model (``BatchNorm1d`` wants the channels
    on dim 1, so the time axis goes last and comes back). In training mode every
    position's statistics include every other position of every sequence, the *later*
    positions of its own sequence among them.
    """
    if x.dim() != 3 or x.shape[-1] != bn.num_features:
        raise ValueError(f"expected x of shape (B, T, {bn.num_features}), got {tuple(x.shape)}")
    return bn(x.transpose(1, 2)).transpose(1, 2)


def next_token_losses(norm: str, *, vocab: int = 16, seq_len: int = 4, d_model: int = 32,
                      steps: int = 300, lr: float = 1e-2, eval_sequences: int = 1000,
                      seed: int = 0) -> dict[str, float]:
    """Train a next-token predictor that cannot see the future, except through its norm.

    Each position's prediction reads only its own token: embedding -> ``norm`` -> linear
    head (no attention, no recurrence). Tokens are drawn uniformly at random, so the
    next token is unpredictable and no model can beat the entropy ``ln(vocab)`` nats
    without information from the future. With ``norm="batch"`` the statistics of a
    ``BatchNorm1d`` over the (B, T) axes of a batch of one sequence include the later
    tokens; with ``norm="layer"`` each token is normalized alone.

    Returns:
        ``{"entropy": ln(vocab), "train": ..., "eval": ...}``: the mean cross-entropy (nats)
        on ``eval_sequences`` fresh sequences, with the norm in training mode (batch
        statistics, one sequence per batch as in training) and in eval mode (running
        statistics, as at inference). For LayerNorm the two are the same computation.

    Raises:
        ValueError: for an unknown ``norm``.
    """
    if norm not in ("batch", "layer"):
        raise ValueError(f"norm must be 'batch' or 'layer', got {norm!r}")
    with _one_thread():
        return _next_token_losses(norm, vocab, seq_len, d_model, steps, lr, eval_sequences, seed)


@contextlib.contextmanager
def _one_thread():
    """Run torch on one thread inside the block: thousands of tiny ops, where waking a second
    thread costs more than it saves (30x slower on a busy 2-core machine, measured)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _next_token_losses(norm, vocab, seq_len, d_model, steps, lr, eval_sequences, seed) -> dict[str, float]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    embed = torch.nn.Embedding(vocab, d_model)
    head = torch.nn.Linear(d_model, vocab)
    normalize = torch.nn.BatchNorm1d(d_model) if norm == "batch" else torch.nn.LayerNorm(d_model)
    opt = torch.optim.Adam([*embed.parameters(), *head.parameters(), *normalize.parameters()], lr=lr)

    def logits(ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, vocab)
        h = embed(ids)
        h = batch_norm_over_time(h, normalize) if norm == "batch" else normalize(h)
        return head(h)

    def loss(ids: torch.Tensor) -> torch.Tensor:  # ids (B, T + 1): predict ids[:, t + 1] at t
        return torch.nn.functional.cross_entropy(logits(ids[:, :-1]).reshape(-1, vocab), ids[:, 1:].reshape(-1))

    normalize.train()
    for _ in range(steps):
        value = loss(torch.randint(vocab, (1, seq_len + 1), generator=gen))
        opt.zero_grad()
        value.backward()
        opt.step()
    test = torch.randint(vocab, (eval_sequences, seq_len + 1), generator=gen)
    with torch.no_grad():
        normalize.eval()
        eval_loss = loss(test).item()  # running statistics: sequences do not interact
        normalize.train()
        # Training-mode statistics, one sequence per batch as during training. Keep the
        # running averages as they were: measuring must not train them.
        saved = {k: v.clone() for k, v in normalize.state_dict().items()}
        train_loss = torch.stack([loss(test[i:i + 1]) for i in range(eval_sequences)]).mean().item()
        normalize.load_state_dict(saved)
    return {"entropy": math.log(vocab), "train": train_loss, "eval": eval_loss}


def padded_batches(steps: int, channels: int = 8, batch: int = 8, max_len: int = 32, *, seed: int = 0):
    """Yield ``steps`` padded batches ``(x (B, T, C), mask (B, T))`` of a fixed token distribution.

    Real tokens are Gaussian with per-channel means ``token_mean(channels)`` and standard
    deviations ``token_std(channels)``; lengths are uniform in 2..``max_len``; each batch is
    padded to its longest sequence with zero vectors (``mask`` is True on real tokens).
    """
    gen = torch.Generator().manual_seed(seed)
    mean, std = token_mean(channels), token_std(channels)
    for _ in range(steps):
        lengths = torch.randint(2, max_len + 1, (batch,), generator=gen)
        mask = torch.arange(int(lengths.max())) < lengths[:, None]  # (B, T)
        x = torch.randn(batch, mask.shape[1], channels, generator=gen) * std + mean
        yield x * mask[..., None], mask


def token_mean(channels: int) -> torch.Tensor:
    """Per-channel mean of the real tokens of :func:`padded_batches`, (C,)."""
    return torch.linspace(-1.0, 3.0, channels)


def token_std(channels: int) -> torch.Tensor:
    """Per-channel standard deviation of the real tokens of :func:`padded_batches`, (C,)."""
    return torch.linspace(0.5, 2.5, channels)


def running_stats_from_padded_batches(masked: bool, steps: int = 300, channels: int = 8, *,
                                      seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """BatchNorm's running statistics after ``steps`` training batches of :func:`padded_batches`.

    ``masked=False`` feeds every position, pads included, to :func:`batch_norm` (what
    ``BatchNorm1d`` does on a padded batch); ``masked=True`` uses :func:`masked_batch_norm`.

    Returns:
        (running_mean (C,), running_var (C,), the mean fraction of pad positions).
    """
    running_mean, running_var = torch.zeros(channels), torch.ones(channels)
    pad_fractions = []
    for x, mask in padded_batches(steps, channels, seed=seed):
        pad_fractions.append(1.0 - mask.float().mean().item())
        if masked:
            _, running_mean, running_var = masked_batch_norm(x, mask, running_mean, running_var)
        else:
            _, running_mean, running_var = batch_norm(x.reshape(-1, channels), running_mean, running_var)
    return running_mean, running_var, sum(pad_fractions) / len(pad_fractions)


# ----------------------------------------------------------------------------- Pre-LN vs Post-LN


def encoder_stack(n_layers: int, d_model: int = 64, n_heads: int = 4, *, norm_first: bool,
                  seed: int = 0) -> torch.nn.ModuleList:
    """``n_layers`` torch Transformer encoder layers, Pre-LN if ``norm_first`` else Post-LN, no dropout.

    Post-LN (Vaswani et al. 2017, §3.1): x = LN(x + F(x)).
    Pre-LN (Xiong et al. 2020, Fig. 1): x = x + F(LN(x)); the stack then needs a final LN.
    Matrices are Xavier-normal and biases zero, the initialization Xiong et al. analyse (§3).
    """
    if n_layers < 1 or d_model % n_heads:
        raise ValueError(f"need n_layers >= 1 and d_model divisible by n_heads, got {n_layers}, {d_model}, {n_heads}")
    torch.manual_seed(seed)
    layers = torch.nn.ModuleList(
        torch.nn.TransformerEncoderLayer(d_model, n_heads, dim_feedforward=4 * d_model, dropout=0.0,
                                         batch_first=True, norm_first=norm_first)
        for _ in range(n_layers)
    )
    with torch.no_grad():
        for name, p in layers.named_parameters():
            if p.dim() == 2:
                torch.nn.init.xavier_normal_(p)
            elif "norm" not in name:  # LayerNorm keeps weight 1, bias 0
                p.zero_()
    return layers


def ffn_gradient_norms(norm_first: bool, n_layers: int = 12, d_model: int = 64, *, batch: int = 8,
                       seq_len: int = 16, vocab: int = 100, seeds: int = 3) -> list[float]:
    """Gradient norm of each layer's second FFN matrix at initialization (Xiong et al. 2020, Fig. 3).

    A randomly initialized stack reads random token embeddings and predicts random
    targets through a linear read-out; the loss is cross-entropy. Pre-LN stacks get a
    final LayerNorm before the read-out, as in Xiong et al. Averaged over ``seeds`` stacks.

    Returns:
        ``n_layers`` floats, the mean ‖∂loss/∂W₂‖_F of layers 1..n_layers.
    """
    total = torch.zeros(n_layers)
    for seed in range(seeds):
        layers = encoder_stack(n_layers, d_model, norm_first=norm_first, seed=seed)
        gen = torch.Generator().manual_seed(seed + 1)
        readout = torch.nn.Linear(d_model, vocab)
        final_norm = torch.nn.LayerNorm(d_model) if norm_first else torch.nn.Identity()
        h = torch.randn(batch, seq_len, d_model, generator=gen)  # (B, T, C)
        targets = torch.randint(vocab, (batch, seq_len), generator=gen)
        for layer in layers:
            h = layer(h)
        logits = readout(final_norm(h))  # (B, T, vocab)
        torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1)).backward()
        total += torch.tensor([layer.linear2.weight.grad.norm().item() for layer in layers])
    return (total / seeds).tolist()


def residual_norms(norm_first: bool, n_layers: int = 12, d_model: int = 64, *, seed: int = 0) -> list[float]:
    """Mean per-token norm of the residual stream after each layer, at initialization.

    Post-LN ends every layer with a LayerNorm, so the norm stays near √d_model; in
    Pre-LN each layer adds to an un-normalized sum, so the norm grows with depth.
    """
    layers = encoder_stack(n_layers, d_model, norm_first=norm_first, seed=seed)
    h = torch.randn(4, 16, d_model, generator=torch.Generator().manual_seed(seed + 1))
    norms = []
    with torch.no_grad():
        for layer in layers:
            h = layer(h)
            norms.append(h.norm(dim=-1).mean().item())
    return norms


def fold_batch_norm(linear: torch.nn.Linear, running_mean: torch.Tensor, running_var: torch.Tensor,
                    weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.nn.Linear:
    """A Linear equal to eval-mode BatchNorm(linear(x)): BN's inference cost folds away.

    In eval mode BN is the affine map y = a·z + b per channel with a = weight/√(var + eps)
    and b = bias − a·mean, so it can be merged into the preceding linear layer.
    """
    scale = weight / torch.sqrt(running_var + eps)  # (C_out,)
    folded = torch.nn.Linear(linear.in_features, linear.out_features)
    with torch.no_grad():
        folded.weight.copy_(linear.weight * scale[:, None])
        folded.bias.copy_((linear.bias - running_mean) * scale + bias)
    return folded


def bessel_factor(n: int) -> float:
    """n / (n − 1): unbiased variance = biased variance × this factor (n values per channel)."""
    if n < 2:
        raise ValueError(f"need at least 2 values for an unbiased variance, got n = {n}")
    return n / (n - 1)


__all__ = ["layer_norm", "rms_norm", "batch_norm", "masked_batch_norm", "batch_norm_over_time",
           "next_token_losses", "padded_batches", "token_mean", "token_std",
           "running_stats_from_padded_batches", "encoder_stack",
           "ffn_gradient_norms", "residual_norms", "fold_batch_norm", "bessel_factor"]
