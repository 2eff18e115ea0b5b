"""Training the capstone GPT: the corpus and its BPE tokens, baselines, the training loop, health probes.

Everything here takes an :class:`Assembly`: the functions the model is made of, with the
signatures of the capstone exercise. The book trains the library's assembly; ``qkv capstone
FOLDER`` (qkv.capstone) trains one made of a learner's functions with the same code.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch

from qkv import bpe, gpt
from qkv.corpora import english_corpus


@dataclass(frozen=True)
class Settings:
    """Sizes of one training run. The defaults are the book's: the training takes about 40 s of CPU (one thread)."""

    corpus_bytes: int = 400_000
    vocab_size: int = 512  # 256 bytes + 256 merges
    d_model: int = 64
    n_heads: int = 4
    n_kv_heads: int = 2
    n_layers: int = 2
    d_ff: int = 256
    context: int = 64
    batch: int = 16
    steps: int = 800
    warmup: int = 100
    lr_factor: float = 1.0  # lr = lr_factor · noam_lr(step, d_model, warmup)
    eval_every: int = 50
    eval_windows: int = 64  # validation windows of context + 1 tokens
    seed: int = 0

    def config(self) -> dict:
        return gpt.make_config(self.vocab_size, self.d_model, self.n_heads, self.n_kv_heads, self.n_layers, self.d_ff)


# A run small enough for tests: seconds, not minutes.
TINY = Settings(corpus_bytes=30_000, vocab_size=300, d_model=32, n_heads=4, n_kv_heads=2, n_layers=1, d_ff=64,
                context=32, batch=8, steps=60, warmup=20, eval_every=20, eval_windows=16)


@dataclass
class Assembly:
    """The functions a model is made of, with the capstone exercise's signatures."""

    forward: Callable  # (params, config, tokens, cache=None) -> (logits, cache)
    train_step: Callable  # (params, config, tokens, lr, state=None) -> (params, state, loss)
    generate: Callable  # (model, prompt_ids, n, kv_cache=True, temperature=0.0, generator=None) -> ids
    noam_lr: Callable  # (step, d_model, warmup) -> float
    train_bpe: Callable  # (text, vocab_size) -> (vocab, merges)
    encode: Callable  # (text, merges) -> ids
    decode: Callable  # (ids, vocab) -> text


def library_assembly(pieces: gpt.Pieces = gpt.LIBRARY_PIECES) -> Assembly:
    """The course library's model, built from ``pieces``."""
    return Assembly(forward=partial(gpt.forward, pieces=pieces), train_step=partial(gpt.train_step, pieces=pieces),
                    generate=partial(gpt.generate, pieces=pieces), noam_lr=pieces.noam_lr,
                    train_bpe=bpe.train_bpe, encode=bpe.encode, decode=bpe.decode)


# ----------------------------------------------------------------------------- data


@dataclass
class Data:
    """The tokenized corpus: training and validation ids and the tokenizer that made them."""

    train: torch.Tensor  # (N_train,) int64
    val: torch.Tensor  # (N_val,) int64
    vocab: dict[int, bytes]
    merges: list
    text_bytes: int

    @property
    def bytes_per_token(self) -> float:
        return self.text_bytes / (len(self.train) + len(self.val))


