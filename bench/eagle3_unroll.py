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
from typing import List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cases as cs  # noqa: E402
import eagle3_common as ec  # noqa: E402
from eagle3_common import Unroll  # noqa: E402
from eagle3_table import FLEX_IMPLS, IMPLS, Results, fmt, render, unroll_of  # noqa: E402
from timing import L2Flush, cleanup, default_out, fmt_error, raise_recompile_limits, write_table  # noqa: E402

GPU_DEFAULT_CASES = cs.UNROLL_CASES
CPU_DEFAULT_CASES = cs.UNROLL_CPU_CASES

GPU_DEFAULT_IMPLS = "flashflex,flex_flash,flex_dynamic,flex_static,masks_compiled"
CPU_DEFAULT_IMPLS = "flashflex,flex_eager,dense_sdpa"


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
        raise_recompile_limits()
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
            emit({"kind": "unroll", "impl": impl, "case": u.name, "ok": False, "reason": fmt_error(error)})
            log(f"[{impl}] {u.name}: n/a ({fmt_error(error)})")
        cleanup(device)
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
        log(f"[flashflex] warm-up T=256 failed: {fmt_error(error)}")


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
            record["internal_mask_us"] = flashflex_internal_mask_us(u, device)
        except Exception as error:  # noqa: BLE001 - a side figure: its failure is a note
            record["note"] = f"internal mask build not timed ({fmt_error(error)})"
    sample = ec.digest(fwd, inp, with_backward)
    torch.save(sample, os.path.join(args.digests, f"{impl}__{u.name}.pt"))
    bwd = "-" if record["bwd"][0] is None else f"{record['bwd'][0]:.3f}"
    log(f"[{impl}] {u.name}: fwd {record['fwd'][0]:.3f} ms, bwd {bwd} ms, peak "
        f"{fmt(ec.mib(record.get('peak_bytes')), 0)} MiB")
    emit(record)


def flashflex_internal_mask_us(u: Unroll, device) -> Optional[float]:
    """flashflex's TTT path needs no mask from the caller; on CUDA it builds block 0's causal
    BlockMask (batch- and head-independent: the padding is a row limit of the kernels) on the
    device inside every call, already in its forward time. This times that build alone, as the
    device runs it: flashflex.create_block_mask(masks.causal(), T, T) captured in a CUDA graph and
    replayed (the Python call's host overhead left out, as it is inside ttt_attention). None
    where flashflex has no CUDA builder."""
    import flashflex
    if torch.device(device).type != "cuda" or not getattr(flashflex._C, "has_cuda_backend", lambda: False)():
        return None
    mask = cs.MaskSpec("causal").flashflex(u.seq_len)

    def build():
        return flashflex.create_block_mask(mask, None, None, u.seq_len, u.seq_len, device=device)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        build()  # warm: the allocator's pool, the kernels' first launch
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            build()
    torch.cuda.current_stream().wait_stream(stream)
    return ec.median_us(graph.replay, device)


def measure_compiled_masks(u: Unroll, device, args, emit) -> None:
    from torch.nn.attention.flex_attention import create_block_mask
    raise_recompile_limits()
    lengths = torch.tensor(u.lengths_or_full(), dtype=torch.int64, device=device)
    _, build = ec.build_block_masks(u, SimpleNamespace(mask_lengths=lengths), device,
                                    builder=torch.compile(create_block_mask), reps=args.mask_reps)
    emit({"kind": "masks", "impl": "masks_compiled", "case": u.name, "builder": "compiled",
          "first_s": build["first"], "median_s": build["median"]})
    log(f"[masks_compiled] {u.name}: first builds {sum(build['first']):.2f} s, then "
        f"{sum(build['median']) / len(build['median']) * 1e6:.0f} us/step")


# ---------------------------------------------------------------------------------------------
# Parent: one worker per implementation, then the tables

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
    parser.add_argument("--out", default=None, help="markdown file (GPU default: bench/results/<gpu>_eagle3_unroll.md; "
                        "'none': print only)")
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
    args.out = None if args.out == "none" else args.out
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
