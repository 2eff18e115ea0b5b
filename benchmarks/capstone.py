"""The capstone GPT: training tokens/s with the course's pieces against the same model in torch.nn,
and decode tokens/s with and without the KV cache at several lengths, measured in one run.

    .venv/bin/python benchmarks/capstone.py
    .venv/bin/python benchmarks/capstone.py --lengths 64 256 1024 --rounds 5 --threads 2

Training: one Adam step on a (batch, context + 1) window, qkv.gpt.train_step (the pieces of
chapters 1-8) against qkv.gpt_torch.TorchGPT (nn.RMSNorm, F.scaled_dot_product_attention with
enable_gqa, torch.optim.Adam), same weights, same batch. Decoding: greedy qkv.gpt.generate of
n new tokens from a 4-token prompt, kv_cache=True against kv_cache=False (full recomputation
each step), for each n. Settings are timed in interleaved rounds and the best round is kept, so
a burst of load on a shared machine hits all of them alike. Absolute numbers depend on the
machine, printed first; compare the ratios, and only within one run.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from qkv import gpt
from qkv.gpt_torch import TorchGPT
from qkv.gpt_training import Settings
from qkv.kv_cache import machine_description


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="timed rounds; the best is kept (default 3)")
    p.add_argument("--train-steps", type=int, default=5, help="training steps per round (default 5)")
    p.add_argument("--lengths", type=int, nargs="+", default=[32, 128, 512], help="new tokens to decode")
    p.add_argument("--threads", type=int, default=1, help="torch threads during timing (default 1)")
    p.add_argument("--batch", type=int, default=None, help="training batch (default: the book's, 16)")
    args = p.parse_args(argv)
    for name in ("rounds", "train_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if any(n < 1 for n in args.lengths):
        p.error("every --lengths value must be at least 1")
    return args


def best_of(rounds: int, jobs: dict[str, callable]) -> dict[str, float]:
    """Best wall time of each job over ``rounds`` interleaved rounds."""
    best = {name: math.inf for name in jobs}
    for job in jobs.values():
        job()  # warm-up
    for _ in range(rounds):
        for name, job in jobs.items():
            start = time.perf_counter()
            job()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = Settings() if args.batch is None else Settings(batch=args.batch)
    config = settings.config()
    params = gpt.init_params(config, seed=0)
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(0, config["vocab_size"], (settings.batch, settings.context + 1), generator=gen)
    print("machine:", machine_description(), f"| torch threads: {args.threads}")
    print(f"model: {gpt.count_params(params):,} parameters, " + ", ".join(
        f"{k} {config[k]}" for k in ("vocab_size", "d_model", "n_heads", "n_kv_heads", "n_layers", "d_ff")))

    model = TorchGPT.from_params(params, config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=config["adam_betas"], eps=config["adam_eps"])

    def torch_steps():
        for _ in range(args.train_steps):
            optimizer.zero_grad()
            model.loss(batch).backward()
            optimizer.step()

    def course_steps():
        p, state = params, None
        for _ in range(args.train_steps):
            p, state, _ = gpt.train_step(p, config, batch, 1e-3, state)

    start = time.perf_counter()
    times = best_of(args.rounds, {"course pieces (qkv.gpt)": course_steps, "torch.nn + fused kernels": torch_steps})
    tokens = args.train_steps * settings.batch * settings.context
    print(f"\ntraining: {settings.batch} × {settings.context} tokens per step, best of {args.rounds} rounds")
    print(f"{'implementation':>26} {'tokens/s':>12}")
    for name, seconds in times.items():
        print(f"{name:>26} {tokens / seconds:>12,.0f}")
    course, fused = times.values()
    print(f"torch.nn / course speed ratio: {course / fused:.2f}")

    prompt = torch.randint(0, config["vocab_size"], (1, 4), generator=gen)
    net = {"params": params, "config": config}
    print(f"\ndecoding: greedy, batch 1, a 4-token prompt, best of {args.rounds} rounds")
    print(f"{'new tokens':>10} {'cached tok/s':>14} {'full tok/s':>12} {'cache speed-up':>15} {'same tokens':>12}")
    for n in args.lengths:
        out = {}

        def run(cached: bool, n: int = n, out: dict = out):
            out[cached] = gpt.generate(net, prompt, n, kv_cache=cached)

        t = best_of(args.rounds, {"cached": lambda: run(True), "full": lambda: run(False)})
        same = torch.equal(out[True], out[False])
        print(f"{n:>10} {n / t['cached']:>14,.0f} {n / t['full']:>12,.0f} "
              f"{t['full'] / t['cached']:>15.1f} {str(same):>12}")
    print(f"\n(measured in {time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
