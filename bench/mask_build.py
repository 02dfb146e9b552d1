"""Block-mask build time on the GPU: flashflex's CUDA builder against torch's create_block_mask.

For each mask: the flashflex build alone (kernels into a preallocated buffer, host plan
included), the whole flashflex.create_block_mask call (size query, allocation, build), the
build captured once in a CUDA graph and replayed, and torch's create_block_mask
(BLOCK_SIZE=128) on the same mask_mod. CUDA-event timing, warm-up first, median of --iters
runs (torch: --torch-iters). Prints a markdown table. Without a GPU it says so and exits 0.

    python bench/mask_build.py [--iters 100] [--torch-iters 10] [--no-torch] [--only SUBSTRING]
"""

from __future__ import annotations

import argparse
import sys

import torch

from timing import cuda_time_ms


def cases(flashflex):
    m = flashflex.masks
    out = []
    for T in (2048, 8192, 16384):
        for step in range(7):
            out.append((f"eagle3 step {step}", f"B=1 T={T}", m.eagle3(step, T), 1, T, (step + 1) * T))
    out.append(("causal", "B=1 T=16384", m.causal(), 1, 16384, 16384))
    out.append(("sliding_window(1024)", "B=1 T=16384", m.sliding_window(1024), 1, 16384, 16384))
    ids = torch.arange(8 * 2048).reshape(8, 2048) // 300  # documents of 300 tokens, packed
    out.append(("document", "B=8 T=2048", m.document(ids), 8, 2048, 2048))
    return out


def _median_us(fn, iters: int, warmup: int = 5) -> float:
    return cuda_time_ms(fn, iters=iters, warmup=warmup)[0] * 1000.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--torch-iters", type=int, default=10)
    parser.add_argument("--no-torch", action="store_true", help="skip torch's create_block_mask")
    parser.add_argument("--only", default="", help="time only the masks whose 'name shape' contains this")
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
    print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, median of {args.iters} "
          f"(torch: {args.torch_iters}) runs, microseconds\n")
    print("| mask | shape | partial capacity | build (us) | create_block_mask (us) | graph replay (us) "
          "| torch create_block_mask (us) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, shape, mask, B, q_len, kv_len in cases(flashflex):
        if args.only not in f"{name} {shape}":
            continue
        num_bytes, _, _, capacity = C.block_mask_cuda_size(mask._native, B, 1, q_len, kv_len)
        buffer = torch.empty(num_bytes, dtype=torch.uint8, device=device)
        stream = torch.cuda.current_stream(device).cuda_stream

        def build():
            C.build_block_mask_cuda(mask._native, B, 1, q_len, kv_len, buffer.data_ptr(), num_bytes, device.index,
                                    stream)

        build_us = _median_us(build, args.iters)
        call_us = _median_us(lambda: flashflex.create_block_mask(mask, B, None, q_len, kv_len, device=device),
                            args.iters)
        replay = "n/a (per-sample data: not capturable)"
        if mask.batch == 0:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=side):
                C.build_block_mask_cuda(mask._native, B, 1, q_len, kv_len, buffer.data_ptr(), num_bytes,
                                        device.index, side.cuda_stream)
            replay = f"{_median_us(graph.replay, args.iters):.1f}"
        torch_us = "skipped"
        if not args.no_torch:
            try:
                torch_us = f"{_median_us(lambda: torch_create_block_mask(mask, B, None, q_len, kv_len, device=device, BLOCK_SIZE=128), args.torch_iters, warmup=1):.0f}"
            except (RuntimeError, torch.OutOfMemoryError) as e:
                torch_us = f"failed ({type(e).__name__})"
                torch.cuda.empty_cache()
        print(f"| {name} | {shape} | {capacity} | {build_us:.1f} | {call_us:.1f} | {replay} | {torch_us} |")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
