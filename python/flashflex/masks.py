"""Built-in masks. Each is a `Mask`: flashflex.create_block_mask builds its BlockMask through the
C++ builders (analytic tile classification, bitmaps for partial tiles only, never a dense
Q_LEN x KV_LEN evaluation), and calling it like a torch mask_mod, m(b, h, q_idx, kv_idx),
evaluates the same predicate with torch ops (so it also works with torch's create_block_mask)."""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence, Union

import torch

from . import _C

__all__ = ["Mask", "causal", "sliding_window", "document", "prefix_lm", "padding", "eagle3",
           "and_masks", "or_masks"]

IntsLike = Union[torch.Tensor, Sequence[int]]


class Mask:
    """A mask predicate known to the C++ builders, usable as a torch mask_mod."""

    def __init__(self, native: "_C.Mask", mask_mod: Callable, description: str):
        self._native = native
        self._mask_mod = mask_mod
        self._description = description

    def __call__(self, b, h, q_idx, kv_idx):
        return self._mask_mod(b, h, q_idx, kv_idx)

    def __and__(self, other: "Mask") -> "Mask":
        _check_mask("other", other)
        a, b = self._mask_mod, other._mask_mod
        return Mask(self._native & other._native, lambda *i: a(*i) & b(*i),
                    f"({self._description} & {other._description})")

    def __or__(self, other: "Mask") -> "Mask":
        _check_mask("other", other)
        a, b = self._mask_mod, other._mask_mod
        return Mask(self._native | other._native, lambda *i: a(*i) | b(*i),
                    f"({self._description} | {other._description})")

    @property
    def batch(self) -> int:
        """Samples described by the mask's data (lengths, doc ids); 0 if sample-independent."""
        return self._native.batch

    def __repr__(self) -> str:
        return f"flashflex.masks.{self._description}"


def causal(offset: int = 0) -> Mask:
    """kv_idx <= q_idx + offset (offset = KV_LEN - Q_LEN aligns the diagonal bottom-right)."""
    offset = int(offset)
    return Mask(_C.Mask.causal(offset), lambda b, h, q, kv: kv <= q + offset, f"causal(offset={offset})")


def sliding_window(left: int, right: int = 0, offset: int = 0) -> Mask:
    """q_idx + offset - left <= kv_idx <= q_idx + offset + right."""
    left, right, offset = int(left), int(right), int(offset)

    def mask_mod(b, h, q, kv):
        return (kv >= q + offset - left) & (kv <= q + offset + right)

    return Mask(_C.Mask.sliding_window(left, right, offset), mask_mod,
                f"sliding_window(left={left}, right={right}, offset={offset})")


def document(doc_ids: torch.Tensor, kv_doc_ids: Optional[torch.Tensor] = None) -> Mask:
    """Packed sequences: q sees kv iff they carry the same document id. doc_ids is an integer
    tensor [B, Q_LEN] (or [Q_LEN], the same for every sample); kv_doc_ids [B, KV_LEN] defaults to
    doc_ids (self-attention)."""
    q_ids = _ids_2d("doc_ids", doc_ids)
    kv_ids = q_ids if kv_doc_ids is None else _ids_2d("kv_doc_ids", kv_doc_ids)
    if kv_ids.shape[0] != q_ids.shape[0]:
        raise ValueError(f"kv_doc_ids: expected batch {q_ids.shape[0]} (as doc_ids), got {kv_ids.shape[0]}")
    batch = q_ids.shape[0]
    native = _C.Mask.document(q_ids.flatten().tolist(), [] if kv_doc_ids is None else kv_ids.flatten().tolist(),
                              batch)

    def mask_mod(b, h, q, kv):
        return _at(q_ids, b % batch, q) == _at(kv_ids, b % batch, kv)

    return Mask(native, mask_mod, f"document(batch={batch}, q_len={q_ids.shape[1]})")


def prefix_lm(prefix_lengths: IntsLike) -> Mask:
    """Prefix-LM: kv_idx < prefix_lengths[b] (bidirectional prefix) or kv_idx <= q_idx."""
    lengths = _ints("prefix_lengths", prefix_lengths)

    def mask_mod(b, h, q, kv):
        return (kv < _at(lengths, b)) | (kv <= q)

    return Mask(_C.Mask.prefix_lm(lengths.tolist()), mask_mod, f"prefix_lm({lengths.tolist()})")


