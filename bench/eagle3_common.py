"""The EAGLE3 test-time-training (TTT) unroll as a benchmark problem, shared by bench/run.py
(eagle3_ttt_* cases) and bench/eagle3_unroll.py: the problem and its visible pairs, the step
inputs, the customers' block masks, one forward function per implementation over the same
inputs, and device-neutral timing and memory measurement (CUDA events on a GPU, wall clock on
the CPU demonstration).

The unroll: step k (0-based, 7 steps) has fresh leaf tensors q_k [B, Hq, T, D], k_k, v_k
[B, Hkv, T, D]; its attention sees K_0..K_k (flashflex.eagle3.ttt_attention semantics). The
forward phase runs the 7 steps, the backward phase is one autograd.backward of the 7 outputs
with fixed random output gradients.
  * flashflex: ttt_attention(q_k, [K_0..K_k], [V_0..V_k], seq_lengths): lists, never concatenated.
  * torch flex: as TorchSpec / SpecForge do it: the K (and V) cache grows by torch.cat each step
    to [B, Hkv, (k + 1) T, D] and flex_attention(enable_gqa=True) runs with the BlockMask of
    their mask_mod (bench/cases.eagle3_customer_mask_mod) on their lengths L_b - k, built with
    B=B, H=1 as they do.
  * SDPA causal (reference only): the causal part of the same 7 steps, q_k over K_0 / V_0.
  * dense reference (CPU demonstration): the customers' mask evaluated densely, run by SDPA.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from cases import eagle3_customer_mask_mod as customer_mask_mod  # noqa: F401 - the one definition

STEPS = 7


@dataclass(frozen=True)
class Unroll:
    """One TTT unroll problem. `lengths`: valid length of each sample (None: all seq_len)."""
    name: str
    seq_len: int
    batch: int = 1
    q_heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    lengths: Optional[Tuple[int, ...]] = None
    steps: int = STEPS
    dtype: torch.dtype = torch.bfloat16

    def lengths_or_full(self) -> Tuple[int, ...]:
        return self.lengths if self.lengths is not None else (self.seq_len,) * self.batch

    def step_pairs(self, step: int) -> int:
        """Visible (q, kv) pairs of one head at `step`, summed over the batch: a valid row
        q < L_b - step sees q + 1 causal keys and `step` suffix keys."""
        total = 0
        for length in self.lengths_or_full():
            n = max(0, length - step)
            total += n * (n + 1) // 2 + step * n
        return total

    def visible_pairs(self) -> int:
        return sum(self.step_pairs(s) for s in range(self.steps))

    def fwd_flops(self) -> float:
        return 4.0 * self.q_heads * self.head_dim * self.visible_pairs()

    def bwd_flops(self) -> float:  # 5 GEMMs against the forward's 2
        return 2.5 * self.fwd_flops()

    def causal_flops(self) -> float:
        """The SDPA reference's own work: every row of every step, causal over K_0."""
        t = self.seq_len
        return 4.0 * self.q_heads * self.head_dim * self.steps * self.batch * t * (t + 1) // 2

    def describe(self) -> str:
        lengths = "" if self.lengths is None else f", lengths {list(self.lengths)}"
        return (f"T={self.seq_len}, B={self.batch}{lengths}, heads {self.q_heads}/{self.kv_heads}, "
                f"D={self.head_dim}, {str(self.dtype).replace('torch.', '')}, {self.steps} steps")


def odd_length(seq_len: int, fraction: float = 0.6) -> int:
    """round(fraction * seq_len), moved up to an odd number (a ragged, non-multiple-of-128 tail)."""
    n = int(round(fraction * seq_len))
    return n if n % 2 == 1 else n + 1


# ---------------------------------------------------------------------------------------------
# Inputs

@dataclass
class StepInputs:
    q: List[torch.Tensor]
    k: List[torch.Tensor]
    v: List[torch.Tensor]
    dout: List[torch.Tensor]
    seq_lengths: Optional[torch.Tensor]  # int64 [B] on the device, or None (all T)
    mask_lengths: torch.Tensor           # int64 [B] on the device: the customers always have one

    def leaves(self) -> List[torch.Tensor]:
        return [*self.q, *self.k, *self.v]

    def clear_grads(self) -> None:
        for t in self.leaves():
            t.grad = None

    def detached(self) -> "StepInputs":
        """Same storage, no autograd (torch flex refuses inputs requiring grad on the CPU)."""
        return StepInputs([t.detach() for t in self.q], [t.detach() for t in self.k], [t.detach() for t in self.v],
                          self.dout, self.seq_lengths, self.mask_lengths)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [*self.leaves(), *self.dout])


