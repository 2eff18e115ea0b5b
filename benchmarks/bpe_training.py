"""Time BPE training: qkv's incremental trainer, the naive trainer, and HF tokenizers.

    .venv/bin/python benchmarks/bpe_training.py [--naive-bytes N]

Prints, in one run:
1. the incremental trainer (qkv.bpe.train_bpe) on ~130 KB for a 500-token vocabulary;
2. its speed-up over the naive trainer (recount every pair after every merge,
   qkv.bpe.train_bpe_naive) for a 1,000-token vocabulary on 1 MB; if --naive-bytes is
   smaller than 1 MB both trainers are timed on that slice and the output says so;
3. the ratio to HF tokenizers' BpeTrainer (Rust, may use several threads) on the same 1 MB.
The corpus is qkv.corpora.english_corpus (Python standard-library docstrings), offline.
Both qkv trainers are checked to produce identical merges.
"""

from __future__ import annotations

import argparse
import os
import time

from qkv.bpe import train_bpe, train_bpe_naive
from qkv.corpora import english_corpus

SPECIALS = ["<|endoftext|>"]


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def hf_train(text: str, vocab_size: int) -> float:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    lines = text.split("\n")
    start = time.perf_counter()
    tok.train_from_iterator(lines, trainer=trainer)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--naive-bytes", type=int, default=1_000_000,
                        help="corpus size for the naive-vs-incremental comparison (default: the full 1 MB)")
    args = parser.parse_args()

    small = english_corpus(130_000)
    t_small, _ = best_of(lambda: train_bpe(small, 500, SPECIALS), 3)
    print(f"1. incremental trainer, 500-token vocab on {len(small.encode()):,} bytes: {t_small:.3f} s (best of 3)")

    big = english_corpus(1_000_000)
    cmp_text = big if args.naive_bytes >= 1_000_000 else english_corpus(args.naive_bytes)
    t_fast, fast = best_of(lambda: train_bpe(cmp_text, 1000, SPECIALS), 2)
    t_naive, naive = best_of(lambda: train_bpe_naive(cmp_text, 1000, SPECIALS), 1)
    assert fast == naive, "the incremental trainer must reproduce the naive merges exactly"
    note = "" if cmp_text is big else f" (measured on a {len(cmp_text.encode()):,}-byte slice, NOT 1 MB)"
    print(f"2. 1,000-token vocab on {len(cmp_text.encode()):,} bytes{note}: naive {t_naive:.2f} s, "
          f"incremental {t_fast:.2f} s -> speed-up {t_naive / t_fast:.1f}x (identical merges)")

    t_big = t_fast if cmp_text is big else best_of(lambda: train_bpe(big, 1000, SPECIALS), 2)[0]
    t_hf = min(hf_train(big, 1000) for _ in range(2))
    print(f"3. 1,000-token vocab on {len(big.encode()):,} bytes: qkv incremental {t_big:.2f} s, HF tokenizers "
          f"{t_hf:.2f} s -> qkv / HF = {t_big / t_hf:.1f}x (HF: Rust, up to {os.cpu_count()} threads)")


if __name__ == "__main__":
    main()
