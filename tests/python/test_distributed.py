"""flashflex.distributed on CPU over gloo: every rank's out, lse and gradients (q and every
key / value input) equal its rows of the single-process float64 reference (dense_reference.py,
eagle3_reference.py; never flashflex) for causal, document, sliding-window and EAGLE3 TTT masks,
ring and Ulysses, zig-zag and contiguous layouts, at odd lengths (unequal shards), world sizes
1 to 4. float64 inputs run the CPU reference block path, so the distributed composition itself
(ring passes, LSE merges, backward accumulators, all-to-alls, shard offsets) must hold to float64
rounding: |got - ref| <= 1e-10 max|ref|. float32 inputs run flashflex's kernels per block and
are held to helpers.TOL. One spawned group per world size runs every case; a failing rank's
exception fails the test, and a deadline ends a hung group."""

from __future__ import annotations

import datetime
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dense_reference import dense_attention
from eagle3_reference import sdpa_reference
from helpers import LSE_TOL, TOL

import flashflex.distributed as fd
from flashflex.distributed import shard_masks as sm

FLOAT64_TOL = 1e-10
DEADLINE_S = 120
T = 29  # odd: chunks of unequal size for every world size


def _dense(kind: str, seq_len: int, doc_ids=None):
    """The global mask [1 or B, 1, T, T] and its ShardMask."""
    q = torch.arange(seq_len)[:, None]
    kv = torch.arange(seq_len)[None, :]
    if kind == "causal":
        return (kv <= q)[None, None], sm.causal()
    if kind == "sliding_window":
        return ((kv >= q - 5) & (kv <= q + 2))[None, None], sm.sliding_window(5, 2)
    if kind == "causal_document":
        same = doc_ids[:, :, None] == doc_ids[:, None, :]
        return (same & (kv <= q)[None])[:, None], sm.causal() & sm.document(doc_ids)
    raise ValueError(kind)


def _doc_ids(batch: int, seq_len: int) -> torch.Tensor:
    cuts = [[0, 7, 19], [0, 3, 4, 16]]  # document starts per sample (unequal documents)
    ids = torch.zeros(batch, seq_len, dtype=torch.int64)
    for b in range(batch):
        for start in cuts[b % len(cuts)][1:]:
            ids[b, start:] += 1
    return ids


def _loss(out, lse, go, gl):
    """sum(out * go) + sum(lse * gl) over finite lse (EAGLE3's invalid rows have lse -inf)."""
    lse = lse.to(torch.float64)
    return (out.to(torch.float64) * go).sum() + torch.where(torch.isfinite(lse), lse * gl,
                                                            torch.zeros((), dtype=torch.float64)).sum()


def _loss_weights(out, lse, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(out.shape, generator=g, dtype=torch.float64),
            torch.randn(lse.shape, generator=g, dtype=torch.float64))


def _check(what, got, ref, tol, rank, world, layout):
    """got (this rank's) against this rank's rows of ref: |got - ref| <= tol * max|ref| (at least
    1 for lse, whose error near 0 is absolute), -inf exactly where ref is -inf."""
    ref = fd.shard(ref.detach(), 2, world_size=world, rank=rank, layout=layout)
    got = got.detach().to(device="cpu", dtype=torch.float64)
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)}, expected {tuple(ref.shape)}"
    assert torch.equal(torch.isneginf(got), torch.isneginf(ref)), f"{what}: -inf rows differ"
    finite = torch.isfinite(ref)
    assert torch.isfinite(got[finite]).all(), f"{what}: non-finite values"
    magnitude = max(ref[finite].abs().max().item() if finite.any() else 0.0, 1.0 if what.startswith("lse") else 1e-30)
    worst = (got[finite] - ref[finite]).abs().max().item() if finite.any() else 0.0
    assert worst <= tol * magnitude, (f"{what} (rank {rank} of {world}): max error {worst:.3e} exceeds "
                                      f"{tol:g} x {magnitude:.3e}")


def _tolerances(dtype):
    """(out and gradients, lse): float64 to its rounding; the kernels' dtypes as helpers.TOL, the
    gradients of bf16 / fp16 at twice that (their block gradients are rounded before the sum)."""
    if dtype == torch.float64:
        return FLOAT64_TOL, FLOAT64_TOL, FLOAT64_TOL
    return TOL[dtype], LSE_TOL, TOL[dtype] * (1 if dtype == torch.float32 else 2)


