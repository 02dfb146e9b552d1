"""Benchmark of the whole EAGLE3 TTT unroll (7 steps, forward and backward): flashflex's list
path (flashflex.eagle3.ttt_attention, blocks never concatenated, no block mask) against torch
flex_attention as TorchSpec / SpecForge run it (K/V caches grown by torch.cat, BlockMasks of
generate_eagle3_mask built per step with B=B, H=1 and cached), compiled the ways users compile
it: static shapes (torch.compile(flex_attention, dynamic=False)), static with the FA4 kernels
(kernel_options={"BACKEND": "FLASH"}; needs flash_attn.cute, else its rows print n/a) and
torch.compile's default dynamic shapes (torch.compile(flex_attention)). bench/eagle3_common.py
defines the problem.

Per case and implementation: forward and backward phase times (CUDA events, median of --iters
after --warmup), TFLOP/s over visible pairs (backward 2.5x the forward's FLOPs), the first call
at this size in a process that already ran another one (step-0 forward alone, then the whole first
unroll, with the graphs torch.compile built meanwhile), block-mask build time per step
(create_block_mask eager, and torch.compile(create_block_mask) as the customers call it; flashflex
needs none), and peak memory of the unroll above the inputs (torch.cuda.max_memory_allocated,
after the forward phase and over the whole unroll). Defaults: T 2048 / 8192 / 16384 at B=1 and
at B=2 with lengths T and 0.6 T (odd), heads 32/8 D=128 bf16, plus GQA ratio 5 (40/8) at 8192;
case names as in every benchmark (bench/cases.py: eagle3_ttt_16k, eagle3_ttt_8k_b2, eagle3_ttt_8k_h40x8,
eagle3_ttt_8k_d64, ...). --cold-l2 flushes the L2 before each timed phase (untimed).

Each implementation runs in its own process (a failing or crashing peer costs only its own
cells, and torch.compile state never leaks between peers) within a share of --budget-s; cases
that do not fit print "n/a (time budget)". The markdown table and a PNG (bench/plot.py) go to
--out (GPU default: bench/results/<gpu>_eagle3_unroll.md). Without a GPU it runs a small CPU
demonstration (tiny sizes; flashflex's CPU path against torch flex eager, forward only, and the
customers' mask evaluated densely under SDPA) and says so.

    python bench/eagle3_unroll.py [--cases eagle3_ttt_8k,eagle3_ttt_16k_b2] [--impls flashflex,flex_dynamic]
                                  [--iters 10] [--warmup 2] [--budget-s 300] [--cold-l2] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from functools import partial
from types import SimpleNamespace
from typing import Dict, List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cases as cs  # noqa: E402
import eagle3_common as ec  # noqa: E402
from eagle3_common import Unroll  # noqa: E402
from timing import L2Flush, default_out, write_table  # noqa: E402

FIRST_CALL_LIMIT_MS = 50.0   # flashflex, first call at a new T
MASK_BUILD_LIMIT_US = 50.0   # per step
PEAK_RATIO_LIMIT = 0.5       # flashflex / torch flex, peak memory of the unroll


GPU_DEFAULT_CASES = cs.UNROLL_CASES
CPU_DEFAULT_CASES = cs.UNROLL_CPU_CASES

# name: (label in the table, what it is, share of the time budget)
IMPLS = {
    "flashflex": ("flashflex", "flashflex.eagle3.ttt_attention over the block lists", 1.0),
    "flex_dynamic": ("torch flex, dynamic", "torch.compile(flex_attention) (default dynamic shapes)", 2.0),
    "flex_static": ("torch flex, static", "torch.compile(flex_attention, dynamic=False)", 3.0),
    "flex_flash": ("torch flex FLASH, static", 'torch.compile(partial(flex_attention, kernel_options={"BACKEND": '
                   '"FLASH"}), dynamic=False) (needs FA4 installed)', 3.0),
    "masks_compiled": ("masks only", "torch.compile(create_block_mask) build times", 1.0),
    "flex_eager": ("torch flex, eager", "flex_attention uncompiled (CPU demonstration; forward only)", 1.0),
    "dense_sdpa": ("dense mask, SDPA", "customers' mask evaluated densely, run by SDPA", 1.0),
}
GPU_DEFAULT_IMPLS = "flashflex,flex_flash,flex_dynamic,flex_static,masks_compiled"
CPU_DEFAULT_IMPLS = "flashflex,flex_eager,dense_sdpa"
FLEX_IMPLS = ("flex_flash", "flex_dynamic", "flex_static", "flex_eager")


def log(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------------------------
# Worker: one implementation over the cases, in its own process; one JSON line per record

def run_worker(args) -> int:
    device = args.device
    cases = [unroll_of(name) for name in args.cases.split(",")]
    impl = args.worker
    out = open(args.results, "a")

    def emit(record: dict) -> None:
        out.write(json.dumps(record) + "\n")
        out.flush()

    if impl in ("flex_flash", "flex_static", "flex_dynamic"):
        ec.raise_recompile_limits()
    attention = None
    if impl in FLEX_IMPLS:
        import warnings
        from torch.nn.attention.flex_attention import flex_attention
        # eager flex is the CPU demonstration's peer on purpose; its warning says nothing new
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        flash = partial(flex_attention, kernel_options={"BACKEND": "FLASH"})
        attention = {"flex_flash": lambda: torch.compile(flash, dynamic=False),
                     "flex_static": lambda: torch.compile(flex_attention, dynamic=False),
                     "flex_dynamic": lambda: torch.compile(flex_attention),
                     "flex_eager": lambda: flex_attention}[impl]()
    if impl == "flashflex":
        warm_up_flashflex(cases[0], device)

    durations: List[float] = []
    for index, u in enumerate(cases):
        remaining = args.deadline - time.time()
        estimate = max(durations, default=0.0)
        if remaining < estimate or remaining <= 0:
            emit({"kind": "skip", "impl": impl, "case": u.name,
                  "reason": f"time budget: {max(0.0, remaining):.0f} s left of this peer's share, the last case "
                            f"took {estimate:.0f} s (raise --budget-s)"})
            log(f"[{impl}] {u.name}: skipped (time budget)")
            continue
        start = time.time()
        log(f"[{impl}] {u.name}: {u.describe()}")
        try:
            if impl == "masks_compiled":
                measure_compiled_masks(u, device, args, emit)
            else:
                # flashflex's warm-up already ran a size in this process
                measure_case(impl, u, device, args, attention, emit, first_in_process=index == 0 and impl != "flashflex")
        except Exception as error:  # noqa: BLE001 - a failing case prints n/a, the others still run
            emit({"kind": "unroll", "impl": impl, "case": u.name, "ok": False, "reason": ec.fmt_error(error)})
            log(f"[{impl}] {u.name}: n/a ({ec.fmt_error(error)})")
        ec.cleanup(device)
        durations.append(time.time() - start)
        log(f"[{impl}] {u.name}: done in {durations[-1]:.1f} s")
    out.close()
    return 0


def warm_up_flashflex(u: Unroll, device) -> None:
    """One small unroll first, so that every case's first call is 'a new T in a process that has
    already run' (module load and context set-up are not a per-T cost)."""
    small = Unroll("warm-up", 256, q_heads=u.q_heads, kv_heads=u.kv_heads, head_dim=u.head_dim, dtype=u.dtype)
    try:
        inp = ec.make_inputs(small, device)
        first = ec.first_calls(ec.flashflex_forward(inp), inp, device)
        log(f"[flashflex] warm-up T=256: first call {first['first_call_ms']:.1f} ms")
    except Exception as error:  # noqa: BLE001 - the cases will report it
        log(f"[flashflex] warm-up T=256 failed: {ec.fmt_error(error)}")


