"""What the benchmarks share: timing of a callable (CUDA events on a GPU, wall clock on the CPU),
an optional cold L2 before each timed call, the measured bf16 matmul peak, a wall-clock budget,
the results file's name, writing a markdown table with its PNG plot (bench/plot.py), and the
small helpers around them (an error in one cell, freeing memory between rows, torch.compile's
recompile limits)."""

from __future__ import annotations

import gc
import os
import re
import statistics
import time
from typing import Callable, Optional, Tuple

import torch

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


class L2Flush:
    """Writes a buffer twice the L2's size, so that the next call finds none of its inputs there
    (FlashAttention's and triton's benchmarks do the same); run before the start event, so it is
    not timed."""

    def __init__(self, device=None):
        props = torch.cuda.get_device_properties(device or torch.cuda.current_device())
        l2 = getattr(props, "L2_cache_size", 0) or 64 * 2 ** 20  # older torch: assume a 64 MiB L2
        self.buffer = torch.empty(2 * l2 // 4, dtype=torch.int32, device=device or "cuda")

    def __call__(self) -> None:
        self.buffer.zero_()

    _shared: Optional["L2Flush"] = None

    @classmethod
    def shared(cls) -> "L2Flush":
        """One buffer per process (every timed call may flush)."""
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared


def cuda_time_ms(fn: Callable[[], object], iters: int, warmup: int, cold_l2: bool = False
                 ) -> Tuple[float, float, float]:
    """(median, min, max) milliseconds of fn() over `iters` calls after `warmup` untimed ones,
    CUDA events around each call; with cold_l2, L2 flushed (untimed) before each."""
    flush = L2Flush.shared() if cold_l2 else None
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        if flush is not None:
            flush()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times), min(times), max(times)


def time_ms(fn: Callable[[], object], iters: int, warmup: int, device, cold_l2: bool = False
            ) -> Tuple[float, float, float]:
    """cuda_time_ms on a GPU; on the CPU (dry runs) wall-clock milliseconds of the same loop."""
    if torch.device(device).type == "cuda":
        return cuda_time_ms(fn, iters, warmup, cold_l2)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), min(times), max(times)


def first_call_s(fn: Callable[[], object], device) -> Tuple[float, object]:
    """(seconds, result) of one call with the device synchronised on both sides: a compile or
    JIT shows here."""
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def matmul_peak_tflops(n: int = 8192, iters: int = 20) -> float:
    """Measured bf16 matmul throughput of an n x n x n product (the ceiling the attention kernels'
    GEMMs share), median over `iters` calls."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = cuda_time_ms(lambda: a @ b, iters=iters, warmup=5)[0]
    return 2.0 * n ** 3 / ms * 1e-9


class Budget:
    """A wall-clock budget: `fits(estimate)` says whether that many more seconds fit."""

    def __init__(self, seconds: Optional[float]):
        self.deadline = None if seconds is None else time.time() + seconds

    def left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.time()

    def fits(self, estimate_s: float) -> bool:
        return self.left() >= estimate_s


def gpu_slug(name: str) -> str:
    """A results-file prefix from a device name: 'NVIDIA H200' -> 'h200', 'NVIDIA A100-SXM4-80GB' -> 'a100'."""
    match = re.search(r"\b([ABHL]\d{2,3}|GB\d{3}|B\d{3}|RTX\s?\d{4})", name)
    tag = match.group(1) if match else name
    return re.sub(r"[^a-z0-9]+", "_", tag.lower()).strip("_")


def default_out(kind: str) -> str:
    """bench/results/<gpu>_<kind>.md for the current GPU."""
    return os.path.join(RESULTS_DIR, f"{gpu_slug(torch.cuda.get_device_name())}_{kind}.md")


def write_table(table: str, out: Optional[str], png: Optional[str], log: Callable[[str], None] = print,
                plot: bool = True, echo: bool = True) -> None:
    """Prints the table (with `echo`); with `out`, writes it there and (with `plot`) plots it to
    `png` (default: out's name with .png). A failing plot is reported, never fatal: the table is
    the result."""
    if echo:
        print(table, flush=True)
    if not out:
        return
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write(table)
    log(f"table: {out}")
    if not plot:
        return
    png = png or os.path.splitext(out)[0] + ".png"
    try:
        import plot as plotter
        plotter.main([out, png])
        log(f"plot: {png}")
    except (Exception, SystemExit) as error:  # noqa: BLE001 - the table is the result; the plot is a view
        log(f"plot not written ({type(error).__name__}: {error})")


def fmt_error(error: BaseException, width: int = 110) -> str:
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= width else text[:width - 3] + "..."


def cleanup(device) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def raise_recompile_limits(limit: int = 1024) -> None:
    """Each (T, step) of a static compile, and each new mask_mod closure, is a recompile of
    flex_attention; past dynamo's default limit (8) it silently falls back to eager (dense on a
    GPU, out of memory at these sizes). The customers raise it too (TorchSpec: 64)."""
    import torch._dynamo
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(limit, getattr(torch._dynamo.config, name)))
