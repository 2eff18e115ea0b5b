"""What the static book's widgets add to a build: seconds to build each widget live only and with
its static view (every frame), in one process, alternating, best of ``--repeat``; and the size
of each static view. The cold book build pays the difference once (the execution cache keeps
the frames); the ratio to the live build shows which widgets dominate.

    .venv/bin/python benchmarks/static_widgets.py --repeat 2
"""

from __future__ import annotations

import argparse
import os
import time

import matplotlib

matplotlib.use("Agg")

from IPython.core.interactiveshell import InteractiveShell  # noqa: E402

from qkv.gpt2_files import ENDOFTEXT, gpt2_merges  # noqa: E402
from qkv.widgets import attention, bert, masking, mqa_gqa, multihead, norms, scaling, tokenization, transformer  # noqa: E402
from qkv.widgets.live import STATIC_BUILD_ENV  # noqa: E402

BUILDERS = {
    "attention.query_heatmap": attention.query_heatmap,
    "attention.softmax_temperature": attention.softmax_temperature,
    "bert.masking_playground": bert.masking_playground,
    "masking.padded_batch_masks": masking.padded_batch_masks,
    "mqa_gqa.kv_cache_calculator": mqa_gqa.kv_cache_calculator,
    "multihead.head_maps": multihead.head_maps,
    "multihead.cost_table": multihead.cost_table,
    "norms.axes_picture": norms.axes_picture,
    "scaling.dk_explorer": scaling.dk_explorer,
    "transformer.pe_heatmap": transformer.pe_heatmap,
    "transformer.lr_schedule": transformer.lr_schedule,
    "tokenization.merge_stepper": tokenization.merge_stepper,
    "tokenization.tokenizer_playground": lambda: tokenization.tokenizer_playground(gpt2_merges(), [ENDOFTEXT]),
}


def timed(build, static: bool) -> tuple[float, int]:
    if static:
        os.environ[STATIC_BUILD_ENV] = "1"
    else:
        os.environ.pop(STATIC_BUILD_ENV, None)
    start = time.perf_counter()
    view = build()
    return time.perf_counter() - start, len(view.static_html or "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    InteractiveShell.instance()  # the book's kernels have one: display() is captured through it
    gpt2_merges()  # loaded once, outside the timings
    total_live = total_static = 0.0
    print(f"{'widget':36} {'live s':>7} {'static s':>9} {'ratio':>6} {'static MB':>10}")
    for name, build in BUILDERS.items():
        live = min(timed(build, False)[0] for _ in range(args.repeat))
        static_runs = [timed(build, True) for _ in range(args.repeat)]
        static, size = min(static_runs)[0], static_runs[0][1]
        total_live, total_static = total_live + live, total_static + static
        print(f"{name:36} {live:7.2f} {static:9.2f} {static / live:6.1f} {size / 2**20:10.2f}", flush=True)
    print(f"{'all widgets':36} {total_live:7.2f} {total_static:9.2f} {total_static / total_live:6.1f}")
    print(f"static views add {total_static - total_live:.1f} s to a cold build on this machine, now")


if __name__ == "__main__":
    main()
