"""Device benchmark of flashflex against its peers on the same inputs, in the same run.

Forward part: B=1, 32 query heads, 8 key/value heads, D=128, bf16, dense causal at 8192 and
16384 tokens (plus optional extra cases), against
  * torch SDPA, FlashAttention-2 backend  (sdpa_kernel(SDPBackend.FLASH_ATTENTION), is_causal=True)
  * torch SDPA, cuDNN backend             (sdpa_kernel(SDPBackend.CUDNN_ATTENTION), is_causal=True)
  * torch flex_attention under torch.compile, block mask prebuilt (not timed)
Grouped-query attention goes through enable_gqa=True where the backend takes it; a backend that
refuses it gets K/V repeated to 32 heads beforehand (outside the timed region), and the table
says so. Timing: CUDA events around each call, 10 warm-up calls, median (and min / max) of
--iters calls. TFLOP/s = 4 * B * Hq * D * visible pairs / time, causal pairs = T (T + 1) / 2.

    python bench/run.py [--cases causal_8k,causal_16k] [--iters 30] [--out bench/results/fwd.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import flashflex


@dataclass
class Case:
    name: str
    seq_len: int
    mask: str  # "causal", "dense", "sliding_window_2048", "document_8"
    batch: int = 1
    q_heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    dtype: torch.dtype = torch.bfloat16

    def visible_pairs(self) -> int:
        t = self.seq_len
        if self.mask == "causal":
            return t * (t + 1) // 2
        if self.mask == "dense":
            return t * t
        if self.mask == "sliding_window_2048":  # kv in [q - 2048, q]
            w = 2048
            return sum(min(q, w) + 1 for q in range(t))
        if self.mask == "document_8":  # 8 equal causal documents
            d = t // 8
            return 8 * d * (d + 1) // 2
        raise ValueError(self.mask)

    def flops(self) -> float:
        return 4.0 * self.batch * self.q_heads * self.head_dim * self.visible_pairs()


CASES: Dict[str, Case] = {
    "causal_8k": Case("causal_8k", 8192, "causal"),
    "causal_16k": Case("causal_16k", 16384, "causal"),
    "causal_16k_d64": Case("causal_16k_d64", 16384, "causal", head_dim=64),
    "causal_16k_d256": Case("causal_16k_d256", 16384, "causal", head_dim=256),
    "dense_8k": Case("dense_8k", 8192, "dense"),
    "sliding_window_2048_16k": Case("sliding_window_2048_16k", 16384, "sliding_window_2048"),
    "document_8x2048": Case("document_8x2048", 16384, "document_8"),
}


def time_ms(fn: Callable[[], object], warmup: int, iters: int):
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


def torch_mask_mod(case: Case):
    t = case.seq_len
    if case.mask == "causal":
        return lambda b, h, q, kv: kv <= q
    if case.mask == "sliding_window_2048":
        return lambda b, h, q, kv: (kv <= q) & (kv >= q - 2048)
    if case.mask == "document_8":
        d = t // 8
        return lambda b, h, q, kv: (kv <= q) & (kv // d == q // d)
    return None


def flashflex_mask(case: Case):
    m = flashflex.masks
    t = case.seq_len
    if case.mask == "causal":
        return flashflex.create_block_mask(m.causal(), None, None, t, t, device="cuda")
    if case.mask == "sliding_window_2048":
        return flashflex.create_block_mask(m.sliding_window(2048), None, None, t, t, device="cuda")
    if case.mask == "document_8":
        ids = torch.arange(t) // (t // 8)
        return flashflex.create_block_mask(m.and_masks(m.causal(), m.document(ids)), None, None, t, t, device="cuda")
    return None


def sdpa_runner(backend, q, k, v, causal: bool):
    """A closure running SDPA with `backend`, GQA through enable_gqa or repeated K/V; None if the
    backend refuses the problem. Returns (fn, note)."""
    def call(kk, vv, gqa):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, kk, vv, is_causal=causal, enable_gqa=gqa)
    try:
        call(k, v, True)
        torch.cuda.synchronize()
        return (lambda: call(k, v, True)), "enable_gqa"
    except Exception as error:  # noqa: BLE001 - any refusal falls back to repeated K/V
        first = f"{type(error).__name__}"
    group = q.shape[1] // k.shape[1]
    kr, vr = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    try:
        call(kr, vr, False)
        torch.cuda.synchronize()
        return (lambda: call(kr, vr, False)), f"K/V repeated (enable_gqa refused: {first})"
    except Exception as error:  # noqa: BLE001
        return None, f"unavailable: {type(error).__name__}: {str(error).splitlines()[0][:120]}"


def run_case(case: Case, iters: int, peers: List[str]) -> List[dict]:
    gen = torch.Generator(device="cuda").manual_seed(0)
    shape_q = (case.batch, case.q_heads, case.seq_len, case.head_dim)
    shape_kv = (case.batch, case.kv_heads, case.seq_len, case.head_dim)
    q = (torch.randn(shape_q, generator=gen, device="cuda") * 1.5).to(case.dtype)
    k = (torch.randn(shape_kv, generator=gen, device="cuda") * 1.5).to(case.dtype)
    v = (torch.randn(shape_kv, generator=gen, device="cuda") * 1.5).to(case.dtype)
    rows = []

    def record(name, fn, note=""):
        if fn is None:
            rows.append(dict(case=case.name, impl=name, ms=None, note=note))
            return
        med, lo, hi = time_ms(fn, warmup=10, iters=iters)
        rows.append(dict(case=case.name, impl=name, ms=med, lo=lo, hi=hi, tflops=case.flops() / med * 1e-9, note=note))
        print(f"  {case.name:24s} {name:22s} {med:8.3f} ms  {case.flops() / med * 1e-9:6.1f} TFLOP/s  {note}",
              flush=True)

    ff_mask = flashflex_mask(case)
    ff_fn = lambda: flashflex.flex_attention(q, k, v, block_mask=ff_mask, enable_gqa=True)  # noqa: E731
    ff_out = ff_fn()
    record("flashflex", ff_fn)

    causal = case.mask == "causal"
    if case.mask in ("causal", "dense"):
        for name, backend in (("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)):
            if name not in peers:
                continue
            fn, note = sdpa_runner(backend, q, k, v, causal)
            if fn is not None:
                diff = (fn().float() - ff_out.float()).abs().max().item()
                note += f"; max|out - flashflex| {diff:.3g}"
            record(name, fn, note)

    if "flex" in peers:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        mod = torch_mask_mod(case)
        block_mask = None if mod is None else create_block_mask(mod, None, None, case.seq_len, case.seq_len,
                                                                device="cuda")
        compiled = torch.compile(flex_attention)
        start = time.perf_counter()
        out = compiled(q, k, v, block_mask=block_mask, enable_gqa=True)
        torch.cuda.synchronize()
        note = f"compile {time.perf_counter() - start:.0f} s; max|out - flashflex| " \
               f"{(out.float() - ff_out.float()).abs().max().item():.3g}"
        record("torch_flex", lambda: compiled(q, k, v, block_mask=block_mask, enable_gqa=True), note)
    return rows


def markdown(rows: List[dict], device: str, command: str) -> str:
    lines = [f"device: {device}  ", f"command: `{command}`  ", f"torch {torch.__version__}", "",
             "| case | implementation | median ms | min / max ms | TFLOP/s | notes |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["ms"] is None:
            lines.append(f"| {r['case']} | {r['impl']} | - | - | - | {r['note']} |")
        else:
            lines.append(f"| {r['case']} | {r['impl']} | {r['ms']:.3f} | {r['lo']:.3f} / {r['hi']:.3f} | "
                         f"{r['tflops']:.1f} | {r['note']} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="causal_8k,causal_16k", help=f"comma-separated, from {sorted(CASES)}")
    parser.add_argument("--peers", default="sdpa_flash,sdpa_cudnn,flex")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--out", default=None, help="markdown file for the table")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/run.py: no CUDA device here, so no GPU comparison; running the small CPU "
              "demonstration instead (bench/cpu_reference.py: the float64 reference and the mask builders)")
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import cpu_reference
        cpu_reference.main()
        return
    device = f"{torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).multi_processor_count} SMs)"
    rows = []
    for name in args.cases.split(","):
        rows += run_case(CASES[name], args.iters, args.peers.split(","))
    table = markdown(rows, device, "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]))
    print(table)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
