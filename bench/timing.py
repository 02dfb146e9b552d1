"""What the device benchmarks share: CUDA-event timing of a callable, and writing a markdown
table with its PNG plot (bench/plot.py) next to it."""

from __future__ import annotations

import os
import statistics
from typing import Callable, Optional, Tuple

import torch


def cuda_time_ms(fn: Callable[[], object], iters: int, warmup: int) -> Tuple[float, float, float]:
    """(median, min, max) milliseconds of fn() over `iters` calls after `warmup` untimed ones,
    CUDA events around each call."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times), min(times), max(times)


def write_table(table: str, out: Optional[str], png: Optional[str], log: Callable[[str], None] = print) -> None:
    """Prints the table; with `out`, writes it there and plots it to `png` (default: out's name
    with .png). A failing plot is reported, never fatal: the table is the result."""
    print(table, flush=True)
    if not out:
        return
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write(table)
    log(f"table: {out}")
    png = png or os.path.splitext(out)[0] + ".png"
    try:
        import plot
        plot.main([out, png])
        log(f"plot: {png}")
    except (Exception, SystemExit) as error:  # noqa: BLE001 - the table is the result; the plot is a view
        log(f"plot not written ({type(error).__name__}: {error})")
