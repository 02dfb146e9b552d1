"""The tables of bench/eagle3_unroll.py: its implementations, the records of its workers indexed
by case and implementation, the markdown (problem, main and mask-build tables) and the checks
against the figures of the EAGLE3 issue."""

from __future__ import annotations

import os
import subprocess
from typing import Dict, List, Optional

import torch

import cases as cs
import eagle3_common as ec
from eagle3_common import Unroll

FIRST_CALL_LIMIT_MS = 50.0   # flashflex, first call at a new T
MASK_BUILD_LIMIT_US = 50.0   # per step
PEAK_RATIO_LIMIT = 0.65      # flashflex / torch flex, peak memory of the unroll (the figure)

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
FLEX_IMPLS = ("flex_flash", "flex_dynamic", "flex_static", "flex_eager")


def unroll_of(name: str) -> Unroll:
    """The unroll problem an eagle3_ttt case name denotes (bench/cases.py)."""
    return cs.parse(name).unroll()


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
