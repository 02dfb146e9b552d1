"""What bench/run.py (forward) and bench/run_backward.py (backward) share: the options, one run
over cases x implementations (bench/cases.py, bench/peers.py) on the same inputs, and the
results table (bench/results/<gpu>_<direction>.md and its PNG).

Per row: median / min / max ms of --iters calls after --warmup (CUDA events; --cold-l2 flushes
the L2 before each timed call, untimed), TFLOP/s over visible pairs (forward 4 * B * Hq * D *
pairs, backward 2.5x that), % of the bf16 matmul peak measured at the start of the run (8192^3),
throughput against FA4's row of the same case, and the first call (seconds, synchronised: a
compile or JIT shows there; backward: the first forward and backward together). Notes give the
largest difference of the output (forward) or dQ (backward) from flashflex's, on two heads.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cases as cs  # noqa: E402
import peers  # noqa: E402
from timing import (Budget, cleanup, default_out, first_call_s, fmt_error, matmul_peak_tflops,  # noqa: E402
                    raise_recompile_limits, time_ms, write_table)


@dataclass
class Row:
    case: str
    impl: str
    ms: Optional[float] = None
    lo: Optional[float] = None
    hi: Optional[float] = None
    tflops: Optional[float] = None
    first_s: Optional[float] = None
    note: str = ""


def log(message: str) -> None:
    print(message, flush=True)


def measure_one(case: cs.Case, name: str, inp: peers.Inputs, backward: bool, args, device
                ) -> Tuple[Row, Optional[torch.Tensor]]:
    """One implementation on one case: its row, and a CPU sample (2 heads of the output or dQ)
    for the cross-check. Its tensors and graphs go with this frame."""
    row = Row(case.name, name)
    try:
        runner = peers.IMPLS[name].build(case, inp, device, grad=backward)
        row.first_s, out = first_call_s(runner.fwd, device)
        if backward:
            fn = runner.bwd(out)
            seconds, grads = first_call_s(fn, device)
            row.first_s += seconds
            sample = runner.to_bhtd(grads[0])  # dQ
        else:
            fn, sample = runner.fwd, runner.to_bhtd(out)
        sample = sample[:, :2].detach().float().cpu()
        row.ms, row.lo, row.hi = time_ms(fn, args.iters, args.warmup, device, cold_l2=args.cold_l2)
    except peers.Unavailable as error:
        row.note = f"n/a ({error})"
        log(f"  {case.name:26s} {name:20s} {row.note}")
        return row, None
    except Exception as error:  # noqa: BLE001 - one failing implementation leaves the others' rows
        row.ms, row.note = None, f"n/a ({fmt_error(error)})"
        log(f"  {case.name:26s} {name:20s} {row.note}")
        return row, None
    row.tflops = (case.bwd_flops() if backward else case.fwd_flops()) / row.ms * 1e-9
    row.note = runner.note
    log(f"  {case.name:26s} {name:20s} {row.ms:9.3f} ms {row.tflops:7.1f} TFLOP/s  first call {row.first_s:.2f} s"
        f"  {row.note}")
    return row, sample


def measure_case(case: cs.Case, impls: List[str], backward: bool, args, device) -> List[Row]:
    inp = peers.Inputs.make(case, device)
    rows: List[Row] = []
    samples: Dict[str, torch.Tensor] = {}
    for name in impls:
        row, sample = measure_one(case, name, inp, backward, args, device)
        rows.append(row)
        if sample is not None:
            samples[name] = sample
        cleanup(device)
    ref = samples.get(peers.REFERENCE)
    what = "dQ" if backward else "out"
    for row in rows:
        other = samples.get(row.impl)
        if row.ms is not None and ref is not None and other is not None and row.impl != peers.REFERENCE:
            diff = (other - ref).abs().max().item() if other.shape == ref.shape else float("nan")
            row.note = "; ".join(n for n in (row.note, f"max\\|{what} - flashflex\\| {diff:.3g}") if n)
    return rows


def check_masks(case_list: List[cs.Case]) -> None:
    """Dry run: each mask's visible pairs (the TFLOP/s count) against its mask_mod and its
    flashflex mask evaluated densely."""
    for case in case_list:
        t = case.seq_len
        q, kv = torch.arange(t)[:, None], torch.arange(t)[None, :]
        b = h = torch.zeros((), dtype=torch.int64)
        counted = {"formula": case.mask.pairs(t)}
        mod, ff = case.mask.mask_mod(), case.mask.flashflex(t)
        counted["mask_mod"] = t * t if mod is None else int(mod(b, h, q, kv).sum())
        counted["flashflex mask"] = t * t if ff is None else int(ff(b, h, q, kv).sum())
        if len(set(counted.values())) != 1:
            raise SystemExit(f"{case.name}: visible pairs disagree: {counted}")
        log(f"  {case.name:40s} {case.mask.label():26s} visible pairs {counted['formula']} (formula = mask_mod = "
            f"flashflex mask)")


def render(rows: List[Row], case_list: List[cs.Case], backward: bool, header: List[str], impls: List[str],
           peak: Optional[float] = None) -> str:
    """The results table; `peak`: the measured bf16 matmul TFLOP/s (None: no % column values)."""
    title = "Backward" if backward else "Forward"
    lines = [f"# {title}: flashflex against its peers, same inputs, same run", ""] + header + [""]
    lines += ["| case | problem | visible pairs | TFLOP (this direction) |", "|---|---|---|---|"]
    for c in case_list:
        flops = c.bwd_flops() if backward else c.fwd_flops()
        lines.append(f"| {c.name} | {c.describe()} | {c.visible_pairs()} | {flops / 1e12:.4g} |")
    lines += ["", "| case | implementation | median ms | min / max ms | TFLOP/s | % matmul peak | vs FA4 | "
              "first call s | notes |", "|---|---|---|---|---|---|---|---|---|"]
    fa4 = {r.case: r.ms for r in rows if r.impl == "fa4" and r.ms is not None}
    for r in rows:
        if r.ms is None:
            lines.append(f"| {r.case} | {r.impl} | {r.note} | - | - | - | - | - | |")
            continue
        tflops = f"{r.tflops:.1f}" if r.tflops >= 1 else f"{r.tflops:.3g}"
        pct = f"{100 * r.tflops / peak:.0f}%" if peak else "-"
        vs = f"{fa4[r.case] / r.ms:.2f}x" if r.case in fa4 else "-"
        lines.append(f"| {r.case} | {r.impl} | {r.ms:.3f} | {r.lo:.3f} / {r.hi:.3f} | {tflops} | {pct} | {vs} | "
                     f"{r.first_s:.2f} | {r.note} |")
    lines += ["", "vs FA4: FA4's time / this row's (throughput ratio; > 1: faster than FA4). Implementations: "]
    lines += [f"- **{n}**: {peers.IMPLS[n].description}" for n in impls]
    return "\n".join(lines) + "\n"


def parse_args(direction: str, argv: Optional[List[str]], doc: str):
    backward = direction == "backward"
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=cs.__doc__.split("\n\n", 1)[1])
    parser.add_argument("--cases", default=cs.ATTENTION_CASES, help="comma-separated case names (below); "
                        f"default: {cs.ATTENTION_CASES}")
    default_impls = peers.BACKWARD_IMPLS if backward else peers.FORWARD_IMPLS
    parser.add_argument("--impls", default=None, help=f"comma-separated, from {sorted(peers.IMPLS)}; default: "
                        f"{default_impls} (dry run: {peers.DRY_RUN_IMPLS})")
    parser.add_argument("--iters", type=int, default=None, help=f"timed calls (default {20 if backward else 30}; dry run 3)")
    parser.add_argument("--warmup", type=int, default=None, help=f"untimed calls first (default {3 if backward else 10})")
    parser.add_argument("--cold-l2", action="store_true", help="flush the L2 (untimed) before each timed call")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="wall-clock budget: a case that would not fit (the longest case so far as estimate) "
                             "prints n/a (time budget)")
    parser.add_argument("--out", default=None, help=f"markdown table (default bench/results/<gpu>_{direction}.md; "
                        "dry run: none); 'none' for no file; a PNG goes next to it")
    parser.add_argument("--png", default=None, help="plot file (default: --out with .png)")
    parser.add_argument("--dry-run", action="store_true", help="no GPU: the cases at T=256, 4/2 heads, fp32, on "
                        "the CPU (mask definitions checked, peers that need CUDA print n/a); the default without CUDA")
    args = parser.parse_args(argv)
    try:
        args.case_list = cs.parse_list(args.cases)
    except ValueError as error:
        parser.error(f"--cases: {error}")
    unroll = [c.name for c in args.case_list if c.unroll_case]
    if unroll:
        parser.error(f"--cases: {unroll} are EAGLE3 unroll cases: bench/eagle3_unroll.py runs those")
    if not torch.cuda.is_available() and not args.dry_run:
        log("bench: no CUDA device here: dry run on the CPU instead (--dry-run), not a benchmark")
        args.dry_run = True
    impls = args.impls or (peers.DRY_RUN_IMPLS + (",flashflex_det" if backward else "") if args.dry_run
                           else default_impls)
    args.impl_list = list(dict.fromkeys(impls.split(",")))
    unknown = [n for n in args.impl_list if n not in peers.IMPLS]
    if unknown:
        parser.error(f"--impls: unknown {unknown}; known: {sorted(peers.IMPLS)}")
    if not backward and any(peers.IMPLS[n].backward_only for n in args.impl_list):
        parser.error("--impls: the deterministic rows are backward only (bench/run_backward.py)")
    args.iters = args.iters or (3 if args.dry_run else 20 if backward else 30)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.dry_run else 3 if backward else 10)
    if args.iters < 1 or args.warmup < 0:
        parser.error("--iters must be >= 1 and --warmup >= 0")
    if args.dry_run:
        args.case_list = [c.shrunk() for c in args.case_list]
    if args.out is None and not args.dry_run:
        args.out = default_out(direction)
    args.out = None if args.out == "none" else args.out
    return args


def main(direction: str, argv: Optional[List[str]], doc: str) -> int:
    backward = direction == "backward"
    args = parse_args(direction, argv, doc)
    budget = Budget(args.budget_s)  # from the start: the matmul peak and the first compiles count too
    device = "cpu" if args.dry_run else "cuda"
    script = os.path.relpath(sys.argv[0]) if argv is None else f"bench/run{'_backward' if backward else ''}.py"
    command = "python " + " ".join([script] + [shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)])
    header, peak = [f"command: `{command}`  "], None
    if args.dry_run:
        header.insert(0, f"device: CPU ({os.cpu_count()} cores), DRY RUN: tiny sizes, not a benchmark  ")
        log("mask definitions (bench/cases.py), visible pairs counted three ways:")
        check_masks(args.case_list)
    else:
        raise_recompile_limits()  # every case is a new static-shape compile of flex_attention
        props = torch.cuda.get_device_properties(0)
        peak = matmul_peak_tflops()
        log(f"device {props.name} ({props.multi_processor_count} SMs); bf16 matmul 8192^3: {peak:.0f} TFLOP/s")
        header = [f"device: {props.name} ({props.multi_processor_count} SMs)  "] + header + [
            f"bf16 matmul peak: {peak:.1f} TFLOP/s (8192^3, measured at the start of this run)  "]
    header.append(f"torch {torch.__version__}; flash_attn.cute {_fa4_version()}; median of {args.iters} after "
                  f"{args.warmup} warm-up calls, {'cold' if args.cold_l2 else 'warm'} L2  ")
    durations, rows = [], []

    def table() -> str:
        return render(rows, args.case_list, backward, header, args.impl_list, peak)
    for case in args.case_list:
        estimate = max(durations, default=0.0)
        if not budget.fits(estimate):
            rows.append(Row(case.name, "all", note=f"n/a (time budget: {max(0, budget.left()):.0f} s left, the "
                                                     f"longest case took {estimate:.0f} s)"))
            log(f"{case.name}: skipped (time budget)")
            continue
        log(f"{case.name}: {case.describe()}")
        start = time.time()
        rows += measure_case(case, args.impl_list, backward, args, device)
        durations.append(time.time() - start)
        log(f"{case.name}: {durations[-1]:.0f} s")
        if args.out:  # the rows so far survive a crash in a later case
            write_table(table(), args.out, None, log=lambda message: None, plot=False, echo=False)
    write_table(table(), args.out, args.png, log=log)
    return 0


def _fa4_version() -> str:
    try:
        from importlib.metadata import version
        return version("flash-attn-4")
    except Exception:  # noqa: BLE001 - not installed, or installed without metadata
        return "not installed"
