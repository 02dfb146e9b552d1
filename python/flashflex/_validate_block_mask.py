"""Argument checks of the block-mask entry points, kept apart from block_mask.py:
  check_create_args        create_block_mask's mask_mod, B, H, Q_LEN, KV_LEN and device, before
                           any builder (flashflex's or torch's) runs or allocates;
  check_torch_block_mask   a torch BlockMask's tile lists before flashflex reads them (an index
                           past the tiles would otherwise fail deep inside, or on the GPU read
                           out of bounds).
Messages name the argument, what was expected and what was given."""

from __future__ import annotations

import inspect
import operator

import torch

from . import _C
from .masks import Mask

_TILE = _C.TILE_SIZE
_MAX_SEQ_LEN = _C.MAX_SEQ_LEN
_MAX_TILES = _C.MAX_MASK_TILES
_MAX_INT32 = 2**31 - 1


def _num_tiles(length: int) -> int:
    return (length + _TILE - 1) // _TILE


def _extent(name: str, value, optional: bool, limit: int, why: str):
    if value is None and optional:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected an int{' or None' if optional else ''}, got bool {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected an int{' or None' if optional else ''}, got {type(value).__name__} "
                        f"{value!r}") from None
    if v < 1:
        raise ValueError(f"{name}: expected {name} >= 1, got {v}")
    if v > limit:
        raise ValueError(f"{name}: expected {name} <= {limit} ({why}), got {v}")
    return v


def _check_mask_mod(mask_mod) -> None:
    if isinstance(mask_mod, Mask):
        return
    if not callable(mask_mod):
        raise TypeError(f"mask_mod: expected a flashflex.masks.Mask or a callable (b, h, q_idx, kv_idx) -> bool, "
                        f"got {type(mask_mod).__name__}")
    try:
        signature = inspect.signature(mask_mod)
    except (TypeError, ValueError):  # torch's create_block_mask reads the signature too
        raise TypeError(f"mask_mod: expected a callable (b, h, q_idx, kv_idx) -> bool with a readable signature, "
                        f"got {type(mask_mod).__name__} {mask_mod!r}") from None
    # torch's create_block_mask tells a mask_mod by its 4 parameters without defaults.
    required = sum(1 for p in signature.parameters.values() if p.default is inspect.Parameter.empty)
    try:
        signature.bind(0, 0, 0, 0)
        takes_four = required == 4
    except TypeError:
        takes_four = False
    if not takes_four:
        raise TypeError(f"mask_mod: expected a callable of 4 positional arguments (b, h, q_idx, kv_idx) -> bool, "
                        f"got one with signature {signature}")


def _check_device(device) -> torch.device:
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ValueError(f"device: expected a torch device (\"cpu\", \"cuda\", \"cuda:1\", ...), got {device!r}") from e
    if target.type not in ("cpu", "cuda"):
        raise ValueError(f"device: expected a cpu or cuda device (where flashflex runs), got {device!r}")
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: expected a device this process can use, got {device!r}: torch reports no CUDA "
                         f"device (torch.cuda.is_available() is False); build the mask with device=\"cpu\"")
    if target.type == "cuda" and target.index is not None and target.index >= torch.cuda.device_count():
        raise ValueError(f"device: expected a CUDA device index below {torch.cuda.device_count()} (the devices "
                         f"torch sees), got {device!r}")
    return target


