"""Backward benchmark of the CUDA kernels (src/cuda/backward.cu) against SDPA's FlashAttention-2
backend on the same inputs, in the same run. Times flashflex's whole backward call (workspace
memsets, preprocess, main kernel, dQ conversion) through the binding, with out / lse from
flashflex's forward; SDPA's backward through autograd. CUDA events around each call, warm-up,
median and spread of repeated runs. TFLOP/s count visible pairs only (2.5 x the forward's
4 * B * Hq * D * pairs).

    python bench/run_backward.py [--cases causal16k,document,window] [--reps 20]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import flashflex
from flashflex import _C
from flashflex._ops import _mask_args, _mod_args
from flashflex._tensor_ref import stream_of, tensor_ref
from timing import cuda_time_ms


def flashflex_backward_fn(q, k, v, out, lse, dout, block_mask, deterministic=False):
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    mask_tensors = [] if block_mask is None else block_mask._tensors()
    args = (tensor_ref(q), tensor_ref(k), tensor_ref(v), tensor_ref(out), tensor_ref(dout), tensor_ref(lse), None,
            tensor_ref(dq), tensor_ref(dk), tensor_ref(dv), None, q.shape[-1] ** -0.5, _mod_args(0, 0.0, None),
            _mask_args(mask_tensors, q, k), deterministic)
    nbytes = _C.backward_workspace_size(*args)
    workspace = torch.empty(nbytes, dtype=torch.uint8, device=q.device)

    def run():
        _C.backward(*args, workspace.data_ptr(), nbytes, stream_of(q))
    return run


def visible_pairs(name, t):
    """Visible (q, kv) pairs of one head (the masks of bench/run.py)."""
    if name == "causal16k":
        return t * (t + 1) // 2
    if name == "document":  # 8 equal causal documents
        d = t // 8
        return 8 * d * (d + 1) // 2
    if name == "window":  # kv in [q - 2048, q]
        return sum(min(q, 2048) + 1 for q in range(t))
    raise ValueError(name)


def case_mask(name, t):
    """(flashflex mask, whether SDPA's is_causal expresses it)."""
    if name == "causal16k":
        return flashflex.masks.causal(), True
    if name == "document":
        ids = torch.arange(t) // (t // 8)
        return flashflex.masks.and_masks(flashflex.masks.causal(), flashflex.masks.document(ids)), False
    if name == "window":
        return flashflex.masks.sliding_window(2048), False
    raise ValueError(name)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default="causal16k,document,window")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--t", type=int, default=16384)
    parser.add_argument("--deterministic", action="store_true", help="also time deterministic mode")
    args = parser.parse_args()
    torch.manual_seed(0)
    b, hq, hkv, d, t = 1, 32, 8, 128, args.t
    dev = torch.device("cuda")
    q = torch.randn(b, hq, t, d, device=dev, dtype=torch.bfloat16)
    k = torch.randn(b, hkv, t, d, device=dev, dtype=torch.bfloat16)
    v = torch.randn(b, hkv, t, d, device=dev, dtype=torch.bfloat16)
    dout = torch.randn(b, hq, t, d, device=dev, dtype=torch.bfloat16)
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}; B={b} Hq={hq} Hkv={hkv} D={d} T={t}")
    rows = []
    for name in args.cases.split(","):
        mask, is_causal = case_mask(name, t)
        bm = flashflex.create_block_mask(mask, None, None, t, t, device="cuda")
        out, lse = flashflex.flex_attention(q, k, v, block_mask=bm, enable_gqa=True, return_lse=True)
        pairs = b * hq * visible_pairs(name, t)
        flops = 2.5 * 4 * d * pairs
        ms, lo, hi = cuda_time_ms(flashflex_backward_fn(q, k, v, out, lse, dout, bm), iters=args.reps, warmup=3)
        rows.append((name, "flashflex bwd", ms, lo, hi, flops / ms / 1e9))
        if args.deterministic:
            ms, lo, hi = cuda_time_ms(flashflex_backward_fn(q, k, v, out, lse, dout, bm, True), iters=args.reps, warmup=3)
            rows.append((name, "flashflex bwd deterministic", ms, lo, hi, flops / ms / 1e9))
        if is_causal:
            qs, ks, vs = (x.detach().clone().requires_grad_() for x in (q, k, v))
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=True)
            def sdpa_bwd():
                torch.autograd.grad(o, (qs, ks, vs), dout, retain_graph=True)
            ms, lo, hi = cuda_time_ms(sdpa_bwd, iters=args.reps, warmup=3)
            rows.append((name, "SDPA flash (FA2) bwd", ms, lo, hi, flops / ms / 1e9))
    print(f"{'case':<12} {'impl':<30} {'median ms':>10} {'min':>8} {'max':>8} {'TFLOP/s':>8}")
    for name, impl, ms, lo, hi, tf in rows:
        print(f"{name:<12} {impl:<30} {ms:>10.3f} {lo:>8.3f} {hi:>8.3f} {tf:>8.1f}")


if __name__ == "__main__":
    main()
