"""Ring attention: sequence-sharded attention whose key/value shards travel around the ring of
ranks (_p2p.Ring, async, overlapped with the block computed meanwhile) while each rank keeps its
queries; block results merge through their log-sum-exp (_block.merge_partials).

A torch.autograd.Function. Forward: W steps; at step s rank r holds the K/V shard of rank
r - s, starts sending it on, attends its query chunks to that shard's chunks (blocks the mask
leaves empty are skipped) and merges. Backward: the K/V shards go around once more, each with a
dK/dV accumulator that every rank adds its block gradients to before passing it on; after W
steps the accumulator is back at its owner. A block's gradients come from the public
flex_attention autograd on the block recomputed (its forward runs once more), with the
gradient the merge sends to its (out_b, lse_b): with w_b = exp(lse_b - lse),
  dout_b = w_b dout,   dlse_b = w_b (dout . (out_b - out) + dlse).
No rank ever holds more than its own shard and two travelling ones."""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.distributed as dist

from ._block import attend_block, block_mask_for, merge_partials, partial_weight
from ._p2p import Ring, wait_all
from .shard_masks import ShardMask
from .sharding import LAYOUTS, rank_ranges

__all__ = ["ring_attention"]

_KV_TAG, _GRAD_TAG = 0, 1


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[ShardMask] = None,
                   group: Optional[dist.ProcessGroup] = None, *, seq_len: int, layout: str = "zigzag",
                   scale: Optional[float] = None, enable_gqa: bool = False, return_lse: bool = False):
    """Attention of this rank's queries q [B, Hq, L, D] over the keys / values of every rank,
    each rank passing its own k, v [B, Hkv, L, D]; L is this rank's length under `layout`
    (sharding.py; `seq_len` is the global length T). `mask`: a shard_masks.ShardMask in global
    positions, or None (every key). Returns this rank's out [B, Hq, L, D] (and lse [B, Hq, L]:
    float32, float64 for float64 inputs), equal to the rows of single-process attention over the
    whole sequence. Differentiable in q, k, v, and through lse."""
    ring = Ring(group)
    _check_args(q, k, v, mask, seq_len, layout, enable_gqa, ring)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    out, lse = _RingAttention.apply(q, k, v, mask, ring, seq_len, layout, scale, enable_gqa)
    return (out, lse) if return_lse else out