def check_create_args(mask_mod, B, H, Q_LEN, KV_LEN, device) -> None:
    """create_block_mask's arguments; B / H may be None (shared by every sample / head)."""
    _check_mask_mod(mask_mod)
    batch = _extent("B", B, True, _MAX_INT32, "int32 indices") or 1
    heads = _extent("H", H, True, _MAX_INT32, "int32 indices") or 1
    q_len = _extent("Q_LEN", Q_LEN, False, _MAX_SEQ_LEN, "2^31 - 128: its last 128-wide tile's indices fit in int32")
    kv_len = _extent("KV_LEN", KV_LEN, False, _MAX_SEQ_LEN, "2^31 - 128: its last 128-wide tile's indices fit in int32")
    _check_device(device)
    if isinstance(mask_mod, Mask):
        if mask_mod.batch > 1 and (B is None or batch != mask_mod.batch):
            raise ValueError(f"B: expected {mask_mod.batch} (the samples the mask's data describe), got {B}")
        return  # the native builders check the tiles of what they build (its broadcast batch and heads)
    tiles = batch * heads * _num_tiles(q_len) * _num_tiles(kv_len)
    if tiles > _MAX_TILES:
        raise ValueError(f"B, H, Q_LEN, KV_LEN: expected at most {_MAX_TILES} tiles of {_TILE} x {_TILE} (int32 bitmap "
                         f"ids), got B {batch} * H {heads} * {_num_tiles(q_len)} * {_num_tiles(kv_len)} = {tiles}")


# ---- torch BlockMask ---------------------------------------------------------------------------

def _check_list(name: str, counts, indices, rows: int, cols: int, what: str) -> None:
    """counts [B, H, rows] in [0, cols]; indices [B, H, rows, cols] whose first counts entries are in
    [0, cols)."""
    count_name = name.replace("indices", "num_blocks")
    for field, t in ((count_name, counts), (name, indices)):
        if not isinstance(t, torch.Tensor) or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"block_mask.{field}: expected an integer tensor, got "
                            f"{t.dtype if isinstance(t, torch.Tensor) else type(t).__name__}")
    if indices.dim() != 4 or indices.shape[-2] != rows or indices.shape[-1] > cols:
        raise ValueError(f"block_mask.{name}: expected shape [B, H, {rows}, <= {cols}] ({what}), got "
                         f"{tuple(indices.shape)}")
    width = indices.shape[-1]  # torch may keep fewer columns than tiles
    if tuple(counts.shape) != tuple(indices.shape[:3]):
        raise ValueError(f"block_mask.{count_name}: expected shape {tuple(indices.shape[:3])} (as {name}), got "
                         f"{tuple(counts.shape)}")
    bad_counts = (counts < 0) | (counts > width)
    if bool(bad_counts.any()):
        where = tuple(int(i) for i in bad_counts.nonzero()[0])
        raise ValueError(f"block_mask.{count_name}: expected counts in [0, {width}] ({what}), got "
                         f"{int(counts[where])} at {list(where)}")
    listed = torch.arange(width, device=indices.device) < counts[..., None]
    bad = listed & ((indices < 0) | (indices >= cols))
    if bool(bad.any()):
        where = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"block_mask.{name}: expected entries in [0, {cols}) ({what}), got {int(indices[where])} "
                         f"at {list(where)}")


def check_torch_block_mask(block_mask) -> None:
    """The tile lists a torch BlockMask brings (the kv lists, and the q lists where present)."""
    block_size = tuple(block_mask.BLOCK_SIZE)
    if block_size != (_TILE, _TILE):
        raise ValueError(f"block_mask: expected BLOCK_SIZE {(_TILE, _TILE)} (flashflex tiles are {_TILE} x {_TILE}), "
                         f"got {block_size}; build it with create_block_mask(..., BLOCK_SIZE={_TILE})")
    q_len, kv_len = (int(n) for n in block_mask.seq_lengths)
    mq, nk = _num_tiles(q_len), _num_tiles(kv_len)
    kv_what = f"the {nk} kv tiles of KV_LEN {kv_len}"
    q_what = f"the {mq} q tiles of Q_LEN {q_len}"
    _check_list("kv_indices", block_mask.kv_num_blocks, block_mask.kv_indices, mq, nk, kv_what)
    if block_mask.full_kv_num_blocks is not None:
        _check_list("full_kv_indices", block_mask.full_kv_num_blocks, block_mask.full_kv_indices, mq, nk, kv_what)
    if block_mask.q_num_blocks is not None:
        _check_list("q_indices", block_mask.q_num_blocks, block_mask.q_indices, nk, mq, q_what)
    if block_mask.full_q_num_blocks is not None:
        _check_list("full_q_indices", block_mask.full_q_num_blocks, block_mask.full_q_indices, nk, mq, q_what)