def padding(q_lengths: Optional[IntsLike] = None, kv_lengths: Optional[IntsLike] = None) -> Mask:
    """Per-sample valid lengths: q_idx < q_lengths[b] and kv_idx < kv_lengths[b] (None: no limit)."""
    if q_lengths is None and kv_lengths is None:
        raise ValueError("padding: expected q_lengths or kv_lengths, got neither")
    q_len = None if q_lengths is None else _ints("q_lengths", q_lengths)
    kv_len = None if kv_lengths is None else _ints("kv_lengths", kv_lengths)

    def mask_mod(b, h, q, kv):
        keep = torch.ones_like(q, dtype=torch.bool) if q_len is None else q < _at(q_len, b)
        return keep if kv_len is None else keep & (kv < _at(kv_len, b))

    native = _C.Mask.padding([] if q_len is None else q_len.tolist(), [] if kv_len is None else kv_len.tolist())
    return Mask(native, mask_mod, "padding(...)")


def eagle3(step: int, block_len: int, lengths: Optional[IntsLike] = None) -> Mask:
    """EAGLE3 test-time training at step `step`: keys are step + 1 blocks of block_len columns;
    row q of sample b sees column c iff q < lengths[b] - step and either c < block_len and
    c <= q, or c == j * block_len + q for some 1 <= j <= step. Q_LEN = block_len,
    KV_LEN = (step + 1) * block_len."""
    step, block_len = int(step), int(block_len)
    valid_len = None if lengths is None else _ints("lengths", lengths)

    def mask_mod(b, h, q, kv):
        block, col = kv // block_len, kv % block_len
        causal_part = (block == 0) & (col <= q)
        diagonal = (block >= 1) & (block <= step) & (col == q)
        seen = causal_part | diagonal
        if valid_len is None:
            return seen & (q < block_len - step)
        return seen & (q < _at(valid_len, b) - step)

    native = _C.Mask.eagle3(step, block_len, [] if valid_len is None else valid_len.tolist())
    return Mask(native, mask_mod, f"eagle3(step={step}, block_len={block_len})")


def and_masks(*masks: Mask) -> Mask:
    """Visible where every mask is visible."""
    _check_some("and_masks", masks)
    return functools.reduce(lambda a, b: a & b, masks)


def or_masks(*masks: Mask) -> Mask:
    """Visible where any mask is visible."""
    _check_some("or_masks", masks)
    return functools.reduce(lambda a, b: a | b, masks)


def _at(table: torch.Tensor, *index):
    """table[index] with the table moved to the indices' device (mask_mods run where torch runs them)."""
    return table.to(index[0].device)[index]


def _check_mask(name: str, m) -> None:
    if not isinstance(m, Mask):
        raise TypeError(f"{name}: expected a flashflex.masks.Mask (causal, sliding_window, document, prefix_lm, "
                        f"padding, eagle3 or a combination), got {type(m).__name__}")


def _check_some(name: str, masks) -> None:
    if not masks:
        raise ValueError(f"{name}: expected at least one mask, got none")
    for i, m in enumerate(masks):
        _check_mask(f"{name}: mask {i}", m)


def _ints(name: str, values: IntsLike) -> torch.Tensor:
    t = torch.as_tensor(values)
    if t.dim() != 1 or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name}: expected a 1-D integer tensor or list (one value per sample), got "
                         f"shape {tuple(t.shape)} of {t.dtype}")
    return t.to(device="cpu", dtype=torch.int64)


def _ids_2d(name: str, ids: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(ids)
    if t.is_floating_point() or t.dim() not in (1, 2):
        raise ValueError(f"{name}: expected an integer tensor [B, LEN] or [LEN], got shape {tuple(t.shape)} "
                         f"of {t.dtype}")
    t = t.to(device="cpu", dtype=torch.int64)
    if t.numel() and (t.min() < torch.iinfo(torch.int32).min or t.max() > torch.iinfo(torch.int32).max):
        raise ValueError(f"{name}: expected ids that fit in int32")
    return t if t.dim() == 2 else t.unsqueeze(0)
