"""EAGLE3 test-time-training attention (flashflex.eagle3.ttt_attention's contract), with the
sequence sharded over a process group. Row q of sample b (global position) is valid iff
q < L_b - k at step k; a valid row sees K_0[0..q] (causal) and K_j[q] for 1 <= j <= k in one
softmax. Block 0's causal part is sequence-parallel (ring_attention, or ulysses_attention),
under the mask causal & valid_rows(L - k) in global positions. The row-local keys K_j[q] of
the later blocks sit on the rank that holds row q (every block is sharded like q), so their
part is computed there, with no communication, and merged with block 0's part through the
log-sum-exp in torch ops (autograd-correct composition)."""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.distributed as dist

from .ring import ring_attention
from .shard_masks import causal, valid_rows
from .sharding import rank_ranges
from .ulysses import ulysses_attention

__all__ = ["ttt_attention"]

METHODS = ("ring", "ulysses")


def ttt_attention(q: torch.Tensor, k_blocks: Sequence[torch.Tensor], v_blocks: Sequence[torch.Tensor],
                  seq_lengths: Optional[Union[torch.Tensor, Sequence[int]]] = None,
                  group: Optional[dist.ProcessGroup] = None, *, seq_len: int, layout: str = "zigzag",
                  scale: Optional[float] = None, return_lse: bool = False, method: str = "ring"):
    """This rank's rows of EAGLE3 TTT attention. q [B, Hq, L, D] and every block [B, Hkv, L, D]
    are this rank's shards under `layout` (sharding.py) of the global length `seq_len` (T).
    seq_lengths: L_b per sample (a list of ints or an integer tensor [B], each in [0, T]; read on
    the host, so a CUDA tensor costs one sync), None = T. method: "ring" or "ulysses" for block 0.
    Returns out [B, Hq, L, D] (and lse [B, Hq, L], float32, float64 for float64 inputs; -inf and
    out 0 on invalid rows)."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    k_blocks, v_blocks = list(k_blocks), list(v_blocks)
    if not k_blocks or len(v_blocks) != len(k_blocks):
        raise ValueError(f"k_blocks / v_blocks: expected the same non-zero number of blocks, got {len(k_blocks)} "
                         f"and {len(v_blocks)}")
    for name, blocks in (("k_blocks", k_blocks), ("v_blocks", v_blocks)):
        for j, t in enumerate(blocks):
            if t.shape != k_blocks[0].shape:
                raise ValueError(f"{name}[{j}]: expected shape {tuple(k_blocks[0].shape)} (as k_blocks[0]), got "
                                 f"{tuple(t.shape)}")
    step = len(k_blocks) - 1
    batch, hq = q.shape[0], q.shape[1]
    lengths = _lengths(seq_lengths, batch, seq_len)
    valid_len = (lengths - step).clamp(min=0)  # rows q < L_b - k are valid
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    attend = ring_attention if method == "ring" else ulysses_attention
    out0, lse0 = attend(q, k_blocks[0], v_blocks[0], causal() & valid_rows(valid_len), group, seq_len=seq_len,
                        layout=layout, scale=scale, enable_gqa=hq != k_blocks[0].shape[1], return_lse=True)
    if step == 0:
        return (out0, lse0) if return_lse else out0
    out, lse = _merge_row_local(q, k_blocks[1:], v_blocks[1:], out0, lse0, valid_len, group, seq_len, layout, scale)
    return (out, lse) if return_lse else out


def _lengths(seq_lengths, batch: int, seq_len: int) -> torch.Tensor:
    if seq_lengths is None:
        return torch.full((batch,), seq_len, dtype=torch.int64)
    t = torch.as_tensor(seq_lengths).to(device="cpu", dtype=torch.int64)
    if tuple(t.shape) != (batch,):
        raise ValueError(f"seq_lengths: expected {batch} lengths (one per sample of q), got shape {tuple(t.shape)}")
    if bool(((t < 0) | (t > seq_len)).any()):
        raise ValueError(f"seq_lengths: expected lengths in [0, {seq_len}], got {t.tolist()}")
    return t


def _merge_row_local(q, k_rest, v_rest, out0, lse0, valid_len, group, seq_len, layout, scale):
    """Block 0's (out0, lse0) merged with the row-local keys K_j[q], V_j[q] (j >= 1)."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    positions = torch.cat([torch.arange(s, e) for s, e in rank_ranges(seq_len, world, rank, layout)])
    valid = (positions[None, :] < valid_len[:, None]).to(q.device)[:, None, :]  # [B, 1, L]
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    group_size = q.shape[1] // k_rest[0].shape[1]
    qa = q.to(acc)
    scores = torch.stack([scale * (qa * k.to(acc).repeat_interleave(group_size, dim=1)).sum(-1) for k in k_rest],
                         dim=-1)  # [B, Hq, L, k]
    values = torch.stack([v.to(acc).repeat_interleave(group_size, dim=1) for v in v_rest], dim=-2)  # [B, Hq, L, k, D]
    lse_d = torch.logsumexp(scores, dim=-1)
    out_d = (torch.softmax(scores, dim=-1).unsqueeze(-1) * values).sum(-2)
    # Invalid rows: block 0 saw nothing (lse0 = -inf); a finite stand-in keeps NaN out of
    # autograd, and the final where() gives them out 0, lse -inf and zero gradients.
    lse0_safe = torch.where(valid, lse0.to(acc), torch.zeros((), dtype=acc, device=q.device))
    lse = torch.logaddexp(lse0_safe, lse_d)
    out = (torch.exp(lse0_safe - lse).unsqueeze(-1) * out0.to(acc) + torch.exp(lse_d - lse).unsqueeze(-1) * out_d)
    out = torch.where(valid.unsqueeze(-1), out, torch.zeros((), dtype=acc, device=q.device)).to(q.dtype)
    lse = torch.where(valid, lse, torch.full((), float("-inf"), dtype=acc, device=q.device))
    return out, lse if acc == torch.float64 else lse.to(torch.float32)
