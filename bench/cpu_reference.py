"""CPU figures of the float64 reference and the C++ mask builders (no GPU needed): forward and
backward at B=1, H=4, T=1024, D=64 (dense and causal), and block-mask build times at 16384 tokens,
the masks from bench/cases.py. Median of several runs, wall clock (the reference is synchronous).
Writes bench/results/cpu_reference.md (--out; 'none': print only).

    python bench/cpu_reference.py [--out FILE.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

import flashflex

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cases import MaskSpec  # noqa: E402
from timing import RESULTS_DIR, write_table  # noqa: E402


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: thread start-up, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(RESULTS_DIR, "cpu_reference.md"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    b, h, t, d = 1, 4, 1024, 64
    q, k, v = (torch.randn(b, h, t, d, requires_grad=True) for _ in range(3))
    dout = torch.randn(b, h, t, d)

    lines = [f"CPU ({os.cpu_count()} cores), torch {torch.__version__}; median wall clock", "",
             "| case | forward ms | backward ms |", "|---|---|---|"]
    for spec in (MaskSpec("dense"), MaskSpec("causal")):
        mask = spec.flashflex(t)
        block_mask = None if mask is None else flashflex.create_block_mask(mask, None, None, t, t)
        fwd = median_seconds(lambda: flashflex.flex_attention(q, k, v, block_mask=block_mask), 5)
        out = flashflex.flex_attention(q, k, v, block_mask=block_mask)
        bwd = median_seconds(lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True), 5)
        lines.append(f"| reference {spec.label()} B={b} H={h} T={t} D={d} fp32 | {fwd * 1e3:.1f} | {bwd * 1e3:.1f} |")

    n = 16384
    lines += ["", "| CPU block-mask build, T=16384 | ms |", "|---|---|"]
    for spec in (MaskSpec("causal"), MaskSpec("sliding_window", window=2048), MaskSpec("eagle3", step=6)):
        kv = n * (spec.step + 1)
        seconds = median_seconds(lambda: flashflex.create_block_mask(spec.flashflex(n), None, None, n, kv), 3)
        lines.append(f"| {spec.label()} | {seconds * 1e3:.1f} |")
    write_table("\n".join(lines) + "\n", None if args.out == "none" else args.out, None, plot=False)


if __name__ == "__main__":
    main()