def make_inputs(u: Unroll, device, dtype: Optional[torch.dtype] = None, seed: int = 0) -> StepInputs:
    """Deterministic randn inputs: the same values for every implementation of a case."""
    dtype = dtype or u.dtype
    gen = torch.Generator(device=device).manual_seed(seed)
    shape_q = (u.batch, u.q_heads, u.seq_len, u.head_dim)
    shape_kv = (u.batch, u.kv_heads, u.seq_len, u.head_dim)

    def leaf(shape):
        return torch.randn(shape, generator=gen, device=device).to(dtype).requires_grad_()

    q = [leaf(shape_q) for _ in range(u.steps)]
    k = [leaf(shape_kv) for _ in range(u.steps)]
    v = [leaf(shape_kv) for _ in range(u.steps)]
    dout = [torch.randn(shape_q, generator=gen, device=device).to(dtype) for _ in range(u.steps)]
    mask_lengths = torch.tensor(u.lengths_or_full(), dtype=torch.int64, device=device)
    seq_lengths = None if u.lengths is None else mask_lengths.clone()
    return StepInputs(q, k, v, dout, seq_lengths, mask_lengths)


# ---------------------------------------------------------------------------------------------
# Block masks of the torch flex peer

def step_mask_mods(u: Unroll, inp: StepInputs) -> list:
    return [customer_mask_mod(inp.mask_lengths - s, u.seq_len, (s + 1) * u.seq_len) for s in range(u.steps)]


def build_block_masks(u: Unroll, inp: StepInputs, device, builder=None, reps: int = 0):
    """The 7 BlockMasks (B=B, H=1, as the customers build them) and build timings in seconds:
    {'first': [per step], 'median': [per step, over `reps` more builds]} (reps 0: first only)."""
    if builder is None:
        from torch.nn.attention.flex_attention import create_block_mask as builder
    masks, first, median = [], [], []
    for s, mod in enumerate(step_mask_mods(u, inp)):
        kv_len = (s + 1) * u.seq_len

        def build():
            return builder(mod, u.batch, 1, u.seq_len, kv_len, device=device)
        seconds, mask = timed_call(build, device)
        first.append(seconds)
        if reps > 0:
            median.append(statistics.median(timed_call(build, device)[0] for _ in range(reps)))
        masks.append(mask)
    return masks, {"first": first, "median": median}