def measure_case(impl: str, u: Unroll, device, args, attention, emit, first_in_process: bool) -> None:
    inp = ec.make_inputs(u, device)
    record = {"kind": "unroll", "impl": impl, "case": u.name, "ok": True, "first_in_process": first_in_process,
              "note": ""}
    with_backward = True
    if impl == "flashflex":
        fwd = ec.flashflex_forward(inp)
    elif impl == "dense_sdpa":
        fwd = ec.dense_reference_forward(inp, u.seq_len)
    else:
        if torch.device(device).type == "cpu":
            inp = inp.detached()  # torch flex refuses inputs requiring grad on the CPU
            with_backward = False
            record["note"] = "forward only (torch flex has no CPU backward)"
        masks, build = ec.build_block_masks(u, inp, device, reps=args.mask_reps)
        emit({"kind": "masks", "impl": impl, "case": u.name, "builder": "eager", "first_s": build["first"],
              "median_s": build["median"]})
        fwd = ec.torch_flex_forward(inp, attention, masks)

    record.update(ec.first_calls(fwd, inp, device, with_backward))
    log(f"[{impl}] {u.name}: first call {record['first_call_ms']:.1f} ms, first unroll "
        f"{record['first_unroll_s']:.2f} s (graphs compiled {record['graphs_first_call']} + "
        f"{record['graphs_first_unroll']})")
    flush = L2Flush.shared() if args.cold_l2 and torch.device(device).type == "cuda" else None
    times = ec.time_unroll(fwd, inp, device, args.warmup, args.iters, with_backward, flush=flush)
    record["fwd"] = ec.PhaseTimes.stats(times.fwd_ms)
    record["bwd"] = ec.PhaseTimes.stats(times.bwd_ms)
    # saved-tensor hooks only around eager code: under torch.compile they change what is compiled
    count_saved = with_backward and impl in ("flashflex", "flex_eager", "dense_sdpa")
    record.update(ec.measure_memory(fwd, inp, device, with_backward, count_saved=count_saved))
    if impl == "flashflex":
        try:
            record["internal_mask_us"] = ec.flashflex_internal_mask_us(u, device)
        except Exception as error:  # noqa: BLE001 - a side figure: its failure is a note
            record["note"] = f"internal mask build not timed ({ec.fmt_error(error)})"
    sample = ec.digest(fwd, inp, with_backward)
    torch.save(sample, os.path.join(args.digests, f"{impl}__{u.name}.pt"))
    bwd = "-" if record["bwd"][0] is None else f"{record['bwd'][0]:.3f}"
    log(f"[{impl}] {u.name}: fwd {record['fwd'][0]:.3f} ms, bwd {bwd} ms, peak "
        f"{fmt(ec.mib(record.get('peak_bytes')), 0)} MiB")
    emit(record)


