"""Sequence sharding of context parallelism: which global positions each rank holds.

A sequence of T positions is cut into chunks whose sizes differ by at most one (the first T % n
chunks are one longer), so any T and any world size W work; a chunk may be empty when T < n.
  "zigzag":     2W chunks; rank i holds chunks i and 2W-1-i, in that order. Under a causal mask
                every rank then has the same work (an early chunk pairs with a late one).
  "contiguous": W chunks; rank i holds chunk i.
A rank's local tensor is its chunks concatenated along the sequence dimension. The ring, Ulysses
and EAGLE3 paths (ring.py, ulysses.py, ttt.py) read these ranges to give each block its global
positions (shard_masks.py)."""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.distributed as dist

__all__ = ["LAYOUTS", "chunk_bounds", "rank_ranges", "local_length", "shard", "unshard"]

LAYOUTS = ("zigzag", "contiguous")
Range = Tuple[int, int]  # [start, end) in global positions


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


def chunk_bounds(seq_len: int, num_chunks: int) -> List[Range]:
    """num_chunks ranges covering [0, seq_len), sizes differing by at most one (longer first)."""
    _check_positive("seq_len", seq_len)
    _check_positive("num_chunks", num_chunks)
    base, extra = divmod(seq_len, num_chunks)
    bounds, start = [], 0
    for c in range(num_chunks):
        end = start + base + (1 if c < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def rank_ranges(seq_len: int, world_size: int, rank: int, layout: str = "zigzag") -> List[Range]:
    """The global ranges rank `rank` holds, in local order (empty ranges dropped)."""
    _check_layout(layout)
    _check_positive("world_size", world_size)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank: expected an int in [0, {world_size}), got {rank!r}")
    if layout == "zigzag":
        bounds = chunk_bounds(seq_len, 2 * world_size)
        chosen = [bounds[rank], bounds[2 * world_size - 1 - rank]]
    else:
        chosen = [chunk_bounds(seq_len, world_size)[rank]]
    return [r for r in chosen if r[1] > r[0]]


def local_length(seq_len: int, world_size: int, rank: int, layout: str = "zigzag") -> int:
    return sum(e - s for s, e in rank_ranges(seq_len, world_size, rank, layout))


def _world(group) -> Tuple[int, int]:
    return dist.get_world_size(group), dist.get_rank(group)


def shard(x: torch.Tensor, dim: int = 2, group: Optional[dist.ProcessGroup] = None, layout: str = "zigzag",
          world_size: Optional[int] = None, rank: Optional[int] = None) -> torch.Tensor:
    """This rank's part of the full tensor `x` along `dim` (a copy; differentiable). world_size /
    rank default to the group's; pass them to shard without a process group (tests, data prep)."""
    if world_size is None or rank is None:
        world_size, rank = _world(group)
    ranges = rank_ranges(x.shape[dim], world_size, rank, layout)
    if not ranges:
        return x.narrow(dim, 0, 0).clone()
    return torch.cat([x.narrow(dim, s, e - s) for s, e in ranges], dim=dim)


def unshard(parts: List[torch.Tensor], seq_len: int, dim: int = 2, layout: str = "zigzag") -> torch.Tensor:
    """The full tensor from every rank's local part (parts[r] of rank r, as shard gives them)."""
    world_size = len(parts)
    pieces = {}
    for r, part in enumerate(parts):
        ranges = rank_ranges(seq_len, world_size, r, layout)
        expected = sum(e - s for s, e in ranges)
        if part.shape[dim] != expected:
            raise ValueError(f"parts[{r}]: expected length {expected} along dim {dim} (rank {r} of {world_size}, "
                             f"{layout}), got {part.shape[dim]}")
        offset = 0
        for s, e in ranges:
            pieces[s] = part.narrow(dim, offset, e - s)
            offset += e - s
    return torch.cat([pieces[s] for s in sorted(pieces)], dim=dim)