def timed_call(fn: Callable, device):
    """(wall seconds, result) with the device synchronised on both sides."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


# ---------------------------------------------------------------------------------------------
# Forward of the unroll, one per implementation: fwd(steps=None) -> list of outputs

def flashflex_forward(inp: StepInputs):
    from flashflex.eagle3 import ttt_attention

    def fwd(steps: Optional[int] = None):
        n = len(inp.q) if steps is None else steps
        return [ttt_attention(inp.q[s], inp.k[:s + 1], inp.v[:s + 1], seq_lengths=inp.seq_lengths) for s in range(n)]
    return fwd


def torch_flex_forward(inp: StepInputs, attention: Callable, masks: list):
    """The customers' loop: the cache grows by torch.cat (inside the timed forward, as in their
    training step); masks prebuilt."""
    def fwd(steps: Optional[int] = None):
        n = len(inp.q) if steps is None else steps
        outs, key, value = [], None, None
        for s in range(n):
            key = inp.k[0] if s == 0 else torch.cat([key, inp.k[s]], dim=2)  # [B, Hkv, (s + 1) T, D]
            value = inp.v[0] if s == 0 else torch.cat([value, inp.v[s]], dim=2)
            outs.append(attention(inp.q[s], key, value, block_mask=masks[s], enable_gqa=True))
        return outs
    return fwd


def sdpa_causal_forward(inp: StepInputs, backend=None):
    """The causal part of each step (q_k over K_0 / V_0, every row). Returns (fwd, note); GQA
    through enable_gqa, or K_0 / V_0 repeated to Hq heads beforehand (outside the timed region)
    where the backend refuses it."""
    from contextlib import nullcontext
    from torch.nn.attention import sdpa_kernel

    def call(q, k, v, gqa):
        with sdpa_kernel(backend) if backend is not None else nullcontext():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)

    k0, v0, note = inp.k[0], inp.v[0], "enable_gqa"
    try:  # forward and backward: a backend may take GQA in one and not the other
        out = call(inp.q[0], k0, v0, True)
        torch.autograd.grad(out, (inp.q[0], k0, v0), inp.dout[0])
        del out
        gqa = True
    except Exception as error:  # noqa: BLE001 - a refusal falls back to repeated K/V
        group = inp.q[0].shape[1] // k0.shape[1]
        k0 = k0.detach().repeat_interleave(group, 1).requires_grad_()
        v0 = v0.detach().repeat_interleave(group, 1).requires_grad_()
        gqa, note = False, f"K/V repeated (enable_gqa refused: {type(error).__name__})"

    def fwd(steps: Optional[int] = None):
        n = len(inp.q) if steps is None else steps
        return [call(inp.q[s], k0, v0, gqa) for s in range(n)]
    return fwd, note


def dense_reference_forward(inp: StepInputs, seq_len: int):
    """The customers' formulation with the mask evaluated densely (any device and dtype, with a
    backward everywhere): cat caches, generate_eagle3_mask on index grids, SDPA; rows that see
    nothing give 0, as flex_attention does."""
    def fwd(steps: Optional[int] = None):
        n = len(inp.q) if steps is None else steps
        outs, key, value = [], None, None
        for s in range(n):
            key = inp.k[0] if s == 0 else torch.cat([key, inp.k[s]], dim=2)
            value = inp.v[0] if s == 0 else torch.cat([value, inp.v[s]], dim=2)
            device = key.device
            lengths = inp.mask_lengths - s
            mod = customer_mask_mod(lengths, seq_len, key.shape[2])
            b = torch.arange(lengths.shape[0], device=device)[:, None, None]
            q_idx = torch.arange(seq_len, device=device)[None, :, None]
            kv_idx = torch.arange(key.shape[2], device=device)[None, None, :]
            mask = mod(b, torch.zeros_like(b), q_idx, kv_idx)  # [B, T, (s + 1) T]
            valid = q_idx < lengths[:, None, None]  # [B, T, 1]
            mask = (mask | ~valid)[:, None]  # an empty row would give NaN in SDPA: zeroed below
            q = inp.q[s]
            out = F.scaled_dot_product_attention(q, key, value, attn_mask=mask, enable_gqa=q.shape[1] != key.shape[1])
            outs.append(torch.where(valid[:, None], out, torch.zeros_like(out)))
        return outs
    return fwd


# ---------------------------------------------------------------------------------------------
# Measurement

def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def backward(outs: List[torch.Tensor], inp: StepInputs) -> None:
    torch.autograd.backward(outs, inp.dout[:len(outs)])


class _Marks:
    """Timestamps of one unroll: CUDA events on a GPU (device time between launches included),
    perf_counter on the CPU."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.marks = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def intervals_ms(self) -> List[float]:
        if self.cuda:
            self.marks[-1].synchronize()
            return [a.elapsed_time(b) for a, b in zip(self.marks, self.marks[1:])]
        return [(b - a) * 1e3 for a, b in zip(self.marks, self.marks[1:])]


@dataclass
class PhaseTimes:
    fwd_ms: List[float] = field(default_factory=list)
    bwd_ms: List[float] = field(default_factory=list)

    @staticmethod
    def stats(values: List[float]):
        return (statistics.median(values), min(values), max(values)) if values else (None, None, None)


def time_unroll(fwd: Callable, inp: StepInputs, device, warmup: int, iters: int, with_backward: bool = True,
                flush: Optional[Callable[[], None]] = None) -> PhaseTimes:
    """Median-ready forward / backward phase times of `iters` unrolls after `warmup` ones; with
    `flush` (timing.L2Flush), the L2 is flushed before each phase, outside its interval."""
    times = PhaseTimes()
    for i in range(warmup + iters):
        inp.clear_grads()
        synchronize(device)
        marks = _Marks(device)
        if flush is not None:
            flush()
        marks.mark()
        outs = fwd()
        marks.mark()
        if with_backward:
            if flush is not None:
                flush()
                marks.mark()
            backward(outs, inp)
            marks.mark()
        intervals = marks.intervals_ms()
        del outs
        if i >= warmup:
            times.fwd_ms.append(intervals[0])
            if with_backward:
                times.bwd_ms.append(intervals[-1])
    inp.clear_grads()
    return times