def measure_compiled_masks(u: Unroll, device, args, emit) -> None:
    from torch.nn.attention.flex_attention import create_block_mask
    ec.raise_recompile_limits()
    lengths = torch.tensor(u.lengths_or_full(), dtype=torch.int64, device=device)
    _, build = ec.build_block_masks(u, SimpleNamespace(mask_lengths=lengths), device,
                                    builder=torch.compile(create_block_mask), reps=args.mask_reps)
    emit({"kind": "masks", "impl": "masks_compiled", "case": u.name, "builder": "compiled",
          "first_s": build["first"], "median_s": build["median"]})
    log(f"[masks_compiled] {u.name}: first builds {sum(build['first']):.2f} s, then "
        f"{sum(build['median']) / len(build['median']) * 1e6:.0f} us/step")


# ---------------------------------------------------------------------------------------------
# Parent: one worker per implementation, then the tables

def unroll_of(name: str) -> Unroll:
    """The unroll problem an eagle3_ttt case name denotes (bench/cases.py)."""
    return cs.parse(name).unroll()


def run_workers(args, device: str, cases: List[str], impls: List[str], workdir: str) -> List[dict]:
    results = os.path.join(workdir, "results.jsonl")
    digests = os.path.join(workdir, "digests")
    os.makedirs(digests, exist_ok=True)
    deadline = time.time() + args.budget_s
    for i, impl in enumerate(impls):
        shares = [IMPLS[name][2] for name in impls[i:]]
        share = max(0.0, deadline - time.time()) * shares[0] / sum(shares)
        worker_deadline = time.time() + share
        # eager mask builds are timed by the first torch flex worker only (the table keeps the
        # first record); the next one just builds them (at 16k each build takes a while)
        first_flex = impl == next((name for name in impls if name in FLEX_IMPLS), None)
        mask_reps = args.mask_reps if first_flex or impl == "masks_compiled" else 0
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", impl, "--device", device,
               "--cases", ",".join(cases), "--iters", str(args.iters), "--warmup", str(args.warmup),
               "--mask-reps", str(mask_reps), *(["--cold-l2"] if args.cold_l2 else []), "--deadline", f"{worker_deadline:.3f}",
               "--results", results, "--digests", digests]
        log(f"== {impl}: {IMPLS[impl][1]} (share {share:.0f} s)")
        start = time.time()
        # own session: at the budget the worker goes with the compile workers it started
        proc = subprocess.Popen(cmd, start_new_session=True)
        _WORKERS.append(proc)
        try:
            # the grace lets a case that started inside the share finish its measurement
            rc = proc.wait(timeout=share + args.grace_s)
            reason = None if rc == 0 else f"worker exited with status {rc}"
        except subprocess.TimeoutExpired:
            _kill_session(proc)
            reason = f"killed at the time budget ({share + args.grace_s:.0f} s)"
        _WORKERS.remove(proc)
        log(f"== {impl}: {time.time() - start:.0f} s" + ("" if reason is None else f" ({reason})"))
        if reason is not None:
            with open(results, "a") as f:
                f.write(json.dumps({"kind": "worker_end", "impl": impl, "reason": reason}) + "\n")
    records = []
    if os.path.exists(results):
        with open(results) as f:
            records = [json.loads(line) for line in f if line.strip()]
    for record in records:  # cross-implementation check on the same inputs
        if record.get("kind") == "unroll" and record.get("ok") and record["impl"] != "flashflex":
            record["diffs"] = compare_digests(digests, record["impl"], record["case"])
    return records


