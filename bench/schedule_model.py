"""A model of the sm_90 forward's persistent tile orders (src/cuda/sm90/tile_scheduler_fwd.cuh) on
a case's block mask, to predict load imbalance before a GPU run measures it. The order runs q tiles
from the last one, every (batch, head) of a q tile together. Static (head dims 64 and 256): CTA c
of G takes positions c, c + G, ... (odd waves reversed). Dynamic (head dim 128, the kernel's tile
counter): a CTA takes the next tile of the same order when it finishes. Both against the bound
max(average work, dearest tile). The cost of a tile is its kv steps (a partial step costs
--partial-cost full ones) plus --tile-cost steps of fixed work (Q load, epilogue). CPU only.

    python bench/schedule_model.py --cases causal_16k,document_8x2048,sliding_window_2048_16k
"""

from __future__ import annotations

import argparse
import heapq
import os
import sys
from typing import List, NamedTuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cases as cs  # noqa: E402


class Balance(NamedTuple):
    tiles: int
    static: float   # busiest CTA / average, the static order
    dynamic: float  # the dynamic order: each tile to the CTA that finishes first
    bound: float    # max(average, dearest tile) / average


def tile_costs(case: cs.Case, partial_cost: float, tile_cost: float) -> torch.Tensor:
    """[num_q_tiles, batch * q_heads] cost of each q tile (head fastest, as the kernel's order)."""
    import flashflex
    t = case.seq_len
    mask = case.mask.flashflex(t)
    num_q_tiles = (t + 127) // 128
    if mask is None:  # every kv tile of the square problem
        return torch.full((num_q_tiles, case.batch * case.q_heads), num_q_tiles + tile_cost, dtype=torch.float64)
    bm = flashflex.create_block_mask(mask, None, None, t, t)
    partial, full = bm.kv_num_blocks.double(), bm.full_kv_num_blocks.double()  # [B or 1, H or 1, q tiles]
    per = partial * partial_cost + full + tile_cost
    per = per.expand(case.batch, case.q_heads, num_q_tiles)
    return per.permute(2, 0, 1).reshape(num_q_tiles, case.batch * case.q_heads)


def balance(costs: torch.Tensor, sms: int) -> Balance:
    """costs: [num_q_tiles, batch * heads] in the kernel's head-fastest layout."""
    order = costs.flip(0).reshape(-1).tolist()  # q tiles from the last one, heads fastest
    n = len(order)
    grid = min(sms, n)
    totals = [0.0] * grid
    for pos in range(n):
        wave, c = divmod(pos, grid)
        t = pos
        if wave & 1:
            width = min(grid, n - wave * grid)
            t = wave * grid + (width - 1 - c)
        totals[c] += order[t]
    average = sum(order) / grid
    heap = [(0.0, c) for c in range(grid)]
    for cost in order:
        load, c = heapq.heappop(heap)
        heapq.heappush(heap, (load + cost, c))
    dynamic = max(load for load, _ in heap)
    return Balance(n, max(totals) / average, dynamic / average, max(average, max(order)) / average)


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="causal_16k,document_8x2048,sliding_window_2048_16k")
    parser.add_argument("--sms", type=int, default=132, help="resident CTAs (one per SM; H100/H200: 132)")
    parser.add_argument("--partial-cost", type=float, default=1.0, help="a partial step, in full steps")
    parser.add_argument("--tile-cost", type=float, default=1.0, help="a tile's fixed work, in full steps")
    args = parser.parse_args(argv)
    print(f"| case | tiles | static order: busiest / average | dynamic | bound |  (partial step "
          f"{args.partial_cost:g}, tile {args.tile_cost:g} steps, {args.sms} CTAs)")
    print("|---|---|---|---|---|")
    for case in cs.parse_list(args.cases):
        b = balance(tile_costs(case, args.partial_cost, args.tile_cost), args.sms)
        print(f"| {case.name} | {b.tiles} | {b.static:.3f} | {b.dynamic:.3f} | {b.bound:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
