"""Linked score mods (flashflex._score_mod_linked) on a GPU, in one run: what a new mod costs once
(capture and code generation, NVRTC's compile of the hook, nvJitLink's link with the sm90
forward's LTO-IR, the driver's load), what the first call of a cached mod costs in a fresh
process, and the forward's and the backward's times with linked mods against the built-in mod of
similar cost on the same inputs (soft-cap), CUDA events, median of --iters calls (the backward:
autograd.grad of q through one retained graph). B=1, 32 / 8 heads, D=128, bf16.

    python bench/linked_score_mod.py [--seq-len 16384] [--iters 20] [--out bench/results/h200_linked_score_mod.md]

Cases: causal (the kernel's full and partial tiles) and no mask. Mods: none, built-in soft-cap
(score_mods.softcap(30)), the same soft-cap as a callable (recognised: no link), and linked:
s * sigmoid(s), 30 * tanh(s / 30) * sigmoid(gate[h]), s + tanh(table[clamp(q - kv) + 16]).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import timing  # noqa: E402

import flashflex  # noqa: E402
from flashflex import _C, score_mods  # noqa: E402
from flashflex import _score_mod_link as link  # noqa: E402
from flashflex._score_mod_codegen import generate  # noqa: E402
from flashflex._score_mod_graph import capture  # noqa: E402
from flashflex._score_mod_linked import SM90, kernel_path  # noqa: E402
from flashflex._tensor_ref import DTYPE_CODES  # noqa: E402

ARCH = "sm_90a"  # the Hopper family's cubins: the figures are the sm90 kernels'


def mods():
    gate = torch.randn(32, device="cuda")
    table = torch.randn(33, device="cuda")
    return {
        "none": None,
        "softcap built-in": score_mods.softcap(30.0),
        "softcap callable (recognised)": lambda s, b, h, q, kv: 30 * torch.tanh(s / 30),
        "silu (linked)": lambda s, b, h, q, kv: s * torch.sigmoid(s),
        "gated softcap (linked)": lambda s, b, h, q, kv: 30 * torch.tanh(s / 30) * torch.sigmoid(gate[h]),
        "tanh table (linked)": lambda s, b, h, q, kv: s + torch.tanh(table[torch.clamp(q - kv, -16, 16) + 16]),
    }


def cold_costs(head_dim: int):
    """Milliseconds of each step for a mod no cache has seen (a fresh cache directory)."""
    salt = time.time_ns() % 1000  # a constant no earlier run compiled
    mod = lambda s, b, h, q, kv: s * torch.sigmoid(s) + salt * 1e-9  # noqa: E731
    t0 = time.perf_counter()
    generated = generate(capture(mod))
    t1 = time.perf_counter()
    hook = link.compile_ltoir(link._HOOK_PREFIX + generated.source, ARCH, "hook.cu")
    t2 = time.perf_counter()
    with open(kernel_path(torch.bfloat16, head_dim, 0, SM90), "rb") as f:
        image = f.read()
    cubin = link.link_cubin(ARCH, [image, hook])
    t3 = time.perf_counter()
    _C.load_linked_kernel(cubin, 0, DTYPE_CODES[torch.bfloat16], head_dim, SM90)
    t4 = time.perf_counter()
    return {"capture + codegen": t1 - t0, "NVRTC": t2 - t1, "nvJitLink": t3 - t2, "load": t4 - t3}


_FRESH = """
import time, torch, flashflex
q = torch.randn(1, 32, 1024, 128, device="cuda", dtype=torch.bfloat16)
k = torch.randn(1, 8, 1024, 128, device="cuda", dtype=torch.bfloat16)
torch.cuda.synchronize()
start = time.perf_counter()
with torch.no_grad():
    flashflex.flex_attention(q, k, k, score_mod=lambda s, b, h, qi, kv: s * torch.sigmoid(s), enable_gqa=True)
torch.cuda.synchronize()
print(time.perf_counter() - start)
"""


def fresh_process_first_call(cache: str):
    """Seconds of the first call in new processes: the first links into `cache`, the next reads it."""
    env = dict(os.environ, FLASHFLEX_CACHE_DIR=cache)
    runs = [subprocess.run([sys.executable, "-c", _FRESH], env=env, capture_output=True, text=True, check=True)
            for _ in range(3)]
    return [float(r.stdout.strip().splitlines()[-1]) for r in runs]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-len", type=int, default=16384)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    lines = [f"# Linked score mods, {torch.cuda.get_device_name()}, T={args.seq_len}, B=1, 32/8 heads, D=128, bf16",
             "", "## A new mod, once (this process, seconds)", "", "| step | s |", "|---|---|"]
    with tempfile.TemporaryDirectory() as cache:
        os.environ["FLASHFLEX_CACHE_DIR"] = cache
        for step, s in cold_costs(128).items():
            lines.append(f"| {step} | {s:.3f} |")
        first = fresh_process_first_call(cache)
    lines += ["", "## First call in a fresh process (s; T=1024, the whole call)", "",
              "| new cache | cached | cached again |", "|---|---|---|",
              f"| {first[0]:.3f} | {first[1]:.3f} | {first[2]:.3f} |"]

    t = args.seq_len
    q = torch.randn(1, 32, t, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 8, t, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, 8, t, 128, device="cuda", dtype=torch.bfloat16)
    causal = flashflex.create_block_mask(flashflex.masks.causal(), None, None, t, t, device="cuda")
    lines += ["", "## ms, median (ratio: against the built-in soft-cap, same pass and mask)", "",
              "| mod | fwd causal | ratio | fwd no mask | ratio | bwd causal | ratio |",
              "|---|---|---|---|---|---|---|"]
    rows = {}
    dout = torch.randn_like(q)
    for name, mod in mods().items():
        cells = []
        with torch.no_grad():
            for mask in (causal, None):
                fn = lambda: flashflex.flex_attention(q, k, v, score_mod=mod, block_mask=mask, enable_gqa=True)  # noqa: E731
                cells.append(timing.cuda_time_ms(fn, args.iters, args.warmup)[0])
        qg = q.detach().requires_grad_()
        out = flashflex.flex_attention(qg, k, v, score_mod=mod, block_mask=causal, enable_gqa=True)
        bwd = lambda: torch.autograd.grad(out, qg, dout, retain_graph=True)  # noqa: E731
        cells.append(timing.cuda_time_ms(bwd, args.iters, args.warmup)[0])
        rows[name] = cells
    base = rows["softcap built-in"]
    for name, cells in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{c:.3f} | {c / b:.3f}" for c, b in zip(cells, base)) + " |")
    table = "\n".join(lines) + "\n"
    timing.write_table(table, args.out or timing.default_out("linked_score_mod"), None, plot=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
