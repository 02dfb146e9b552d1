"""Host overhead of the EAGLE3 unroll (CUDA only): the CPU time of one
flashflex.eagle3.ttt_attention forward call (with and without grad) and of one step's backward
(torch.autograd.grad: the engine and this call's backward), measured while the GPU is
kept busy (a long sleep kernel is enqueued first, so no call waits for the device and the
interval is Python validation, dispatch, binding and launches only), SDPA's causal call on the
same shapes for scale, and the whole 7-step unroll (forward and backward) eager against its
CUDA-graph replay (CUDA events, medians).

    python bench/eagle3_host.py [--seq-lens 2048,8192] [--iters 30] [--out bench/results/h200_eagle3_host.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eagle3_common as ec  # noqa: E402
import timing  # noqa: E402

SLEEP_CYCLES = 2_000_000_000  # ~1 s at the H200's clock: longer than any batch of timed calls


def host_us(call: Callable[[], object], iters: int, prepare: Optional[Callable[[], object]] = None) -> float:
    """Median CPU microseconds of `call` while the device is busy with a sleep kernel; `prepare`
    (if given) runs once per timed call, all before the sleep, outside the intervals."""
    for _ in range(2):
        if prepare is not None:
            prepare()
        call()
    torch.cuda.synchronize()
    if prepare is not None:
        for _ in range(iters):
            prepare()
    times = []
    torch.cuda._sleep(SLEEP_CYCLES)
    for _ in range(iters):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e6)
    torch.cuda.synchronize()
    return statistics.median(times)


def measure(seq_len: int, iters: int) -> dict:
    from flashflex.eagle3 import ttt_attention

    u = ec.Unroll(name=f"eagle3_ttt_{seq_len}", seq_len=seq_len)
    inp = ec.make_inputs(u, "cuda")
    last = u.steps - 1
    q, ks, vs = inp.q[last], inp.k[:last + 1], inp.v[:last + 1]
    rec = {"seq_len": seq_len}

    rec["fwd_us"] = host_us(lambda: ttt_attention(q, ks, vs), iters)  # recording the graph, as in training
    with torch.no_grad():
        rec["fwd_nograd_us"] = host_us(lambda: ttt_attention(q, ks, vs), iters)
        qd, kd, vd = q.detach(), inp.k[0].detach(), inp.v[0].detach()
        rec["sdpa_fwd_us"] = host_us(lambda: F.scaled_dot_product_attention(qd, kd, vd, is_causal=True,
                                                                            enable_gqa=True), iters)

    # One step's backward: a fresh graph per call, built before the timed interval. autograd.grad
    # returns the gradients without accumulating them into the leaves' .grad (15 more kernels that
    # belong to autograd, not to this call; a trainer's blocks are not leaves either).
    leaves = [q, *ks, *vs]
    outs: List[torch.Tensor] = []

    def fresh():
        outs.append(ttt_attention(q, ks, vs))

    def bwd():
        torch.autograd.grad(outs.pop(), leaves, inp.dout[last])

    rec["bwd_us"] = host_us(bwd, iters, prepare=fresh)

    # The whole unroll, eager and replayed from a CUDA graph.
    fwd = ec.flashflex_forward(inp)

    def unroll():
        inp.clear_grads()
        ec.backward(fwd(), inp)

    rec["eager_ms"] = timing.cuda_time_ms(unroll, iters, warmup=3)[0]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        unroll()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            unroll()
    torch.cuda.current_stream().wait_stream(stream)
    rec["graph_ms"] = timing.cuda_time_ms(graph.replay, iters, warmup=3)[0]
    return rec


def table(records: List[dict]) -> str:
    lines = [
        "| T | ttt_attention fwd, CPU us | fwd under no_grad, CPU us | one step's backward, CPU us | "
        "SDPA causal fwd (no_grad), CPU us | unroll fwd+bwd eager, ms | unroll CUDA-graph replay, ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(f"| {r['seq_len']} | {r['fwd_us']:.1f} | {r['fwd_nograd_us']:.1f} | {r['bwd_us']:.1f} | "
                     f"{r['sdpa_fwd_us']:.1f} | {r['eager_ms']:.3f} | {r['graph_ms']:.3f} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lens", default="2048,8192")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--out", default=None, help="markdown file to write")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("eagle3_host.py measures CUDA launches: no CUDA device", file=sys.stderr)
        return 2
    records = [measure(int(t), args.iters) for t in args.seq_lens.split(",")]
    text = (f"EAGLE3 unroll host overhead ({torch.cuda.get_device_name()}, B=1, 32/8 heads, D=128, bf16, "
            f"7 steps, step 6 timed; medians of {args.iters})\n\n" + table(records) + "\n")
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
