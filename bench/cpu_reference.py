"""CPU figures of the float64 reference and the C++ mask builders (no GPU needed):
forward and backward at B=1, H=4, T=1024, D=64, and block-mask build times at 16384 tokens.
Median of several runs, wall clock (the reference is synchronous).

    python bench/cpu_reference.py
"""

from __future__ import annotations

import statistics
import time

import torch

import flashflex
from flashflex import masks


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: thread start-up, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    torch.manual_seed(0)
    b, h, t, d = 1, 4, 1024, 64
    q, k, v = (torch.randn(b, h, t, d, requires_grad=True) for _ in range(3))
    dout = torch.randn(b, h, t, d)
    causal = flashflex.create_block_mask(masks.causal(), None, None, t, t)

    rows = []
    for name, mask in (("full", None), ("causal", causal)):
        fwd = median_seconds(lambda: flashflex.flex_attention(q, k, v, block_mask=mask), 5)
        out = flashflex.flex_attention(q, k, v, block_mask=mask)
        bwd = median_seconds(lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True), 5)
        rows.append((f"reference {name} B={b} H={h} T={t} D={d} fp32", fwd * 1e3, bwd * 1e3))

    n = 16384
    builds = {
        "causal T=16384": lambda: flashflex.create_block_mask(masks.causal(), None, None, n, n),
        "sliding_window 2048 T=16384": lambda: flashflex.create_block_mask(masks.sliding_window(2048), None, None, n, n),
        "eagle3 step 6 T=16384": lambda: flashflex.create_block_mask(masks.eagle3(6, n), None, None, n, 7 * n),
    }
    print("| case | forward ms | backward ms |\n|---|---|---|")
    for name, fwd_ms, bwd_ms in rows:
        print(f"| {name} | {fwd_ms:.1f} | {bwd_ms:.1f} |")
    print("\n| CPU block-mask build | ms |\n|---|---|")
    for name, fn in builds.items():
        print(f"| {name} | {median_seconds(fn, 3) * 1e3:.1f} |")


if __name__ == "__main__":
    main()