_WORKERS: List[subprocess.Popen] = []


def _kill_session(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _on_termination(signum, frame) -> None:
    """A worker runs in its own session, so a signal to this process (a timeout, Ctrl-C) does not
    reach it: take it down, then go."""
    for proc in list(_WORKERS):
        _kill_session(proc)
    sys.exit(128 + signum)


def compare_digests(digests: str, impl: str, case: str) -> Optional[dict]:
    paths = [os.path.join(digests, f"{name}__{case}.pt") for name in ("flashflex", impl)]
    if not all(os.path.exists(p) for p in paths):
        return None
    ref, other = (torch.load(p) for p in paths)
    return {"out": ec.max_abs_diff(ref.get("out_last"), other.get("out_last")),
            "dk0": ec.max_abs_diff(ref.get("dk0"), other.get("dk0"))}


def fmt(value, digits: int = 2, none: str = "-") -> str:
    if value is None:
        return none
    return f"{value:.{digits}f}"


def sig(value) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def ratio(a, b) -> Optional[float]:
    return None if a is None or not b else a / b


class Results:
    """Records indexed for the tables."""

    def __init__(self, records: List[dict], cases: List[str], impls: List[str]):
        self.cases, self.impls = cases, impls
        self.unroll: Dict[tuple, dict] = {}
        self.masks: Dict[tuple, dict] = {}
        self.skipped: Dict[tuple, str] = {}
        self.worker_end: Dict[str, str] = {}
        for r in records:
            if r["kind"] == "unroll":
                self.unroll[(r["case"], r["impl"])] = r
            elif r["kind"] == "masks":
                key = (r["case"], r["builder"])
                if key not in self.masks or (r.get("median_s") and not self.masks[key].get("median_s")):
                    self.masks[key] = r  # the first timed build
            elif r["kind"] == "skip":
                self.skipped[(r["case"], r["impl"])] = r["reason"]
            elif r["kind"] == "worker_end":
                self.worker_end[r["impl"]] = r["reason"]

    def missing_reason(self, case: str, impl: str) -> str:
        if (case, impl) in self.skipped:
            return self.skipped[(case, impl)]
        if impl in self.worker_end:
            return self.worker_end[impl]
        return "no result"

    def get(self, case: str, impl: str) -> Optional[dict]:
        r = self.unroll.get((case, impl))
        return r if r is not None and r.get("ok") else None

    def mask_us_per_step(self, case: str, builder: str) -> Optional[float]:
        r = self.masks.get((case, builder))
        if r is None:
            return None
        # without repeats, eager first builds stand in; compiled ones include the compile
        times = r.get("median_s") or (r.get("first_s") if builder == "eager" else None)
        return None if not times else sum(times) / len(times) * 1e6


def render(res: Results, device: str, command: str, args, cpu: bool) -> str:
    cases = {name: unroll_of(name) for name in res.cases}
    unroll_impls = [i for i in res.impls if i != "masks_compiled"]
    lines = [f"# EAGLE3 TTT unroll: flashflex against torch flex{' (CPU DEMONSTRATION, not a GPU benchmark)' if cpu else ''}",
             "", f"device: {device}  ", f"command: `{command}`  ",
             f"torch {torch.__version__}; flashflex {flashflex_version()}; iters {args.iters} after {args.warmup} "
             f"warm-up; time budget {args.budget_s:.0f} s", ""]
    lines += ["Implementations: " + "; ".join(f"**{IMPLS[i][0]}**: {IMPLS[i][1]}" for i in res.impls) + ".", "",
              "fwd / bwd: the 7 steps' forward phase (torch flex: including its per-step torch.cat of the K/V "
              "cache) and one backward of their 7 outputs; median ms (min-max). TFLOP/s over visible pairs "
              "(bwd 2.5x fwd FLOPs). First call: the step-0 forward alone at this size, then the whole first unroll "
              "(s), with the graphs torch.compile built in each; * marks the first size of a process. Mask "
              "build: per step, cached across iterations (not in fwd). Peak: "
              + ("autograd's saved bytes (unique storages) on the CPU." if cpu else
                 "torch.cuda.max_memory_allocated (reset before the unroll) minus what was allocated before it "
                 "(inputs, output gradients, masks), after the forward phase / over the whole unroll (gradients "
                 "included); the absolute peak is in the notes. Checks: the peak ratio uses the figure above the "
                 "inputs, the absolute one everything."), ""]
    lines += ["| case | problem | visible pairs / head | fwd TFLOP |", "|---|---|---|---|"]
    for name, u in cases.items():
        lines.append(f"| {name} | {u.describe()} | {u.visible_pairs()} | {u.fwd_flops() / 1e12:.3f} |")
    lines += ["", "| case | implementation | fwd ms | bwd ms | fwd TFLOP/s | bwd TFLOP/s | first call ms | "
              "first unroll s | mask build us/step | peak fwd MiB | peak MiB | saved MiB | notes |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, u in cases.items():
        for impl in unroll_impls:
            lines.append(main_row(res, name, u, impl))
    lines += ["", "| case | mask builder | first builds ms (7 steps) | us/step (median) | max us/step |",
              "|---|---|---|---|---|"]
    for name in cases:
        lines.append(f"| {name} | flashflex (none from the caller: block lists and lengths) | 0 | 0 | 0 |")
        ff = res.get(name, "flashflex")
        if ff is not None and ff.get("internal_mask_us") is not None:
            lines.append(f"| {name} | flashflex internal (block 0's causal mask, built on the device in each call, "
                         f"already in fwd; CUDA-graph replay of the build) | - | {ff['internal_mask_us']:.1f} | - |")
        for builder, label in (("eager", "create_block_mask"), ("compiled", "torch.compile(create_block_mask)")):
            r = res.masks.get((name, builder))
            if r is None:
                continue
            med = r.get("median_s") or []
            lines.append(f"| {name} | {label} | {sum(r['first_s']) * 1e3:.1f} | "
                         f"{fmt(res.mask_us_per_step(name, builder), 0)} | "
                         f"{fmt(max(med) * 1e6 if med else None, 0)} |")
    lines += checks(res, cases, unroll_impls, cpu)
    return "\n".join(lines) + "\n"


def main_row(res: Results, name: str, u: Unroll, impl: str) -> str:
    label = IMPLS[impl][0]
    r = res.get(name, impl)
    if r is None:
        failed = res.unroll.get((name, impl))
        reason = failed["reason"] if failed is not None else res.missing_reason(name, impl)
        return f"| {name} | {label} | n/a ({reason}) | - | - | - | - | - | - | - | - | - | |"
    fwd, bwd = r["fwd"], r["bwd"]
    star = "*" if r.get("first_in_process") else ""
    graphs = [r.get("graphs_first_call"), r.get("graphs_first_unroll")]
    first_call = f"{r['first_call_ms']:.1f}{star}" + (f" ({graphs[0]} graphs)" if graphs[0] else "")
    first_unroll = f"{r['first_unroll_s']:.2f}" + (f" ({graphs[1]} graphs)" if graphs[1] else "")
    if impl == "flashflex":
        internal = r.get("internal_mask_us")
        mask = "0" if internal is None else f"0 (internal {internal:.1f})"
    elif impl in FLEX_IMPLS:
        mask = " / ".join(f"{fmt(res.mask_us_per_step(name, b), 0)} {b}" for b in ("eager", "compiled")
                          if res.mask_us_per_step(name, b) is not None) or "-"
    else:
        mask = "n/a"
    notes = [r.get("note", "")]
    if r.get("peak_abs_bytes") is not None:
        notes.append(f"absolute peak {ec.mib(r['peak_abs_bytes']):.0f} MiB")
    diffs = r.get("diffs")
    if diffs:
        notes.append("max\\|out - flashflex\\| " + sig(diffs.get("out")) +
                     (", dK_0 " + sig(diffs["dk0"]) if diffs.get("dk0") is not None else ""))
    bwd_cells = ("-", "-") if bwd[0] is None else (f"{bwd[0]:.3f} ({bwd[1]:.3f}-{bwd[2]:.3f})",
                                                   fmt(ec.tflops(u.bwd_flops(), bwd[0]), 1))
    return (f"| {name} | {IMPLS[impl][0]} | {fwd[0]:.3f} ({fwd[1]:.3f}-{fwd[2]:.3f}) | {bwd_cells[0]} | "
            f"{fmt(ec.tflops(u.fwd_flops(), fwd[0]), 1)} | {bwd_cells[1]} | {first_call} | {first_unroll} | {mask} | "
            f"{fmt(ec.mib(r.get('peak_fwd_bytes')), 0)} | {fmt(ec.mib(r.get('peak_bytes')), 0)} | "
            f"{fmt(ec.mib(r.get('saved_bytes')), 1)} | {'; '.join(n for n in notes if n)} |")


def checks(res: Results, cases: Dict[str, Unroll], unroll_impls: List[str], cpu: bool) -> List[str]:
    """The figures the EAGLE3 issue asks for, flashflex against each torch peer."""
    peers = [i for i in unroll_impls if i != "flashflex"]
    lines = ["", f"Checks: flashflex first call at a new size <= {FIRST_CALL_LIMIT_MS:.0f} ms; mask build <= "
             f"{MASK_BUILD_LIMIT_US:.0f} us per step; peak memory of the unroll <= {PEAK_RATIO_LIMIT} x torch "
             f"flex's; time flashflex / torch flex per phase (< 1: flashflex faster).", "",
             "| case | flashflex first call ms | flashflex mask build us/step | vs | fwd time ratio | bwd time ratio | "
             "peak fwd ratio | peak ratio | absolute peak ratio | saved ratio |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name in cases:
        ff = res.get(name, "flashflex")
        if ff is None:
            first, mask = "n/a", "n/a"
        else:
            ok = "yes" if ff["first_call_ms"] <= FIRST_CALL_LIMIT_MS else "NO"
            first = f"{ff['first_call_ms']:.1f} ({ok})"
            internal = ff.get("internal_mask_us")
            mask = "0 (yes)" if internal is None else \
                f"0 separate; internal {internal:.1f} ({'yes' if internal <= MASK_BUILD_LIMIT_US else 'NO'})"
        for peer in peers or [None]:
            p = res.get(name, peer) if peer else None

            def r(key, index=None):
                if ff is None or p is None:
                    return "n/a"
                a, b = ff.get(key), p.get(key)
                if index is not None:
                    a, b = (a[index] if a else None), (b[index] if b else None)
                value = ratio(a, b)
                if value is None:
                    return "-"
                flag = " (NO)" if key in ("peak_bytes", "peak_abs_bytes") and value > PEAK_RATIO_LIMIT else ""
                return f"{value:.2f}{flag}"
            lines.append(f"| {name} | {first} | {mask} | {IMPLS[peer][0] if peer else '-'} | {r('fwd', 0)} | "
                         f"{r('bwd', 0)} | {r('peak_fwd_bytes')} | {r('peak_bytes')} | {r('peak_abs_bytes')} | "
                f"{r('saved_bytes')} |")
    if cpu:
        lines += ["", "CPU demonstration: flashflex runs its float64 reference path here; times and ratios say "
                  "nothing about a GPU."]
    return lines


def flashflex_version() -> str:
    try:
        root = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
        commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"commit {commit}{' (modified tree)' if dirty else ''}" if commit else "unknown commit"
    except Exception:  # noqa: BLE001 - not a git checkout
        return "unknown commit"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=None, help="comma-separated eagle3_ttt_<T>[_h<Hq>x<Hkv>][_d<D>][_<dtype>]"
                        f"[_b<B>] (bench/cases.py; default GPU: {GPU_DEFAULT_CASES}; CPU: {CPU_DEFAULT_CASES})")
    parser.add_argument("--impls", default=None, help=f"comma-separated, from {sorted(IMPLS)} "
                        f"(default GPU: {GPU_DEFAULT_IMPLS}; CPU: {CPU_DEFAULT_IMPLS})")
    parser.add_argument("--iters", type=int, default=None, help="timed unrolls per case (default GPU 10, CPU 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed unrolls first (default GPU 2, CPU 1)")
    parser.add_argument("--mask-reps", type=int, default=3, help="timed block-mask builds per step after the first")
    parser.add_argument("--budget-s", type=float, default=300.0,
                        help="wall-clock budget of all workers, shared by implementation (flex static the most)")
    parser.add_argument("--grace-s", type=float, default=15.0, help="a worker is killed this long past its share")
    parser.add_argument("--out", default=None, help="markdown file (GPU default: bench/results/<gpu>_eagle3_unroll.md)")
    parser.add_argument("--png", default=None, help="plot file (default: --out with .png)")
    parser.add_argument("--cold-l2", action="store_true", help="flush the L2 (untimed) before each timed phase")
    parser.add_argument("--cpu", action="store_true", help="the CPU demonstration even where a GPU is present")
    # worker side (internal)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--device", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--results", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--digests", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cpu = args.cpu or not torch.cuda.is_available()
    if args.iters is None:
        args.iters = 3 if cpu else 10
    if args.warmup is None:
        args.warmup = 1 if cpu else 2
    args.cases = args.cases or (CPU_DEFAULT_CASES if cpu else GPU_DEFAULT_CASES)
    args.impls = args.impls or (CPU_DEFAULT_IMPLS if cpu else GPU_DEFAULT_IMPLS)
    for name in args.cases.split(","):
        try:
            unroll_of(name)
        except ValueError as error:
            parser.error(f"--cases: {error}")
    for name in args.impls.split(","):
        if name not in IMPLS:
            parser.error(f"--impls: unknown implementation {name!r}; known: {sorted(IMPLS)}")
    if args.iters < 1 or args.warmup < 0 or args.mask_reps < 0:
        parser.error("--iters must be >= 1, --warmup and --mask-reps >= 0")
    return args, cpu


def main(argv: Optional[List[str]] = None) -> int:
    args, cpu = parse_args(argv)
    if args.worker is not None:
        return run_worker(args)
    device = "cpu" if cpu else "cuda"
    if cpu:
        log("bench/eagle3_unroll.py: CPU DEMONSTRATION (no CUDA device here, or --cpu): tiny sizes, flashflex's "
            "CPU path against torch flex eager (forward only: torch flex has no CPU backward) and the customers' "
            "mask evaluated densely under SDPA. Not a GPU benchmark; the GPU run needs a CUDA machine.")
        device_name = f"CPU ({os.cpu_count()} cores), demonstration only"
    else:
        props = torch.cuda.get_device_properties(0)
        device_name = f"{props.name} ({props.multi_processor_count} SMs)"
        if args.out is None:
            args.out = default_out("eagle3_unroll")
    cases, impls = args.cases.split(","), ec.unique(args.impls.split(","))
    command = "python " + " ".join([os.path.relpath(os.path.abspath(__file__))] + [shlex.quote(a) for a in
                                                                                   (argv if argv is not None else sys.argv[1:])])
    start = time.time()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _on_termination)
    with tempfile.TemporaryDirectory(prefix="eagle3_unroll_") as workdir:
        records = run_workers(args, device, cases, impls, workdir)
    table = render(Results(records, cases, impls), device_name, command, args, cpu)
    write_table(table, args.out, args.png, log=log)
    log(f"bench/eagle3_unroll.py: {time.time() - start:.0f} s" + (" (CPU demonstration)" if cpu else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