def _check_args(q, k, v, mask, seq_len, layout, enable_gqa, ring) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    if mask is not None and not isinstance(mask, ShardMask):
        raise TypeError(f"mask: expected a flashflex.distributed ShardMask (causal, sliding_window, document, "
                        f"valid_rows, ...) or None, got {type(mask).__name__}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name}: expected a 4-d tensor [B, H, L, D], got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    expected = sum(e - s for s, e in rank_ranges(seq_len, ring.world_size, ring.rank, layout))
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.shape[2] != expected:
            raise ValueError(f"{name}: expected local length {expected} (rank {ring.rank} of {ring.world_size}, "
                             f"seq_len {seq_len}, {layout}), got {t.shape[2]}")
    if k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3]:
        raise ValueError(f"k / v: expected equal shapes [{q.shape[0]}, Hkv, {expected}, {q.shape[3]}], got "
                         f"{tuple(k.shape)} and {tuple(v.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"k / v: expected dtype {q.dtype} (as q), got {k.dtype} and {v.dtype}")
    hq, hkv = q.shape[1], k.shape[1]
    if hq % hkv != 0 or (hq != hkv and not enable_gqa):
        raise ValueError(f"k: expected {hq} heads (as q), or a divisor of {hq} with enable_gqa=True, got {hkv}")
    if expected == 0:
        raise ValueError(f"seq_len: {seq_len} leaves rank {ring.rank} of {ring.world_size} no position ({layout}); "
                         f"expected at least {2 * ring.world_size if layout == 'zigzag' else ring.world_size}")


def _pieces(ranges: List[Tuple[int, int]]):
    """(global range, local offset) of each chunk of a shard."""
    offset, out = 0, []
    for s, e in ranges:
        out.append(((s, e), offset))
        offset += e - s
    return out


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, ring: Ring, seq_len, layout, scale, enable_gqa):
        world = ring.world_size
        shards = [_pieces(rank_ranges(seq_len, world, o, layout)) for o in range(world)]
        acc = torch.float64 if q.dtype == torch.float64 else torch.float32
        out = torch.zeros(q.shape, dtype=acc, device=q.device)
        lse = torch.full(q.shape[:-1], float("-inf"), dtype=acc, device=q.device)
        prepared = {}  # (q range, kv range) -> block mask, built once, reused by the backward
        kv = torch.stack([k.detach(), v.detach()])  # [2, B, Hkv, L, D]: one message per step
        for step in range(world):
            origin = ring.origin(step)
            requests, incoming = _start_shift(ring, kv, shards, step, _KV_TAG)
            with torch.no_grad():
                for qr, qo, kr, ko in _blocks(mask, shards[ring.rank], shards[origin]):
                    qs, ks, vs = _slices(q, kv, qr, qo, kr, ko)
                    key = (qr, kr)
                    if key not in prepared:
                        prepared[key] = block_mask_for(mask.block(qr, kr) if mask is not None else None, qs, ks)
                    ob, lb = attend_block(qs, ks, vs, prepared[key], scale, enable_gqa)
                    rows = slice(qo, qo + qr[1] - qr[0])
                    o_new, l_new = merge_partials(out[:, :, rows], lse[:, :, rows], ob.to(acc), lb.to(acc))
                    out[:, :, rows], lse[:, :, rows] = o_new, l_new
            wait_all(requests)
            kv = incoming
        out = out.to(q.dtype)
        lse = lse if acc == torch.float64 else lse.to(torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.mask, ctx.ring, ctx.shards, ctx.prepared = mask, ring, shards, prepared
        ctx.scale, ctx.enable_gqa = scale, enable_gqa
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        ring, shards, mask = ctx.ring, ctx.shards, ctx.mask
        world = ring.world_size
        acc = torch.float64 if q.dtype == torch.float64 else torch.float32
        dout = torch.zeros(out.shape, dtype=acc, device=q.device) if dout is None else dout.to(acc)
        dlse = torch.zeros(lse.shape, dtype=acc, device=q.device) if dlse is None else dlse.to(acc)
        out_acc, lse_acc = out.to(acc), lse.to(acc)
        dq = torch.zeros(q.shape, dtype=acc, device=q.device)
        kv = torch.stack([k.detach(), v.detach()])
        grad_requests, grad_in = [], None
        for step in range(world):
            origin = ring.origin(step)
            requests, incoming = _start_shift(ring, kv, shards, step, _KV_TAG)
            dkv = torch.zeros(kv.shape, dtype=acc, device=q.device)
            for qr, qo, kr, ko in _blocks(mask, shards[ring.rank], shards[origin]):
                rows = slice(qo, qo + qr[1] - qr[0])
                cols = slice(ko, ko + kr[1] - kr[0])
                gq, gk, gv = _block_grads(ctx, *_slices(q, kv, qr, qo, kr, ko), ctx.prepared[(qr, kr)],
                                          dout[:, :, rows], dlse[:, :, rows], out_acc[:, :, rows],
                                          lse_acc[:, :, rows])
                dq[:, :, rows] += gq
                dkv[0, :, :, cols] += gk
                dkv[1, :, :, cols] += gv
            if step > 0:
                wait_all(grad_requests)
                dkv += grad_in
            if world > 1:  # pass the accumulator on; the last pass brings it home
                grad_requests, grad_in = _start_shift(ring, dkv, shards, step, _GRAD_TAG)
            else:
                grad_in = dkv
            wait_all(requests)
            kv = incoming
        wait_all(grad_requests)
        return dq.to(q.dtype), grad_in[0].to(k.dtype), grad_in[1].to(v.dtype), None, None, None, None, None, None


def _start_shift(ring: Ring, send: torch.Tensor, shards, step: int, tag: int):
    """Start passing `send` (the shard of origin(step), or its accumulator) on; receive the one of
    origin(step + 1). No transfer on the last K/V step, none at all with one rank."""
    if ring.world_size == 1 or (tag == _KV_TAG and step == ring.world_size - 1):
        return [], None
    length = sum(e - s for (s, e), _ in shards[ring.origin(step + 1)])
    shape = list(send.shape)
    shape[3] = length
    incoming = torch.empty(shape, dtype=send.dtype, device=send.device)
    return ring.shift(send, incoming, tag), incoming


def _blocks(mask, q_pieces, kv_pieces):
    for qr, qo in q_pieces:
        for kr, ko in kv_pieces:
            if mask is None or not mask.empty(qr, kr):
                yield qr, qo, kr, ko


def _slices(q, kv, qr, qo, kr, ko):
    qs = q.narrow(2, qo, qr[1] - qr[0])
    ks = kv[0].narrow(2, ko, kr[1] - kr[0])
    vs = kv[1].narrow(2, ko, kr[1] - kr[0])
    return qs, ks, vs


def _block_grads(ctx, qs, ks, vs, prepared, dout, dlse, out, lse):
    """(dq, dk, dv) of one block, in the accumulation dtype of dout."""
    with torch.enable_grad():
        qs, ks, vs = (t.detach().requires_grad_() for t in (qs, ks, vs))
        ob, lb = attend_block(qs, ks, vs, prepared, ctx.scale, ctx.enable_gqa)
        w = partial_weight(lb.detach().to(lse.dtype), lse)
        g_out = w.unsqueeze(-1) * dout
        g_lse = w * ((dout * (ob.detach().to(out.dtype) - out)).sum(-1) + dlse)
        grads = torch.autograd.grad((ob, lb), (qs, ks, vs), (g_out.to(ob.dtype), g_lse.to(lb.dtype)))
    return tuple(g.to(dout.dtype) for g in grads)
