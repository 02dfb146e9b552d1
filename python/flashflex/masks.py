"""Built-in masks. Each is a `Mask`: flashflex.create_block_mask builds its BlockMask through the
C++ builders (analytic tile classification, bitmaps for partial tiles only, never a dense
Q_LEN x KV_LEN evaluation), and calling it like a torch mask_mod, m(b, h, q_idx, kv_idx),
evaluates the same predicate with torch ops (so it also works with torch's create_block_mask)."""

from __future__ import annotations

import functools
import operator
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
    offset = _int("causal", "offset", offset)
    return Mask(_C.Mask.causal(offset), lambda b, h, q, kv: kv <= q + offset, f"causal(offset={offset})")


def sliding_window(left: int, right: int = 0, offset: int = 0) -> Mask:
    """q_idx + offset - left <= kv_idx <= q_idx + offset + right."""
    left, right = _int("sliding_window", "left", left), _int("sliding_window", "right", right)
    offset = _int("sliding_window", "offset", offset)

    def mask_mod(b, h, q, kv):
        return (kv >= q + offset - left) & (kv <= q + offset + right)

    return Mask(_C.Mask.sliding_window(left, right, offset), mask_mod,
                f"sliding_window(left={left}, right={right}, offset={offset})")


def document(doc_ids: torch.Tensor, kv_doc_ids: Optional[torch.Tensor] = None) -> Mask:
    """Packed sequences: q sees kv iff they carry the same document id. doc_ids is an integer
    tensor [B, Q_LEN] (or [Q_LEN], the same for every sample); kv_doc_ids [B, KV_LEN] defaults to
    doc_ids (self-attention)."""
    q_ids = _ids_2d("document", "doc_ids", doc_ids)
    kv_ids = q_ids if kv_doc_ids is None else _ids_2d("document", "kv_doc_ids", kv_doc_ids)
    if kv_ids.shape[0] != q_ids.shape[0]:
        raise ValueError(f"kv_doc_ids: expected batch {q_ids.shape[0]} (as doc_ids), got {kv_ids.shape[0]}")
    batch = q_ids.shape[0]
    native = _C.Mask.document(q_ids.flatten().tolist(), [] if kv_doc_ids is None else kv_ids.flatten().tolist(),
                              batch)

    def mask_mod(b, h, q, kv):
        return _at("document", q_ids, b, q) == _at("document", kv_ids, b, kv)

    return Mask(native, mask_mod, f"document(batch={batch}, q_len={q_ids.shape[1]})")


def prefix_lm(prefix_lengths: IntsLike) -> Mask:
    """Prefix-LM: kv_idx < prefix_lengths[b] (bidirectional prefix) or kv_idx <= q_idx."""
    lengths = _ints("prefix_lm", "prefix_lengths", prefix_lengths)

    def mask_mod(b, h, q, kv):
        return (kv < _at("prefix_lm", lengths, b)) | (kv <= q)

    return Mask(_C.Mask.prefix_lm(lengths.tolist()), mask_mod, f"prefix_lm({lengths.tolist()})")


def padding(q_lengths: Optional[IntsLike] = None, kv_lengths: Optional[IntsLike] = None) -> Mask:
    """Per-sample valid lengths: q_idx < q_lengths[b] and kv_idx < kv_lengths[b] (None: no limit)."""
    if q_lengths is None and kv_lengths is None:
        raise ValueError("padding: expected q_lengths or kv_lengths, got neither")
    q_len = None if q_lengths is None else _ints("padding", "q_lengths", q_lengths)
    kv_len = None if kv_lengths is None else _ints("padding", "kv_lengths", kv_lengths)

    def mask_mod(b, h, q, kv):
        keep = torch.ones_like(q, dtype=torch.bool) if q_len is None else q < _at("padding", q_len, b)
        return keep if kv_len is None else keep & (kv < _at("padding", kv_len, b))

    native = _C.Mask.padding([] if q_len is None else q_len.tolist(), [] if kv_len is None else kv_len.tolist())
    return Mask(native, mask_mod, "padding(...)")