def tokenize_corpus(settings: Settings, train_bpe: Callable = bpe.train_bpe, encode: Callable = bpe.encode,
                    block: int = 1024) -> Data:
    """Train BPE on the offline English corpus (qkv.corpora) and split its ids into train and validation.

    Blocks of ``block`` tokens are dealt out: every tenth block is validation, the rest
    training, so both sample the whole corpus (its modules' docstrings differ in topic).
    """
    text = english_corpus(settings.corpus_bytes)
    vocab, merges = train_bpe(text, settings.vocab_size)
    ids = torch.tensor(encode(text, merges), dtype=torch.int64)
    if len(ids) < 20 * block:
        block = max(len(ids) // 20, settings.context + 1)
    blocks = ids[: len(ids) // block * block].view(-1, block)
    is_val = torch.arange(len(blocks)) % 10 == 0
    return Data(blocks[~is_val].reshape(-1), blocks[is_val].reshape(-1), vocab, list(merges),
                len(text.encode("utf-8")))


def batch_at(ids: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
    """(len(starts), length) windows ids[s : s + length]."""
    return ids[starts[:, None] + torch.arange(length)]


def validation_windows(data: Data, settings: Settings) -> torch.Tensor:
    """A fixed set of (eval_windows, context + 1) windows spread evenly over the validation ids."""
    last = len(data.val) - settings.context - 1
    starts = torch.linspace(0, last, settings.eval_windows).long()
    return batch_at(data.val, starts, settings.context + 1)


# ----------------------------------------------------------------------------- baselines


def unigram_loss(train: torch.Tensor, val: torch.Tensor, vocab_size: int) -> float:
    """Cross-entropy (nats/token) on ``val`` of each token's training frequency, add-one smoothed:
    the best a model can do that ignores the context entirely."""
    counts = torch.bincount(train, minlength=vocab_size).double() + 1
    return -(counts / counts.sum()).log()[val].mean().item()


def bigram_loss(train: torch.Tensor, val: torch.Tensor, vocab_size: int,
                smoothing: tuple[float, ...] = (1.0, 0.1, 0.01)) -> tuple[float, float]:
    """(loss, k): a count-based bigram model P(next | current) with add-k smoothing, on ``val``.

    k is the one of ``smoothing`` with the lowest validation loss: chosen on the data it is
    scored on, so the baseline is, if anything, flattered.
    """
    pairs = torch.zeros(vocab_size, vocab_size, dtype=torch.float64)
    pairs.index_put_((train[:-1], train[1:]), torch.ones(len(train) - 1, dtype=torch.float64), accumulate=True)
    best = (math.inf, smoothing[0])
    for k in smoothing:
        probs = (pairs + k) / (pairs + k).sum(dim=1, keepdim=True)
        best = min(best, (-(probs[val[:-1], val[1:]]).log().mean().item(), k))
    return best


# ----------------------------------------------------------------------------- training


@dataclass
class Run:
    """What a training run produced."""

    settings: Settings
    config: dict
    params: dict[str, torch.Tensor]
    initial_params: dict[str, torch.Tensor]
    losses: list[float] = field(default_factory=list)  # training loss of every step
    val_steps: list[int] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    failure: str = ""  # "" or what went wrong ("the loss became nan at step 3")

    @property
    def final_val_loss(self) -> float:
        return self.val_losses[-1] if self.val_losses else math.nan


def validation_loss(assembly: Assembly, params, config, windows: torch.Tensor) -> float:
    with torch.no_grad():
        logits, _ = assembly.forward(params, config, windows[:, :-1])
        return gpt.next_token_loss(logits.float(), windows[:, 1:]).item()


def train(settings: Settings, data: Data, assembly: Assembly | None = None, *,
          progress: Callable[[int, float], None] | None = None) -> Run:
    """Train from GPT-2-style initial weights with Adam and the Noam schedule (chapter 6).

    Step s uses lr = lr_factor · noam_lr(s, d_model, warmup) and a batch of ``batch`` random
    windows of ``context + 1`` training tokens (a fixed seed). The validation loss is taken
    every ``eval_every`` steps and at the end. The run stops early, with ``failure`` set, when
    the loss stops being a finite number. ``progress(step, loss)`` is called after every step.
    """
    assembly = assembly or library_assembly()
    config = settings.config()
    params = gpt.init_params(config, settings.seed)
    run = Run(settings, config, params, {k: v.clone() for k, v in params.items()})
    windows = validation_windows(data, settings)
    gen = torch.Generator().manual_seed(settings.seed)
    state = None
    cpu0, wall0 = time.process_time(), time.perf_counter()

    def evaluate(step: int) -> None:
        run.val_steps.append(step)
        run.val_losses.append(validation_loss(assembly, params, config, windows))

    evaluate(0)
    for step in range(1, settings.steps + 1):
        starts = torch.randint(0, len(data.train) - settings.context - 1, (settings.batch,), generator=gen)
        lr = settings.lr_factor * assembly.noam_lr(step, settings.d_model, settings.warmup)
        params, state, loss = assembly.train_step(params, config, batch_at(data.train, starts, settings.context + 1),
                                                  lr, state)
        loss = float(loss)
        run.losses.append(loss)
        if progress:
            progress(step, loss)
        if not math.isfinite(loss):
            run.failure = f"the loss became {loss} at step {step}"
            break
        if step % settings.eval_every == 0 or step == settings.steps:
            evaluate(step)
    run.params = params
    run.cpu_seconds = time.process_time() - cpu0
    run.wall_seconds = time.perf_counter() - wall0
    return run


# ----------------------------------------------------------------------------- health probes


def causality_probe(assembly: Assembly, params, config, tokens: torch.Tensor) -> str:
    """"" if the logits at positions 0..t ignore the tokens after t; else what leaked."""
    t = tokens.shape[1] // 2
    changed = tokens.clone()
    changed[:, t + 1:] = (changed[:, t + 1:] + 1) % config["vocab_size"]
    with torch.no_grad():
        a = assembly.forward(params, config, tokens)[0][:, :t + 1]
        b = assembly.forward(params, config, changed)[0][:, :t + 1]
    diff = (a.double() - b.double()).abs().nan_to_num(math.inf).max().item()
    if diff > 1e-4 * max(1.0, a.abs().max().item()):
        return (f"a token sees later tokens: changing the tokens after position {t} changed the logits at "
                f"positions 0..{t} by up to {diff:.3g}, so the loss measures reading the answer, not predicting it")
    return ""


def cache_probe(assembly: Assembly, params, config, prompt: torch.Tensor, n: int = 16) -> str:
    """"" if cached and uncached greedy generation give the same tokens; else where they part."""
    model = {"params": params, "config": config}
    cached = assembly.generate(model, prompt, n, True)
    full = assembly.generate(model, prompt, n, False)
    if torch.equal(cached, full):
        return ""
    step = int((cached != full).any(dim=0).nonzero()[0]) - prompt.shape[1]
    return f"generation with the KV cache differs from full recomputation from new token {step} on"


def sample_text(assembly: Assembly, params, config, data: Data, prompt: str, n: int, *, temperature: float = 0.8,
                seed: int = 0) -> str:
    """``prompt`` continued by ``n`` sampled tokens, decoded to text."""
    ids = torch.tensor([assembly.encode(prompt, data.merges)], dtype=torch.int64)
    out = assembly.generate({"params": params, "config": config}, ids, n, True, temperature,
                            torch.Generator().manual_seed(seed))
    return assembly.decode(out[0].tolist(), data.vocab)