def _attention_case(rank, world, *, kind, method, layout, hq, hkv, head_dim, dtype, seed, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    batch = 2
    # Rounded to dtype first: the reference runs on the very values the ranks receive.
    q, k, v = (torch.randn(batch, h, T, head_dim, generator=gen, dtype=torch.float64).to(dtype)
               for h in (hq, hkv, hkv))
    mask, spec = _dense(kind, T, _doc_ids(batch, T))
    ref_in = [t.to(torch.float64, copy=True).requires_grad_() for t in (q, k, v)]
    ref_out, ref_lse = dense_attention(*ref_in, mask=mask)
    go, gl = _loss_weights(ref_out, ref_lse, seed + 1)
    _loss(ref_out, ref_lse, go, gl).backward()

    local = [fd.shard(t.to(device), 2, world_size=world, rank=rank, layout=layout).requires_grad_()
             for t in (q, k, v)]
    attend = fd.ring_attention if method == "ring" else fd.ulysses_attention
    out, lse = attend(*local, spec, seq_len=T, layout=layout, enable_gqa=hq != hkv, return_lse=True)
    shard = lambda t: fd.shard(t, 2, world_size=world, rank=rank, layout=layout)  # noqa: E731
    # The reference's loss weights, on this rank's rows.
    _loss(out, lse, shard(go).to(device), shard(gl).to(device)).backward()

    tol, lse_tol, grad_tol = _tolerances(dtype)
    name = f"{method} {kind} {layout} {dtype}"
    _check(f"out ({name})", out, ref_out, tol, rank, world, layout)
    _check(f"lse ({name})", lse, ref_lse, lse_tol, rank, world, layout)
    for label, got, ref in zip(("dq", "dk", "dv"), local, ref_in):
        _check(f"{label} ({name})", got.grad, ref.grad, grad_tol, rank, world, layout)


def _ttt_case(rank, world, *, method, layout, step, lengths, hq, hkv, head_dim, dtype, seed, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    batch = len(lengths)
    shapes = [(batch, hq, T, head_dim)] + [(batch, hkv, T, head_dim)] * (2 * step + 2)
    inputs = [torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype) for shape in shapes]
    seq_lengths = torch.tensor(lengths)
    ref_in = [t.to(torch.float64, copy=True).requires_grad_() for t in inputs]
    ref_out, ref_lse = sdpa_reference(ref_in[0], ref_in[1:step + 2], ref_in[step + 2:], seq_lengths)

    shard = lambda t: fd.shard(t, 2, world_size=world, rank=rank, layout=layout)  # noqa: E731
    local = [shard(t.to(device)).requires_grad_() for t in inputs]
    out, lse = fd.ttt_attention(local[0], local[1:step + 2], local[step + 2:], lengths, seq_len=T, layout=layout,
                                return_lse=True, method=method)
    go, gl = _loss_weights(ref_out, ref_lse, seed + 1)
    _loss(ref_out, ref_lse, go, gl).backward()
    _loss(out, lse, shard(go).to(device), shard(gl).to(device)).backward()

    tol, lse_tol, grad_tol = _tolerances(dtype)
    name = f"ttt {method} step {step} {layout} {dtype}"
    _check(f"out ({name})", out, ref_out, tol, rank, world, layout)
    _check(f"lse ({name})", lse, ref_lse, lse_tol, rank, world, layout)
    labels = ["dq"] + [f"dk{j}" for j in range(step + 1)] + [f"dv{j}" for j in range(step + 1)]
    for label, got, ref in zip(labels, local, ref_in):
        _check(f"{label} ({name})", got.grad, ref.grad, grad_tol, rank, world, layout)


def _error_case(rank, world, *, seed, device="cpu"):
    """Wrong shards fail on every rank before any transfer, naming the argument and the value."""
    wrong = torch.zeros(1, 1, fd.local_length(T, world, rank) + 1, 16, dtype=torch.float64, device=device)
    with pytest.raises(ValueError, match=f"q: expected local length {fd.local_length(T, world, rank)}"):
        fd.ring_attention(wrong, wrong, wrong, seq_len=T)
    if world > 1:
        heads = torch.zeros(1, world + 1, fd.local_length(T, world, rank), 16, dtype=torch.float64, device=device)
        with pytest.raises(ValueError, match="divisible by the world size"):
            fd.ulysses_attention(heads, heads, heads, seq_len=T)


F64, F32 = torch.float64, torch.float32
CASES = [
    (_attention_case, dict(kind="causal", method="ring", layout="zigzag", hq=4, hkv=2, head_dim=16, dtype=F64)),
    (_attention_case, dict(kind="causal_document", method="ring", layout="zigzag", hq=2, hkv=2, head_dim=16,
                           dtype=F64)),
    (_attention_case, dict(kind="sliding_window", method="ring", layout="contiguous", hq=2, hkv=1, head_dim=16,
                           dtype=F64)),
    (_attention_case, dict(kind="causal_document", method="ulysses", layout="zigzag", hq=12, hkv=6, head_dim=8,
                           dtype=F64)),
    (_ttt_case, dict(method="ring", layout="zigzag", step=2, lengths=[T, 21], hq=4, hkv=2, head_dim=16, dtype=F64)),
    (_ttt_case, dict(method="ulysses", layout="contiguous", step=1, lengths=[17, T], hq=12, hkv=12, head_dim=8,
                     dtype=F64)),
    # flashflex's kernels per block (CPU path), float32.
    (_attention_case, dict(kind="causal_document", method="ring", layout="zigzag", hq=2, hkv=1, head_dim=64,
                           dtype=F32)),
    (_attention_case, dict(kind="causal", method="ulysses", layout="zigzag", hq=12, hkv=6, head_dim=64,
                           dtype=F32)),
    (_ttt_case, dict(method="ring", layout="zigzag", step=1, lengths=[T, 20], hq=2, hkv=1, head_dim=64, dtype=F32)),
    (_error_case, {}),
]


def _worker(rank: int, world: int, port: int, backend: str = "gloo", cases=None, dtype_map=None) -> None:
    """Every case on this rank. nccl: rank r on GPU r; dtype_map replaces the cases' dtypes."""
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    device = "cpu"
    if backend == "nccl":
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # NVLink multicast stays off on the lent machines
        torch.cuda.set_device(rank)
        device = f"cuda:{rank}"
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        for i, (case, kwargs) in enumerate(CASES if cases is None else cases):
            kwargs = dict(kwargs)
            if dtype_map and "dtype" in kwargs:
                kwargs["dtype"] = dtype_map.get(kwargs["dtype"], kwargs["dtype"])
            case(rank, world, seed=100 + i, device=device, **kwargs)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_group(world: int, *worker_args) -> None:
    """_worker on `world` spawned ranks; re-raises a rank's exception; fails after DEADLINE_S."""
    context = mp.start_processes(_worker, args=(world, _free_port(), *worker_args), nprocs=world, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not context.join(timeout=1):  # raises ProcessRaisedException when a rank fails
            assert time.monotonic() < deadline, f"world size {world}: no result within {DEADLINE_S} s (hung?)"
    finally:
        for p in context.processes:
            if p.is_alive():
                p.terminate()
                p.join(5)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_distributed_equals_single_process(world):
    run_group(world)


# Shard awareness without processes: every block mask is the global mask's block, and a block
# declared empty sees nothing.
@pytest.mark.parametrize("kind", ["causal", "sliding_window", "causal_document"])
def test_block_masks_are_global_blocks(kind):
    ids = _doc_ids(2, T)
    dense, spec = _dense(kind, T, ids)
    dense = dense.expand(2, 1, T, T)
    bounds = fd.chunk_bounds(T, 7)
    for qr in bounds:
        for kr in bounds:
            want = dense[:, :, qr[0]:qr[1], kr[0]:kr[1]]
            block = spec.block(qr, kr)
            grids = [torch.arange(n).view([n if i == d else 1 for i in range(4)])
                     for d, n in enumerate((2, 1, qr[1] - qr[0], kr[1] - kr[0]))]
            got = block(*grids).expand(want.shape)
            assert torch.equal(got, want), f"{spec}: block {qr} x {kr} differs from the global mask"
            if spec.empty(qr, kr):
                assert not want.any(), f"{spec}: block {qr} x {kr} declared empty but sees keys"


@pytest.mark.parametrize("world,layout", [(1, "zigzag"), (3, "zigzag"), (4, "zigzag"), (4, "contiguous")])
def test_shard_unshard_round_trip(world, layout):
    x = torch.arange(2 * 3 * T).view(2, 3, T)
    parts = [fd.shard(x, 2, world_size=world, rank=r, layout=layout) for r in range(world)]
    assert sum(p.shape[2] for p in parts) == T
    assert max(p.shape[2] for p in parts) - min(p.shape[2] for p in parts) <= 2
    assert torch.equal(fd.unshard(parts, T, 2, layout), x)
    if layout == "zigzag":  # rank r holds chunks r and 2W-1-r
        bounds = fd.chunk_bounds(T, 2 * world)
        assert fd.rank_ranges(T, world, 0, layout) == [bounds[0], bounds[-1]]
