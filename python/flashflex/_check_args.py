"""Argument checks shared by flex_attention (attention.py) and ttt_attention (eagle3.py): flags
that must be real bools, tensors of the one layout the kernels read, and sizes within the native
core's index limits, all rejected before any output is allocated. Messages name the argument,
what was expected and what was given."""

from __future__ import annotations

import torch

from . import _C

# The native core's limits (include/flashflex/block_mask.hpp): a sequence of at most MAX_SEQ_LEN
# positions (its padded last 128-wide tile still indexed in int32), every other size in int32.
MAX_SEQ_LEN = _C.MAX_SEQ_LEN
MAX_INT32 = 2**31 - 1


def check_bool(name: str, value) -> None:
    """A flag: "no" or 1 read as True would silently switch a behaviour on."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")


def check_dense(name: str, t: torch.Tensor) -> None:
    """A plain strided tensor: nested (jagged) and sparse layouts have no kernel."""
    if t.is_nested:
        raise NotImplementedError(f"{name}: nested (jagged) tensors are not supported; pad the sequences to one "
                                  f"length and mask the padding (flashflex.masks.padding or document)")
    if t.layout != torch.strided:
        raise NotImplementedError(f"{name}: expected a dense (strided) tensor, got layout {t.layout}")


def check_sizes(name: str, t: torch.Tensor, seq_name: str, seq_dim: int = 2) -> None:
    """Sizes of a 4-d [B, H, SEQ_LEN, D] tensor within the index limits (expanded views can claim
    any size without memory: this runs before the output is allocated)."""
    seq = t.shape[seq_dim] if t.dim() > seq_dim else 0  # a wrong rank is reported by the caller's checks
    if seq > MAX_SEQ_LEN:
        raise ValueError(f"{name}: expected {seq_name} <= {MAX_SEQ_LEN} (2^31 - 128: the indices of its last "
                         f"128-wide tile must fit in int32), got {seq}")
    for dim, size in enumerate(t.shape):
        if size > MAX_INT32:
            raise ValueError(f"{name}: expected sizes <= {MAX_INT32} (int32 indices), got {size} in dimension {dim} "
                             f"(shape {tuple(t.shape)})")
