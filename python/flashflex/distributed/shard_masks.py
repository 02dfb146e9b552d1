"""Masks in global positions, for sequence-sharded attention.

A ShardMask states a mask over global (q_idx, kv_idx). For a block of queries at global range
[q0, q1) against keys at [k0, k1) it gives the block's flashflex.masks.Mask in the block's local
indices (the built-in masks with their offsets: causal(offset=q0 - k0), ...), or None when the
block sees every key, and says when a block sees no key at all (the ring then skips it).
Combine with `&`. The block mask is then built by flashflex.create_block_mask (C++ builders) or
evaluated densely on the float64 path (_block.py)."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch

from .. import masks as _masks

__all__ = ["ShardMask", "full", "causal", "sliding_window", "document", "valid_rows"]

Range = Tuple[int, int]


class ShardMask:
    """Base: every key visible. Subclasses override block() and empty()."""

    description = "full()"

    def block(self, q: Range, kv: Range) -> Optional[_masks.Mask]:
        return None

    def empty(self, q: Range, kv: Range) -> bool:
        return False

    @property
    def batch(self) -> int:
        """Samples described by the mask's data; 0 if sample-independent."""
        return 0

    def __and__(self, other: "ShardMask") -> "ShardMask":
        if not isinstance(other, ShardMask):
            raise TypeError(f"other: expected a flashflex.distributed ShardMask, got {type(other).__name__}")
        return _And(self, other)

    def __repr__(self) -> str:
        return f"flashflex.distributed.{self.description}"


class _And(ShardMask):
    def __init__(self, a: ShardMask, b: ShardMask):
        self.a, self.b = a, b
        self.description = f"({a.description} & {b.description})"

    def block(self, q, kv):
        ma, mb = self.a.block(q, kv), self.b.block(q, kv)
        if ma is None or mb is None:
            return mb if ma is None else ma
        return ma & mb

    def empty(self, q, kv):
        return self.a.empty(q, kv) or self.b.empty(q, kv)

    @property
    def batch(self):
        return max(self.a.batch, self.b.batch)


def full() -> ShardMask:
    return ShardMask()


class _Causal(ShardMask):
    def __init__(self, offset: int):
        self.offset = offset
        self.description = f"causal(offset={offset})"

    def block(self, q, kv):
        # kv0 + j <= q0 + i + offset  <=>  j <= i + (q0 - kv0 + offset)
        return _masks.causal(q[0] - kv[0] + self.offset)

    def empty(self, q, kv):
        return kv[0] > q[1] - 1 + self.offset


def causal(offset: int = 0) -> ShardMask:
    """kv_idx <= q_idx + offset, in global positions."""
    return _Causal(int(offset))


class _SlidingWindow(ShardMask):
    def __init__(self, left: int, right: int, offset: int):
        self.left, self.right, self.offset = left, right, offset
        self.description = f"sliding_window(left={left}, right={right}, offset={offset})"

    def block(self, q, kv):
        return _masks.sliding_window(self.left, self.right, q[0] - kv[0] + self.offset)

    def empty(self, q, kv):
        lowest = q[0] + self.offset - self.left      # first key of the first row
        highest = q[1] - 1 + self.offset + self.right  # last key of the last row
        return kv[1] - 1 < lowest or kv[0] > highest


def sliding_window(left: int, right: int = 0, offset: int = 0) -> ShardMask:
    """q_idx + offset - left <= kv_idx <= q_idx + offset + right, in global positions."""
    return _SlidingWindow(int(left), int(right), int(offset))


class _Document(ShardMask):
    def __init__(self, doc_ids: torch.Tensor):
        self.doc_ids = doc_ids
        self._sorted = doc_ids.shape[1] < 2 or bool((doc_ids[:, 1:] >= doc_ids[:, :-1]).all())
        self.description = f"document(batch={doc_ids.shape[0]}, seq_len={doc_ids.shape[1]})"

    def block(self, q, kv):
        return _masks.document(self.doc_ids[:, q[0]:q[1]], kv_doc_ids=self.doc_ids[:, kv[0]:kv[1]])

    def empty(self, q, kv):
        # Document ids are non-decreasing in packed sequences; other orders are just never skipped.
        if not self._sorted:
            return False
        ids = self.doc_ids
        return bool((ids[:, q[1] - 1] < ids[:, kv[0]]).all() or (ids[:, q[0]] > ids[:, kv[1] - 1]).all())

    @property
    def batch(self):
        return self.doc_ids.shape[0]


def document(doc_ids: torch.Tensor) -> ShardMask:
    """Packed sequences: q sees kv iff they carry the same document id. doc_ids: the GLOBAL ids,
    an integer tensor [B, T] or [T] (every rank passes the same, full tensor; it is small)."""
    if not isinstance(doc_ids, torch.Tensor) or doc_ids.is_floating_point() or doc_ids.dim() not in (1, 2):
        raise TypeError(f"doc_ids: expected an integer tensor [B, T] or [T], got "
                        f"{type(doc_ids).__name__ if not isinstance(doc_ids, torch.Tensor) else tuple(doc_ids.shape)}")
    ids = doc_ids.to(device="cpu", dtype=torch.int64)
    ids = ids if ids.dim() == 2 else ids.unsqueeze(0)
    return _Document(ids)


class _ValidRows(ShardMask):
    def __init__(self, lengths: torch.Tensor):
        self.lengths = lengths
        self.description = f"valid_rows({lengths.tolist()})"

    def block(self, q, kv):
        # q0 + i < L_b  <=>  i < L_b - q0, clamped to the block's rows.
        local = (self.lengths - q[0]).clamp(0, q[1] - q[0])
        return _masks.padding(q_lengths=local)

    def empty(self, q, kv):
        return bool((self.lengths <= q[0]).all())

    @property
    def batch(self):
        return self.lengths.shape[0]


def valid_rows(lengths: Union[torch.Tensor, Sequence[int]]) -> ShardMask:
    """Row q_idx of sample b sees keys only if q_idx < lengths[b] (global positions)."""
    t = torch.as_tensor(lengths, dtype=torch.int64).to("cpu")
    if t.dim() != 1:
        raise ValueError(f"lengths: expected one length per sample (1-D), got shape {tuple(t.shape)}")
    return _ValidRows(t)
