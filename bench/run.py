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

EAGLE3 TTT unroll cases (eagle3_ttt_2k / 8k / 16k; bench/eagle3_common.py): the 7 steps, forward
phase and backward phase timed separately (rows "<case> fwd" and "<case> bwd", backward FLOPs
2.5x the forward's), 3 warm-up unrolls, median of --iters. flashflex.eagle3.ttt_attention over the
per-step K/V lists, against
  * torch flex_attention under torch.compile as the customers run it: K/V caches grown by
    torch.cat each step (inside the timed forward), the 7 BlockMasks of their
    generate_eagle3_mask prebuilt (build time in the notes), enable_gqa=True
  * SDPA cuDNN doing only the causal part of the same 7 steps (q_k over K_0 / V_0), as a bar;
    its TFLOP/s count its own causal pairs
They run after the other cases, peers before flashflex. A peer that fails prints n/a (reason).

    python bench/run.py [--cases causal_8k,causal_16k] [--iters 30] [--out bench/results/fwd.md]

--out also writes a PNG next to the table (bench/plot.py; needs matplotlib). Without a GPU: a small
CPU demonstration (bench/cpu_reference.py, and a tiny TTT unroll on flashflex's CPU path against
torch flex eager, forward only, and the customers' mask evaluated densely under SDPA).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import flashflex

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eagle3_common as ec  # noqa: E402
from timing import cuda_time_ms, write_table  # noqa: E402


@dataclass
class Case:
    name: str
    seq_len: int
    mask: str  # "causal", "dense", "sliding_window_2048", "document_8", "eagle3_ttt" (7-step unroll)
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
        if self.mask == "eagle3_ttt":  # the whole unroll: sum over the 7 steps
            return self.unroll().visible_pairs()
        raise ValueError(self.mask)

    def unroll(self) -> ec.Unroll:
        return ec.Unroll(self.name, self.seq_len, self.batch, self.q_heads, self.kv_heads, self.head_dim,
                         dtype=self.dtype)

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
    "eagle3_ttt_2k": Case("eagle3_ttt_2k", 2048, "eagle3_ttt"),
    "eagle3_ttt_8k": Case("eagle3_ttt_8k", 8192, "eagle3_ttt"),
    "eagle3_ttt_16k": Case("eagle3_ttt_16k", 16384, "eagle3_ttt"),
}


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
        try:
            med, lo, hi = cuda_time_ms(fn, iters=iters, warmup=10)
        except Exception as error:  # noqa: BLE001 - one failing peer leaves the others' rows
            rows.append(dict(case=case.name, impl=name, ms=None, note=f"n/a ({ec.fmt_error(error)})"))
            return
        rows.append(dict(case=case.name, impl=name, ms=med, lo=lo, hi=hi, tflops=case.flops() / med * 1e-9, note=note))
        print(f"  {case.name:24s} {name:22s} {med:8.3f} ms  {case.flops() / med * 1e-9:6.1f} TFLOP/s  {note}",
              flush=True)

    def diff_note(out) -> str:
        if ff_out is None:
            return ""
        return f"max\\|out - flashflex\\| {(out.float() - ff_out.float()).abs().max().item():.3g}"

    ff_out = None
    try:
        ff_mask = flashflex_mask(case)
        ff_fn = lambda: flashflex.flex_attention(q, k, v, block_mask=ff_mask, enable_gqa=True)  # noqa: E731
        ff_out = ff_fn()
        record("flashflex", ff_fn)
    except Exception as error:  # noqa: BLE001
        record("flashflex", None, f"n/a ({ec.fmt_error(error)})")

    causal = case.mask == "causal"
    if case.mask in ("causal", "dense"):
        for name, backend in (("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)):
            if name not in peers:
                continue
            fn, note = sdpa_runner(backend, q, k, v, causal)
            if fn is not None and ff_out is not None:
                note += "; " + diff_note(fn())
            record(name, fn, note if fn is not None else f"n/a ({note})")

    if "flex" in peers:
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention
            mod = torch_mask_mod(case)
            block_mask = None if mod is None else create_block_mask(mod, None, None, case.seq_len, case.seq_len,
                                                                    device="cuda")
            compiled = torch.compile(flex_attention)
            start = time.perf_counter()
            out = compiled(q, k, v, block_mask=block_mask, enable_gqa=True)
            torch.cuda.synchronize()
            note = f"compile {time.perf_counter() - start:.0f} s; " + diff_note(out)
            record("torch_flex", lambda: compiled(q, k, v, block_mask=block_mask, enable_gqa=True), note)
        except Exception as error:  # noqa: BLE001
            record("torch_flex", None, f"n/a ({ec.fmt_error(error)})")
    return rows


def run_eagle3_case(case: Case, iters: int, peers: List[str], device="cuda") -> List[dict]:
    """The 7-step TTT unroll: rows "<case> fwd" and "<case> bwd" per implementation. Peers first,
    flashflex last (a fault in its kernel then cannot take their numbers with it). On the CPU
    (demonstration) torch flex runs eager and forward only, the customers' dense-mask SDPA
    formulation takes cuDNN's place, and sizes are tiny."""
    u = case.unroll()
    cuda = torch.device(device).type == "cuda"
    rows, samples = [], {}
    try:
        inp = ec.make_inputs(u, device)
    except Exception as error:  # noqa: BLE001 - e.g. out of memory: the case prints n/a, others go on
        return [dict(case=f"{case.name} {p}", impl="all", ms=None, note=f"n/a ({ec.fmt_error(error)})")
                for p in ("fwd", "bwd")]

    def record(impl, make, flops, note="", inputs=inp, with_backward=True):
        """make() -> the unroll's forward function, or (function, extra note); called inside the
        try, as building (masks, a GQA probe) may fail too."""
        try:
            fwd = make()
            if isinstance(fwd, tuple):
                fwd, extra = fwd
                note = f"{note}; {extra}"
            first = ec.first_calls(fwd, inputs, device, with_backward)
            # an unroll is 7 calls and a backward: 20 of them give a stable median and keep the run short
            times = ec.time_unroll(fwd, inputs, device, warmup=3, iters=min(iters, 20), with_backward=with_backward)
            samples[impl] = ec.digest(fwd, inputs, with_backward)
        except Exception as error:  # noqa: BLE001 - one failing peer leaves the others' rows
            for phase in ("fwd", "bwd"):
                rows.append(dict(case=f"{case.name} {phase}", impl=impl, ms=None, note=f"n/a ({ec.fmt_error(error)})"))
            print(f"  {case.name:24s} {impl:22s} n/a ({ec.fmt_error(error)})", flush=True)
            ec.cleanup(device)
            return
        if first["first_unroll_s"] >= 1.0:  # a compile, worth saying
            note = "; ".join(n for n in (note, f"first unroll {first['first_unroll_s']:.0f} s") if n)
        for phase, values, phase_flops in (("fwd", times.fwd_ms, flops), ("bwd", times.bwd_ms, 2.5 * flops)):
            if not values:
                rows.append(dict(case=f"{case.name} {phase}", impl=impl, ms=None,
                                 note="n/a (no backward: torch flex has none on the CPU)"))
                continue
            med, lo, hi = ec.PhaseTimes.stats(values)
            rows.append(dict(case=f"{case.name} {phase}", impl=impl, ms=med, lo=lo, hi=hi,
                             tflops=phase_flops / med * 1e-9, note=note))
            print(f"  {case.name + ' ' + phase:24s} {impl:22s} {med:8.3f} ms  {phase_flops / med * 1e-9:6.1f} TFLOP/s  "
                  f"{note}", flush=True)

    if "flex" in peers:
        from torch.nn.attention.flex_attention import flex_attention
        flex_inputs = inp if cuda else inp.detached()  # torch flex refuses inputs requiring grad on the CPU
        built = {}

        def make_flex():
            masks, build = ec.build_block_masks(u, flex_inputs, device)
            built["ms"] = sum(build["first"]) * 1e3
            return ec.torch_flex_forward(flex_inputs, torch.compile(flex_attention) if cuda else flex_attention, masks)
        note = "torch.compile, masks prebuilt" if cuda else "eager (CPU), masks prebuilt"
        record("torch_flex", make_flex, u.fwd_flops(), note, inputs=flex_inputs, with_backward=cuda)
        if "ms" in built:
            for r in rows:
                if r["impl"] == "torch_flex" and r["ms"] is not None:
                    r["note"] += f" (create_block_mask: {built['ms']:.0f} ms for 7 steps); fwd includes the K/V torch.cat"
    if "sdpa_cudnn" in peers:
        if cuda:
            record("sdpa_cudnn_causal", lambda: ec.sdpa_causal_forward(inp, SDPBackend.CUDNN_ATTENTION), u.causal_flops(),
                   "causal part only (q_k over K_0 / V_0, 7 steps); TFLOP/s over its causal pairs")
        else:
            record("dense_mask_sdpa", lambda: ec.dense_reference_forward(inp, u.seq_len), u.fwd_flops(),
                   "customers' mask evaluated densely (CPU)")
    record("flashflex", lambda: ec.flashflex_forward(inp), u.fwd_flops(), "ttt_attention over the K/V lists")

    ref = samples.get("flashflex")
    for r in rows:  # the same inputs everywhere: outputs and dK_0 must agree (cuDNN's causal part aside)
        other = samples.get(r["impl"])
        if ref is None or other is None or r["impl"] in ("flashflex", "sdpa_cudnn_causal") or r["ms"] is None:
            continue
        d_out = ec.max_abs_diff(ref.get("out_last"), other.get("out_last"))
        d_k0 = ec.max_abs_diff(ref.get("dk0"), other.get("dk0"))
        if d_out is not None:
            r["note"] += f"; max\\|out - flashflex\\| {d_out:.3g}" + ("" if d_k0 is None else f", dK_0 {d_k0:.3g}")
    return rows  # the inputs go with this frame; the caller empties the allocator cache


def markdown(rows: List[dict], device: str, command: str) -> str:
    lines = [f"device: {device}  ", f"command: `{command}`  ", f"torch {torch.__version__}", "",
             "| case | implementation | median ms | min / max ms | TFLOP/s | notes |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["ms"] is None:  # the note already reads "n/a (reason)"
            lines.append(f"| {r['case']} | {r['impl']} | {r['note']} | - | - | |")
        else:
            tflops = f"{r['tflops']:.1f}" if r["tflops"] >= 1 else f"{r['tflops']:.3g}"  # CPU demo: tiny
            lines.append(f"| {r['case']} | {r['impl']} | {r['ms']:.3f} | {r['lo']:.3f} / {r['hi']:.3f} | "
                         f"{tflops} | {r['note']} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="causal_8k,causal_16k", help=f"comma-separated, from {sorted(CASES)}")
    parser.add_argument("--peers", default="sdpa_flash,sdpa_cudnn,flex")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--out", default=None, help="markdown file for the table (a PNG plot goes next to it)")
    parser.add_argument("--png", default=None, help="plot file (default: --out with .png)")
    args = parser.parse_args(argv)
    names = args.cases.split(",")
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"--cases: unknown {unknown}; known: {sorted(CASES)}")
    command = "python " + " ".join([os.path.relpath(sys.argv[0])] + (argv if argv is not None else sys.argv[1:]))
    if not torch.cuda.is_available():
        print("bench/run.py: no CUDA device here, so no GPU comparison; running the small CPU "
              "demonstration instead (bench/cpu_reference.py: the float64 reference and the mask builders)")
        import cpu_reference
        cpu_reference.main()
        print("\nCPU DEMONSTRATION of the EAGLE3 TTT unroll (7 steps, tiny sizes; not a GPU benchmark):", flush=True)
        import warnings
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")  # known, said above
        demo = Case("eagle3_ttt_cpu_t128", 128, "eagle3_ttt", q_heads=4, kv_heads=2, head_dim=64, dtype=torch.float32)
        rows = run_eagle3_case(demo, 3, ["flex", "sdpa_cudnn"], device="cpu")
        write_table(markdown(rows, f"CPU ({os.cpu_count()} cores), demonstration only", command), args.out, args.png)
        return
    ec.raise_recompile_limits()  # the unroll cases recompile flex_attention per step and per size
    device = f"{torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).multi_processor_count} SMs)"
    rows = []
    # EAGLE3 unroll cases last: their flex compiles make later flex_attention compiles dynamic, and
    # the EAGLE3 CUDA path is the newest kernel here
    for name in sorted(names, key=lambda n: CASES[n].mask == "eagle3_ttt"):
        case = CASES[name]
        if case.mask == "eagle3_ttt":
            rows += run_eagle3_case(case, args.iters, args.peers.split(","))
            ec.cleanup("cuda")
        else:
            rows += run_case(case, args.iters, args.peers.split(","))
    write_table(markdown(rows, device, command), args.out, args.png)


if __name__ == "__main__":
    main()
