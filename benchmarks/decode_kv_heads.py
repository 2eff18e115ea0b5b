"""Decode-step time and KV-cache bytes vs the number of KV heads (MHA, GQA, MQA), measured in one run.

    .venv/bin/python benchmarks/decode_kv_heads.py
    .venv/bin/python benchmarks/decode_kv_heads.py --heads 32 --kv-heads 32 8 1 --contexts 1024 4096 16384

Times one decode step of attention (one new query per head against a filled cache;
projections and MLP do not depend on the KV heads and are left out) and prints the
ratios GQA/MHA and MQA/MHA next to the ratio of cache bytes. Absolute times depend on
the machine, which is printed first; compare ratios, and only within one run.
"""

from __future__ import annotations

import argparse
import time

import torch

from qkv.kv_cache import decode_time_table, kv_cache_bytes, machine_description

DTYPES = {"float32": (torch.float32, 4), "float16": (torch.float16, 2), "bfloat16": (torch.bfloat16, 2)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--heads", type=int, default=16, help="query heads H (default 16)")
    p.add_argument("--kv-heads", type=int, nargs="+", default=None,
                   help="KV-head counts to compare, MHA first (default: H, H/4, 1)")
    p.add_argument("--d-head", type=int, default=64, help="head width (default 64)")
    p.add_argument("--batch", type=int, default=2, help="sequences decoded together (default 2)")
    p.add_argument("--contexts", type=int, nargs="+", default=[512, 2048, 8192], help="cached tokens")
    p.add_argument("--repeats", type=int, default=15, help="timed rounds; the best is kept (default 15)")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32", help="cache dtype (default float32)")
    p.add_argument("--threads", type=int, default=1, help="torch threads during timing (default 1)")
    p.add_argument("--layers", type=int, default=80, help="layers, for the KV-cache bytes table (default 80)")
    args = p.parse_args(argv)
    if args.kv_heads is None:
        args.kv_heads = sorted({args.heads, max(1, args.heads // 4), 1}, reverse=True)
    if args.kv_heads[0] != args.heads:
        p.error(f"the first --kv-heads value is the MHA baseline and must equal --heads ({args.heads})")
    for n in args.kv_heads:
        if n < 1 or args.heads % n:
            p.error(f"--kv-heads {n} does not divide --heads {args.heads}")
    return args


def name(n_kv: int, n_heads: int) -> str:
    return "MHA" if n_kv == n_heads else "MQA" if n_kv == 1 else f"GQA-{n_kv}"


def main(argv=None) -> None:
    args = parse_args(argv)
    dtype, bpe = DTYPES[args.dtype]
    print("machine:", machine_description(), f"| timing threads: {args.threads}")
    print(f"H = {args.heads} query heads, d_head = {args.d_head}, batch = {args.batch}, cache dtype {args.dtype}")
    start = time.perf_counter()
    times = decode_time_table(args.heads, args.kv_heads, args.d_head, args.contexts, args.batch, args.repeats,
                              dtype, threads=args.threads)
    mha = args.heads
    header = f"{'context':>8}" + "".join(f"{name(n, mha) + ' ms':>12}" for n in args.kv_heads)
    header += "".join(f"{name(n, mha) + '/MHA':>12}" for n in args.kv_heads[1:])
    print("\ndecode-step attention time (best of rounds)")
    print(header)
    for i, c in enumerate(args.contexts):
        row = f"{c:>8}" + "".join(f"{times[n][i] * 1e3:>12.3f}" for n in args.kv_heads)
        row += "".join(f"{times[n][i] / times[mha][i]:>12.2f}" for n in args.kv_heads[1:])
        print(row)
    print(f"\nKV-cache bytes ({args.layers} layers, batch {args.batch}) and the ratio the time would follow if "
          "reading the cache were all that mattered")
    print(f"{'context':>8}" + "".join(f"{name(n, mha) + ' MiB':>14}" for n in args.kv_heads)
          + "".join(f"{name(n, mha) + '/MHA':>12}" for n in args.kv_heads[1:]))
    for c in args.contexts:
        sizes = {n: kv_cache_bytes(args.layers, n, args.d_head, c, args.batch, bpe) for n in args.kv_heads}
        print(f"{c:>8}" + "".join(f"{sizes[n] / 2**20:>14.1f}" for n in args.kv_heads)
              + "".join(f"{sizes[n] / sizes[mha]:>12.3f}" for n in args.kv_heads[1:]))
    print(f"\n(measured in {time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