def eagle3(step: int, block_len: int, lengths: Optional[IntsLike] = None) -> Mask:
    """EAGLE3 test-time training at step `step`: keys are step + 1 blocks of block_len columns;
    row q of sample b sees column c iff q < lengths[b] - step and either c < block_len and
    c <= q, or c == j * block_len + q for some 1 <= j <= step; each length is in [0, block_len].
    Q_LEN = block_len, KV_LEN = (step + 1) * block_len."""
    step, block_len = _int("eagle3", "step", step), _int("eagle3", "block_len", block_len)
    valid_len = None if lengths is None else _ints("eagle3", "lengths", lengths)

    def mask_mod(b, h, q, kv):
        block, col = kv // block_len, kv % block_len
        causal_part = (block == 0) & (col <= q)
        diagonal = (block >= 1) & (block <= step) & (col == q)
        seen = causal_part | diagonal
        if valid_len is None:
            return seen & (q < block_len - step)
        return seen & (q < _at("eagle3", valid_len, b) - step)

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


def _at(fn: str, table: torch.Tensor, b, *index):
    """table[b, *index] with the table moved to the indices' device (mask_mods run where torch runs
    them). The one batch rule of both block-mask routes: data of one sample apply to every sample;
    data of N > 1 samples need b < N (torch's create_block_mask with B = N)."""
    table = table.to(b.device)
    if table.shape[0] == 1:
        return table[(torch.zeros_like(b), *index)]
    try:
        return table[(b, *index)]
    except IndexError as e:
        raise ValueError(f"{fn}: the mask's data describe {table.shape[0]} samples, got a sample index past them; "
                         f"build the block mask with B = {table.shape[0]} (or give one sample's data to share it "
                         f"across the batch)") from e


def _check_mask(name: str, m) -> None:
    if not isinstance(m, Mask):
        raise TypeError(f"{name}: expected a flashflex.masks.Mask (causal, sliding_window, document, prefix_lm, "
                        f"padding, eagle3 or a combination), got {type(m).__name__}")


def _check_some(name: str, masks) -> None:
    if not masks:
        raise ValueError(f"{name}: expected at least one mask, got none")
    for i, m in enumerate(masks):
        _check_mask(f"{name}: mask {i}", m)


_INT64_MIN, _INT64_MAX = -2**63, 2**63 - 1


def _int(fn: str, name: str, value) -> int:
    """An int argument (a Python or numpy integer, or a one-element integer tensor) within int64."""
    if isinstance(value, bool):
        raise TypeError(f"{fn}: expected {name} as an int, got bool {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{fn}: expected {name} as an int, got {_describe(value)}") from None
    if not _INT64_MIN <= v <= _INT64_MAX:
        raise ValueError(f"{fn}: expected {name} in the int64 range [{_INT64_MIN}, {_INT64_MAX}], got {v}")
    return v


def _ints(fn: str, name: str, values: IntsLike) -> torch.Tensor:
    """One int per sample: an integer tensor [B] or a list / tuple of ints, as int64 on the CPU."""
    if isinstance(values, (list, tuple)):
        items = [_int(fn, f"{name}[{i}]", v) for i, v in enumerate(values)]
        return torch.tensor(items, dtype=torch.int64)
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"{fn}: expected {name} as a 1-D integer tensor or list (one value per sample), got "
                        f"{_describe(values)}")
    if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
        raise TypeError(f"{fn}: expected {name} as a 1-D integer tensor or list (one value per sample), got "
                        f"dtype {values.dtype}")
    if values.dim() != 1:
        raise ValueError(f"{fn}: expected {name} as a 1-D integer tensor or list (one value per sample), got "
                         f"shape {tuple(values.shape)}")
    return values.to(device="cpu", dtype=torch.int64)


def _ids_2d(fn: str, name: str, ids) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{fn}: expected {name} as an integer tensor [B, LEN] or [LEN], got {_describe(ids)}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"{fn}: expected {name} as an integer tensor [B, LEN] or [LEN], got dtype {ids.dtype}")
    if ids.dim() not in (1, 2) or ids.numel() == 0:
        raise ValueError(f"{fn}: expected {name} as a non-empty integer tensor [B, LEN] or [LEN], got shape "
                         f"{tuple(ids.shape)}")
    t = ids.to(device="cpu", dtype=torch.int64)
    if t.min() < torch.iinfo(torch.int32).min or t.max() > torch.iinfo(torch.int32).max:
        raise ValueError(f"{fn}: expected {name} that fit in int32, got values in [{int(t.min())}, {int(t.max())}]")
    return t if t.dim() == 2 else t.unsqueeze(0)


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dim()}-D {x.dtype} tensor"
    text = repr(x)
    return f"{type(x).__name__} {text if len(text) <= 40 else text[:37] + '...'}"
