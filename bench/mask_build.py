"""Block-mask build time on the GPU: flashflex's CUDA builder against torch's create_block_mask.

For each mask: the flashflex build alone (kernels into a preallocated buffer, host plan
included), the whole flashflex.create_block_mask call (size query, allocation, build), the
build captured once in a CUDA graph and replayed, and torch's create_block_mask
(BLOCK_SIZE=128) on the same mask_mod. CUDA-event timing, warm-up first, median of --iters
runs (torch: --torch-iters). The masks are bench/cases.py's definitions. Prints a markdown table
and writes it to --out (default bench/results/<gpu>_mask_build.md). Without a GPU it says so and
exits 0.

    python bench/mask_build.py [--iters 100] [--torch-iters 10] [--no-torch] [--only SUBSTRING] [--cold-l2]
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cases import MaskSpec  # noqa: E402
from timing import cuda_time_ms, default_out, write_table  # noqa: E402


def cases():
    """(label, shape, flashflex mask, B, Q_LEN, KV_LEN), the masks from bench/cases.py."""
    out = []
    for T in (2048, 8192, 16384):
        for step in range(7):
            spec = MaskSpec("eagle3", step=step)
            out.append((spec.label(), f"B=1 T={T}", spec.flashflex(T), 1, T, (step + 1) * T))
    for spec in (MaskSpec("causal"), MaskSpec("sliding_window", window=1024)):
        out.append((spec.label(), "B=1 T=16384", spec.flashflex(16384), 1, 16384, 16384))
    # documents of 300 tokens packed across 8 samples: per-sample ids (the path a graph cannot capture)
    spec = MaskSpec("document", doc_len=300, causal=False)
    ids = torch.arange(8 * 2048).reshape(8, 2048) // spec.doc_len
    out.append((spec.label() + ", per-sample ids", "B=8 T=2048", spec.flashflex(2048, doc_ids=ids), 8, 2048, 2048))
    return out


def _median_us(fn, iters: int, warmup: int = 5, cold_l2: bool = False) -> float:
    return cuda_time_ms(fn, iters=iters, warmup=warmup, cold_l2=cold_l2)[0] * 1000.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--torch-iters", type=int, default=10)
    parser.add_argument("--no-torch", action="store_true", help="skip torch's create_block_mask")
    parser.add_argument("--only", default="", help="time only the masks whose 'name shape' contains this")
    parser.add_argument("--cold-l2", action="store_true", help="flush the L2 (untimed) before each timed build")
    parser.add_argument("--out", default=None, help="markdown table (default bench/results/<gpu>_mask_build.md; "
                        "'none': print only)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("mask_build: no CUDA device; nothing to time")
        return 0
    import flashflex
    if not flashflex._C.has_cuda_backend():
        print("mask_build: flashflex was built without CUDA kernels; nothing to time")
        return 0
    from torch.nn.attention.flex_attention import create_block_mask as torch_create_block_mask

    C = flashflex._C
    device = torch.device("cuda", torch.cuda.current_device())
    command = "python bench/mask_build.py " + " ".join(sys.argv[1:])
    lines = [f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, median of {args.iters} "
             f"(torch: {args.torch_iters}) runs, {'cold' if args.cold_l2 else 'warm'} L2, microseconds  ",
             f"command: `{command.strip()}`", "",
             "| mask | shape | partial capacity | build (us) | create_block_mask (us) | graph replay (us) "
             "| torch create_block_mask (us) |", "|---|---|---:|---:|---:|---:|---:|"]
    median_us = partial(_median_us, cold_l2=args.cold_l2)
    for name, shape, mask, B, q_len, kv_len in cases():
        if args.only not in f"{name} {shape}":
            continue
        num_bytes, _, _, capacity = C.block_mask_cuda_size(mask._native, B, 1, q_len, kv_len)
        buffer = torch.empty(num_bytes, dtype=torch.uint8, device=device)
        stream = torch.cuda.current_stream(device).cuda_stream

        def build():
            C.build_block_mask_cuda(mask._native, B, 1, q_len, kv_len, buffer.data_ptr(), num_bytes, device.index,
                                    stream)

        build_us = median_us(build, args.iters)
        call_us = median_us(lambda: flashflex.create_block_mask(mask, B, None, q_len, kv_len, device=device),
                            args.iters)
        replay = "n/a (per-sample data: not capturable)"
        if mask.batch == 0:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=side):
                C.build_block_mask_cuda(mask._native, B, 1, q_len, kv_len, buffer.data_ptr(), num_bytes,
                                        device.index, side.cuda_stream)
            replay = f"{median_us(graph.replay, args.iters):.1f}"
        torch_us = "skipped"
        if not args.no_torch:
            try:
                torch_us = f"{median_us(lambda: torch_create_block_mask(mask, B, None, q_len, kv_len, device=device, BLOCK_SIZE=128), args.torch_iters, warmup=1):.0f}"
            except (RuntimeError, torch.OutOfMemoryError) as e:
                torch_us = f"failed ({type(e).__name__})"
                torch.cuda.empty_cache()
        lines.append(f"| {name} | {shape} | {capacity} | {build_us:.1f} | {call_us:.1f} | {replay} | {torch_us} |")
        print(lines[-1], flush=True)
    out = default_out("mask_build") if args.out is None else None if args.out == "none" else args.out
    write_table("\n".join(lines) + "\n", out, None, plot=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