def median_us(fn: Callable, device, iters: int = 20, warmup: int = 3) -> float:
    """Median time of fn() in microseconds: CUDA events on a GPU, wall clock on the CPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        synchronize(device)
        marks = _Marks(device)
        marks.mark()
        fn()
        marks.mark()
        times.append(marks.intervals_ms()[0] * 1e3)
    return statistics.median(times)


def compiled_graphs() -> Optional[int]:
    """Graphs compiled so far in this process (None where torch does not count them)."""
    try:
        from torch._dynamo.utils import counters
        return int(counters["stats"]["unique_graphs"])
    except Exception:  # noqa: BLE001 - a counter moved between torch versions
        return None


def first_calls(fwd: Callable, inp: StepInputs, device, with_backward: bool = True) -> dict:
    """The first calls of an implementation at this problem size: the step-0 forward alone, then
    a whole unroll (forward and backward), wall clock with synchronisation, and how many graphs
    torch.compile built during each (recompilation shows there)."""
    inp.clear_grads()
    graphs0 = compiled_graphs()
    seconds, outs = timed_call(lambda: fwd(1), device)
    del outs
    graphs1 = compiled_graphs()

    def unroll():
        outs = fwd()
        if with_backward:
            backward(outs, inp)
    unroll_seconds, _ = timed_call(unroll, device)
    graphs2 = compiled_graphs()
    inp.clear_grads()
    diff = (lambda a, b: None if a is None or b is None else b - a)
    return {"first_call_ms": seconds * 1e3, "first_unroll_s": unroll_seconds,
            "graphs_first_call": diff(graphs0, graphs1), "graphs_first_unroll": diff(graphs1, graphs2)}


class SavedBytes:
    """Bytes autograd keeps for the backward (unique storages), through saved_tensors_hooks:
    works on every device, but only for eager code (a hook under torch.compile changes what is
    compiled)."""

    def __init__(self):
        self.storages: Dict[int, int] = {}

    def pack(self, t: torch.Tensor):
        try:
            storage = t.untyped_storage()
            self.storages[storage.data_ptr()] = storage.nbytes()
        except Exception:  # noqa: BLE001 - tensors without storage (fakes, wrappers)
            pass
        return t

    @staticmethod
    def unpack(t):
        return t

    def total(self) -> int:
        return sum(self.storages.values())


def measure_memory(fwd: Callable, inp: StepInputs, device, with_backward: bool = True, count_saved: bool = False
                   ) -> dict:
    """One more unroll. On a GPU: peak allocated bytes above what was allocated before it (the
    inputs, output gradients and any masks already exist), after the forward phase (what the
    backward keeps alive) and over the whole unroll; absolute peak too. With count_saved: the
    unique bytes autograd saved for the backward."""
    result = {}
    inp.clear_grads()
    gc.collect()
    cuda = torch.device(device).type == "cuda"
    synchronize(device)
    if cuda:
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    saved = SavedBytes() if count_saved else None
    if saved is not None:
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
            outs = fwd()
    else:
        outs = fwd()
    synchronize(device)
    if cuda:
        result["peak_fwd_bytes"] = torch.cuda.max_memory_allocated() - base
    if with_backward:
        backward(outs, inp)
        synchronize(device)
    if cuda:
        result["peak_bytes"] = torch.cuda.max_memory_allocated() - base
        result["peak_abs_bytes"] = torch.cuda.max_memory_allocated()
        result["base_bytes"] = base
    if saved is not None:
        result["saved_bytes"] = saved.total()
    del outs
    inp.clear_grads()
    return result


def digest(fwd: Callable, inp: StepInputs, with_backward: bool = True) -> dict:
    """A small CPU sample to compare implementations across processes: the last step's output
    (2 heads) and, with the backward, dK_0 (kv head 0; block 0 gets gradients from every step)."""
    inp.clear_grads()
    outs = fwd()
    sample = {"out_last": outs[-1][:, :2].detach().float().cpu()}
    if with_backward:
        backward(outs, inp)
        sample["dk0"] = inp.k[0].grad[:, :1].float().cpu()
    del outs
    inp.clear_grads()
    return sample


def max_abs_diff(a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> Optional[float]:
    if a is None or b is None or a.shape != b.shape:
        return None
    return (a - b).abs().max().item()


def mib(nbytes: Optional[float]) -> Optional[float]:
    return None if nbytes is None else nbytes / 2 ** 20


def tflops(flops: float, ms: Optional[float]) -> Optional[float]:
    return None if not ms else flops / ms * 1e-9


def unique(seq: Sequence) -> list:
    return list(dict.fromkeys(seq))
