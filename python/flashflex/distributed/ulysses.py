"""Ulysses attention: all-to-all from sequence-sharded [B, H, L_r, D] on every rank r to
head-sharded [B, H / W, T, D] (rank j: heads [j H/W, (j+1) H/W), every position in global
order), one single-process attention per rank with the mask over the whole sequence, and the
all-to-all back. Any layout (sharding.py) and unequal shards (all_to_all_single with split
sizes). Autograd: each all-to-all is a Function whose backward is the opposite all-to-all, and
the attention is flex_attention's own (a composition, no custom ring backward).
GQA: with Hkv divisible by W the key/value heads are sharded like the query heads (query head h
reads key head h // (Hq / Hkv), on the same rank); otherwise each key/value head is repeated to
the Hq query heads before the all-to-all (more traffic, same result; its gradient sums back)."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.distributed as dist

from ._block import attend_block, block_mask_for
from .shard_masks import ShardMask
from .sharding import LAYOUTS, rank_ranges

__all__ = ["ulysses_attention", "seq_to_heads", "heads_to_seq"]


def ulysses_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[ShardMask] = None,
                      group: Optional[dist.ProcessGroup] = None, *, seq_len: int, layout: str = "zigzag",
                      scale: Optional[float] = None, enable_gqa: bool = False, return_lse: bool = False):
    """Same contract as ring_attention (this rank's rows of the whole-sequence attention), with Hq
    divisible by the world size W."""
    world = dist.get_world_size(group)
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    if mask is not None and not isinstance(mask, ShardMask):
        raise TypeError(f"mask: expected a flashflex.distributed ShardMask or None, got {type(mask).__name__}")
    hq, hkv = q.shape[1], k.shape[1]
    if hq % world != 0:
        raise ValueError(f"q: expected a number of heads divisible by the world size {world}, got {hq}")
    if hq % hkv != 0 or (hq != hkv and not enable_gqa):
        raise ValueError(f"k: expected {hq} heads (as q), or a divisor of {hq} with enable_gqa=True, got {hkv}")
    if hkv % world != 0:  # replicate: every rank's query heads then find their key heads locally
        k, v = (t.repeat_interleave(hq // hkv, dim=1) for t in (k, v))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    qh, kh, vh = (seq_to_heads(t, group, seq_len, layout) for t in (q, k, v))
    mask_full = mask.block((0, seq_len), (0, seq_len)) if mask is not None else None
    out_h, lse_h = attend_block(qh, kh, vh, block_mask_for(mask_full, qh, kh), scale, qh.shape[1] != kh.shape[1])
    out = heads_to_seq(out_h, group, seq_len, layout)
    if not return_lse:
        return out
    return out, heads_to_seq(lse_h.unsqueeze(-1), group, seq_len, layout).squeeze(-1)


def seq_to_heads(x: torch.Tensor, group, seq_len: int, layout: str) -> torch.Tensor:
    """[B, H, L_r, D] sequence-sharded -> [B, H / W, T, D] head-sharded (global order)."""
    return _SeqToHeads.apply(x, group, seq_len, layout)


def heads_to_seq(x: torch.Tensor, group, seq_len: int, layout: str) -> torch.Tensor:
    """[B, H / W, T, D] head-sharded (global order) -> [B, H, L_r, D] sequence-sharded."""
    return _HeadsToSeq.apply(x, group, seq_len, layout)


def _layout(group, seq_len: int, layout: str):
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    ranges = [rank_ranges(seq_len, world, r, layout) for r in range(world)]
    lengths = [sum(e - s for s, e in rs) for rs in ranges]
    # positions[i]: global position of row i of the rank-ordered concatenation of all shards.
    positions = torch.cat([torch.arange(s, e) for rs in ranges for s, e in rs])
    return world, rank, lengths, positions


def _seq_to_heads(x, group, seq_len, layout):
    world, rank, lengths, positions = _layout(group, seq_len, layout)
    b, h, length, d = x.shape
    hs = h // world
    send = x.reshape(b, world, hs, length, d).transpose(0, 1).contiguous()  # [W, B, H/W, L_r, D]
    recv = torch.empty(sum(lengths) * b * hs * d, dtype=x.dtype, device=x.device)
    dist.all_to_all_single(recv, send.reshape(-1), [n * b * hs * d for n in lengths],
                           [length * b * hs * d] * world, group=group)
    parts = torch.split(recv, [n * b * hs * d for n in lengths])
    ranked = torch.cat([p.view(b, hs, n, d) for p, n in zip(parts, lengths)], dim=2)  # rank order
    out = torch.empty_like(ranked)
    out[:, :, positions.to(x.device)] = ranked
    return out


def _heads_to_seq(x, group, seq_len, layout):
    world, rank, lengths, positions = _layout(group, seq_len, layout)
    b, hs, _, d = x.shape
    length = lengths[rank]
    ranked = x[:, :, positions.to(x.device)]  # rank order
    send = torch.cat([p.reshape(-1) for p in torch.split(ranked, lengths, dim=2)])
    recv = torch.empty(world * b * hs * length * d, dtype=x.dtype, device=x.device)
    dist.all_to_all_single(recv, send, [length * b * hs * d] * world, [n * b * hs * d for n in lengths],
                           group=group)
    return recv.view(world, b, hs, length, d).transpose(0, 1).reshape(b, world * hs, length, d)


class _SeqToHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, seq_len, layout):
        ctx.args = (group, seq_len, layout)
        return _seq_to_heads(x, group, seq_len, layout)

    @staticmethod
    def backward(ctx, grad):
        return _heads_to_seq(grad.contiguous(), *ctx.args), None, None, None


class _HeadsToSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, seq_len, layout):
        ctx.args = (group, seq_len, layout)
        return _heads_to_seq(x, group, seq_len, layout)

    @staticmethod
    def backward(ctx, grad):
        return _seq_to_heads(grad.contiguous(), *ctx.args), None, None, None
