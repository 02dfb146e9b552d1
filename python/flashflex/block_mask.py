"""flashflex.BlockMask: the tile lists and partial-tile bitmaps every backend consumes
(layout: include/flashflex/block_mask.hpp), built from a built-in mask (C++ builders), from a
torch BlockMask (its lists reused, its mask_mod evaluated inside its partial tiles only), or from
any torch-style mask_mod (through torch's create_block_mask)."""

from __future__ import annotations

import weakref
from typing import Callable, Dict, Optional, Tuple

import torch

from . import _C
from ._png import write_png
from ._validate_block_mask import check_create_args, check_torch_block_mask
from .masks import Mask

__all__ = ["BlockMask", "create_block_mask"]

TILE = _C.TILE_SIZE
_WORDS_PER_ROW = TILE // 32
_LIST_FIELDS = ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices", "q_num_blocks",
                "q_indices", "full_q_num_blocks", "full_q_indices")
# Partial tiles whose mask_mod is evaluated at once (each costs 16K index points).
_EVAL_CHUNK_TILES = 64


def _num_tiles(length: int) -> int:
    return (length + TILE - 1) // TILE


class BlockMask:
    """Block-sparse mask over 128 x 128 tiles. Per q-tile: the partial and full kv-tiles
    (kv_num_blocks / kv_indices, full_kv_*); per kv-tile the same for q-tiles (q_*, full_q_*,
    used by the backward); partial_tile_ids [B, H, Mq, Nk] maps a partial tile to its bitmap
    (-1 otherwise); bitmaps [P, 128, 4] int32 holds one bit per element (bit c % 32 of word
    c // 32 of row r). Full tiles run without masking, partial tiles AND their bitmap, empty
    tiles are skipped. B and H may be 1: the mask is then shared by every sample / head."""

    BLOCK_SIZE = (TILE, TILE)

    def __init__(self, seq_lengths: Tuple[int, int], kv_num_blocks, kv_indices, full_kv_num_blocks,
                 full_kv_indices, q_num_blocks, q_indices, full_q_num_blocks, full_q_indices,
                 partial_tile_ids, bitmaps, mask_mod: Optional[Callable] = None):
        self.seq_lengths = (int(seq_lengths[0]), int(seq_lengths[1]))
        self.kv_num_blocks = kv_num_blocks
        self.kv_indices = kv_indices
        self.full_kv_num_blocks = full_kv_num_blocks
        self.full_kv_indices = full_kv_indices
        self.q_num_blocks = q_num_blocks
        self.q_indices = q_indices
        self.full_q_num_blocks = full_q_num_blocks
        self.full_q_indices = full_q_indices
        self.partial_tile_ids = partial_tile_ids
        self.bitmaps = bitmaps
        self.mask_mod = mask_mod
        self._check_layout()

    # ---- construction ------------------------------------------------------------------

    @classmethod
    def from_torch(cls, block_mask) -> "BlockMask":
        """Converts a torch.nn.attention.flex_attention.BlockMask with 128 x 128 blocks. Its lists
        are reused as they are; its mask_mod is evaluated only inside its partial blocks. As in
        torch, a mask built with B or H = None must not depend on b or h."""
        block_size = tuple(block_mask.BLOCK_SIZE)
        if block_size != cls.BLOCK_SIZE:
            raise ValueError(f"block_mask: expected BLOCK_SIZE {cls.BLOCK_SIZE} (flashflex tiles are {TILE} x "
                             f"{TILE}), got {block_size}; build it with create_block_mask(..., BLOCK_SIZE={TILE})")
        check_torch_block_mask(block_mask)
        q_len, kv_len = block_mask.seq_lengths
        counts = block_mask.kv_num_blocks
        indices = block_mask.kv_indices
        if indices.shape[-2:] != (_num_tiles(q_len), _num_tiles(kv_len)):
            raise ValueError(f"block_mask: expected kv_indices of {_num_tiles(q_len)} x {_num_tiles(kv_len)} tiles for "
                             f"seq_lengths {(q_len, kv_len)}, got {tuple(indices.shape[-2:])}")
        full_counts = block_mask.full_kv_num_blocks
        full_indices = block_mask.full_kv_indices
        if full_counts is None:  # torch: no full lists means every listed block runs the mask_mod
            full_counts = torch.zeros_like(counts)
            full_indices = torch.zeros_like(indices)
        q_counts, q_indices = block_mask.q_num_blocks, block_mask.q_indices
        if q_counts is None:
            q_counts, q_indices = _transpose_lists(counts, indices)
        full_q_counts, full_q_indices = block_mask.full_q_num_blocks, block_mask.full_q_indices
        if full_q_counts is None:
            full_q_counts, full_q_indices = _transpose_lists(full_counts, full_indices)

        tiles = _list_entries(counts, indices)  # [P, 4]: (b, h, m, n) of each partial tile
        ids = torch.full(indices.shape, -1, dtype=torch.int32, device=indices.device)
        ids[tiles[:, 0], tiles[:, 1], tiles[:, 2], tiles[:, 3]] = torch.arange(
            tiles.shape[0], dtype=torch.int32, device=indices.device)
        mask_mod = block_mask.mask_mod
        bitmaps = _evaluate_bitmaps(mask_mod, tiles, q_len, kv_len)
        lists = [counts, indices, full_counts, full_indices, q_counts, q_indices, full_q_counts, full_q_indices]
        lists = [t.to(torch.int32).contiguous() for t in lists]
        return cls((q_len, kv_len), *lists, ids, bitmaps, mask_mod=mask_mod)

    @classmethod
    def _from_native(cls, native: "_C.HostBlockMask", mask_mod: Callable, device) -> "BlockMask":
        b, h, mq, nk = native.batch, native.heads, _num_tiles(native.q_len), _num_tiles(native.kv_len)
        shapes = [(b, h, mq), (b, h, mq, nk)] * 2 + [(b, h, nk), (b, h, nk, mq)] * 2 + [(b, h, mq, nk)]
        arrays = [torch.empty(s, dtype=torch.int32) for s in shapes]
        arrays.append(torch.empty((native.num_partial_tiles, TILE, _WORDS_PER_ROW), dtype=torch.int32))
        native.copy_to([a.data_ptr() for a in arrays])
        mask = cls((native.q_len, native.kv_len), *arrays, mask_mod=mask_mod)
        return mask.to(device)

    @classmethod
    def _build_cuda(cls, mask: Mask, batch: int, heads: int, q_len: int, kv_len: int,
                    device: torch.device) -> "BlockMask":
        """The GPU builder: one uint8 buffer on `device`, built on torch's current stream; the
        BlockMask's tensors are views into it. bitmaps holds room for an upper bound of partial
        tiles; ids past the true count are unused (no list refers to them)."""
        index = device.index if device.index is not None else torch.cuda.current_device()
        device = torch.device("cuda", index)
        num_bytes, b, h, capacity = _C.block_mask_cuda_size(mask._native, batch, heads, q_len, kv_len)
        buffer = torch.empty(max(num_bytes, 1), dtype=torch.uint8, device=device)
        base = buffer.data_ptr()
        pointers = _C.build_block_mask_cuda(mask._native, batch, heads, q_len, kv_len, base, num_bytes, index,
                                            torch.cuda.current_stream(device).cuda_stream)
        mq, nk = _num_tiles(q_len), _num_tiles(kv_len)
        shapes = [(b, h, mq), (b, h, mq, nk)] * 2 + [(b, h, nk), (b, h, nk, mq)] * 2 + [(b, h, mq, nk)]
        shapes.append((capacity, TILE, _WORDS_PER_ROW))
        arrays = []
        for pointer, shape in zip(pointers, shapes):
            offset, numel = pointer - base, 1
            for size in shape:
                numel *= size
            arrays.append(buffer[offset:offset + 4 * numel].view(torch.int32).view(shape))
        return cls((q_len, kv_len), *arrays, mask_mod=mask)

    # ---- what the binding reads --------------------------------------------------------

    def _native_args(self) -> Tuple:
        from ._tensor_ref import device_code
        b, h, _, _ = self.shape
        device_type, device_index = device_code(self.kv_indices.device)
        arrays = [getattr(self, f) for f in _LIST_FIELDS] + [self.partial_tile_ids, self.bitmaps]
        return (b, h, self.seq_lengths[0], self.seq_lengths[1], self.bitmaps.shape[0], device_type, device_index,
                [a.data_ptr() for a in arrays])

    def _tensors(self):
        return [getattr(self, f) for f in _LIST_FIELDS] + [self.partial_tile_ids, self.bitmaps]

    # ---- inspection --------------------------------------------------------------------

    @property
    def shape(self) -> Tuple[int, int, int, int]:
        b, h, _ = self.kv_num_blocks.shape
        return (b, h, self.seq_lengths[0], self.seq_lengths[1])

    @property
    def device(self) -> torch.device:
        return self.kv_indices.device

    def to(self, device) -> "BlockMask":
        moved = [t.to(device) for t in self._tensors()]
        return BlockMask(self.seq_lengths, *moved, mask_mod=self.mask_mod)

    def sparsity(self) -> float:
        """Percentage of tiles skipped (neither partial nor full), as torch's BlockMask reports it."""
        b, h, mq = self.kv_num_blocks.shape
        total = b * h * mq * self.kv_indices.shape[-1]
        computed = int(self.kv_num_blocks.sum()) + int(self.full_kv_num_blocks.sum())
        return 100.0 * (1.0 - computed / total)

    def __str__(self) -> str:
        b, h, q_len, kv_len = self.shape
        mq, nk = self.kv_indices.shape[-2:]
        full = int(self.full_kv_num_blocks.sum())
        partial = int(self.kv_num_blocks.sum())
        return (f"flashflex.BlockMask(shape=(B={b}, H={h}, Q_LEN={q_len}, KV_LEN={kv_len}), "
                f"tiles={mq}x{nk} of {TILE}x{TILE}, full={full}, partial={partial}, "
                f"sparsity={self.sparsity():.2f}%, device={self.device})")

    __repr__ = __str__

    def tile_states(self) -> torch.Tensor:
        """int8 [B, H, Mq, Nk]: 0 empty, 1 partial, 2 full."""
        b, h, mq = self.kv_num_blocks.shape
        nk = self.kv_indices.shape[-1]
        states = torch.zeros((b, h, mq, nk), dtype=torch.int8, device=self.device)
        for counts, indices, value in ((self.kv_num_blocks, self.kv_indices, 1),
                                       (self.full_kv_num_blocks, self.full_kv_indices, 2)):
            e = _list_entries(counts, indices)
            states[e[:, 0], e[:, 1], e[:, 2], e[:, 3]] = value
        return states

    def to_dense(self) -> torch.Tensor:
        """bool [B, H, Q_LEN, KV_LEN]: the element-level mask (for inspection of small masks)."""
        b, h, q_len, kv_len = self.shape
        mq, nk = self.kv_indices.shape[-2:]
        states = self.tile_states()
        tiles = (states == 2).to(torch.bool)[..., None, None].expand(b, h, mq, nk, TILE, TILE).clone()
        partial = (self.partial_tile_ids >= 0).nonzero()
        if partial.shape[0]:
            ids = self.partial_tile_ids[partial[:, 0], partial[:, 1], partial[:, 2], partial[:, 3]].long()
            tiles[partial[:, 0], partial[:, 1], partial[:, 2], partial[:, 3]] = _unpack_bits(self.bitmaps[ids])
        dense = tiles.permute(0, 1, 2, 4, 3, 5).reshape(b, h, mq * TILE, nk * TILE)
        return dense[:, :, :q_len, :kv_len]

    def to_png(self, path: str, b: int = 0, h: int = 0, max_pixels: int = 1024) -> None:
        """Renders sample b, head h: white masked, light blue visible in a partial tile, dark blue
        visible in a full tile; large masks are shown tile by tile."""
        _, _, q_len, kv_len = self.shape
        states = self.tile_states()[b if self.shape[0] > 1 else 0, h if self.shape[1] > 1 else 0]
        if max(q_len, kv_len) <= max_pixels:
            visible = self._select(b, h).to_dense()[0, 0]
            in_full = (states == 2).repeat_interleave(TILE, 0).repeat_interleave(TILE, 1)[:q_len, :kv_len]
            image = torch.where(visible, torch.where(in_full, 2, 1), 0).to(torch.uint8)
        else:
            image = states.to(torch.uint8)
        palette = torch.tensor([[255, 255, 255], [120, 170, 230], [20, 50, 140]], dtype=torch.uint8)
        write_png(path, palette[image.long().cpu()])

    def _select(self, b: int, h: int) -> "BlockMask":
        """The mask of sample b, head h alone (B = H = 1), sharing the bitmaps."""
        bb = b if self.shape[0] > 1 else 0
        hh = h if self.shape[1] > 1 else 0
        lists = [t[bb:bb + 1, hh:hh + 1] for t in self._tensors()[:-1]]
        return BlockMask(self.seq_lengths, *lists, self.bitmaps, mask_mod=self.mask_mod)

    def _check_layout(self) -> None:
        for name in _LIST_FIELDS + ("partial_tile_ids", "bitmaps"):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or t.dtype != torch.int32:
                raise TypeError(f"BlockMask.{name}: expected an int32 tensor, got "
                                f"{t.dtype if isinstance(t, torch.Tensor) else type(t).__name__}")
        mq, nk = _num_tiles(self.seq_lengths[0]), _num_tiles(self.seq_lengths[1])
        b, h = self.kv_num_blocks.shape[:2]
        expected = {"kv_num_blocks": (b, h, mq), "kv_indices": (b, h, mq, nk), "full_kv_num_blocks": (b, h, mq),
                    "full_kv_indices": (b, h, mq, nk), "q_num_blocks": (b, h, nk), "q_indices": (b, h, nk, mq),
                    "full_q_num_blocks": (b, h, nk), "full_q_indices": (b, h, nk, mq),
                    "partial_tile_ids": (b, h, mq, nk)}
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"BlockMask.{name}: expected shape {shape} for seq_lengths {self.seq_lengths}, "
                                 f"got {got}")
        if self.bitmaps.dim() != 3 or tuple(self.bitmaps.shape[1:]) != (TILE, _WORDS_PER_ROW):
            raise ValueError(f"BlockMask.bitmaps: expected shape (P, {TILE}, {_WORDS_PER_ROW}), got "
                             f"{tuple(self.bitmaps.shape)}")


def create_block_mask(mask_mod, B: Optional[int], H: Optional[int], Q_LEN: int, KV_LEN: int,
                      device="cpu") -> BlockMask:
    """A BlockMask for `mask_mod`: a flashflex.masks.Mask goes through the C++ builders (no dense
    evaluation; on a CUDA device the GPU builder, on torch's current stream, with bitmaps room for an
    upper bound of partial tiles, CUDA-graph capturable for masks without per-sample data); any other torch-style mask_mod (b, h, q_idx, kv_idx) -> bool goes through torch's
    create_block_mask, and its partial tiles are then evaluated once more for their bitmaps.
    B or H = None builds a mask shared by every sample / head."""
    check_create_args(mask_mod, B, H, Q_LEN, KV_LEN, device)
    batch = 1 if B is None else int(B)
    heads = 1 if H is None else int(H)
    if isinstance(mask_mod, Mask):
        build_batch = batch
        if mask_mod.batch == 1 and batch > 1:
            build_batch = 1  # one sample's data, shared by every sample
        target = torch.device(device)
        if target.type == "cuda" and _C.has_cuda_backend():
            return BlockMask._build_cuda(mask_mod, build_batch, heads, int(Q_LEN), int(KV_LEN), target)
        native = _C.build_block_mask(mask_mod._native, build_batch, heads, int(Q_LEN), int(KV_LEN))
        return BlockMask._from_native(native, mask_mod, device)
    if not callable(mask_mod):
        raise TypeError(f"mask_mod: expected a flashflex.masks.Mask or a callable (b, h, q_idx, kv_idx) -> bool, "
                        f"got {type(mask_mod).__name__}")
    from torch.nn.attention.flex_attention import create_block_mask as torch_create_block_mask
    torch_mask = torch_create_block_mask(mask_mod, B, H, Q_LEN, KV_LEN, device=device, BLOCK_SIZE=TILE)
    return BlockMask.from_torch(torch_mask)


# Conversions of torch BlockMasks already seen by flex_attention, keyed by id with a weak
# reference guarding against id reuse: converting evaluates the mask_mod, do it once per mask.
_TORCH_MASK_CACHE: Dict[int, Tuple["weakref.ref", BlockMask]] = {}


def from_torch_cached(block_mask) -> BlockMask:
    key = id(block_mask)
    hit = _TORCH_MASK_CACHE.get(key)
    if hit is not None and hit[0]() is block_mask:
        return hit[1]
    converted = BlockMask.from_torch(block_mask)
    try:
        ref = weakref.ref(block_mask, lambda _: _TORCH_MASK_CACHE.pop(key, None))
    except TypeError:  # not weak-referenceable: do not cache
        return converted
    _TORCH_MASK_CACHE[key] = (ref, converted)
    return converted


# ---- helpers ---------------------------------------------------------------------------------

def _list_entries(counts: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """[E, 4] (b, h, row, index) of the valid entries of one tile list, in list order."""
    positions = torch.arange(indices.shape[-1], device=indices.device)
    valid = positions < counts[..., None]
    entries = valid.nonzero()
    cols = indices[entries[:, 0], entries[:, 1], entries[:, 2], entries[:, 3]].long()
    return torch.stack([entries[:, 0], entries[:, 1], entries[:, 2], cols], dim=1)


def _transpose_lists(counts: torch.Tensor, indices: torch.Tensor):
    """The q-direction lists (per kv-tile, ascending q-tiles) of kv-direction lists."""
    b, h, mq, nk = indices.shape
    e = _list_entries(counts, indices)
    dense = torch.zeros((b, h, nk, mq), dtype=torch.bool, device=indices.device)
    dense[e[:, 0], e[:, 1], e[:, 3], e[:, 2]] = True
    t_counts = dense.sum(-1).to(torch.int32)
    # Stable order: selected q-tiles first, ascending; the rest after them (unused).
    key = (~dense).to(torch.int64) * mq + torch.arange(mq, device=indices.device)
    return t_counts, key.argsort(-1).to(torch.int32)


def _evaluate_bitmaps(mask_mod: Optional[Callable], tiles: torch.Tensor, q_len: int, kv_len: int) -> torch.Tensor:
    """Packs mask_mod over the in-range elements of each partial tile into [P, 128, 4] int32."""
    device = tiles.device
    bitmaps = torch.zeros((tiles.shape[0], TILE, _WORDS_PER_ROW), dtype=torch.int32, device=device)
    offsets = torch.arange(TILE, device=device)
    fn = torch.vmap(mask_mod if mask_mod is not None else _all_visible)
    for start in range(0, tiles.shape[0], _EVAL_CHUNK_TILES):
        chunk = tiles[start:start + _EVAL_CHUNK_TILES]
        n = chunk.shape[0]
        q = chunk[:, 2, None, None] * TILE + offsets[None, :, None]     # [n, 128, 1]
        kv = chunk[:, 3, None, None] * TILE + offsets[None, None, :]    # [n, 1, 128]
        in_range = (q < q_len) & (kv < kv_len)                          # [n, 128, 128]
        shape = (n, TILE, TILE)
        b = chunk[:, 0, None, None].expand(shape).reshape(-1)
        h = chunk[:, 1, None, None].expand(shape).reshape(-1)
        # Out-of-range points are clamped so a mask_mod indexing its own tables stays in bounds.
        qq = q.clamp(max=q_len - 1).expand(shape).reshape(-1)
        kk = kv.clamp(max=kv_len - 1).expand(shape).reshape(-1)
        visible = fn(b, h, qq, kk).reshape(shape).to(torch.bool) & in_range
        bitmaps[start:start + n] = _pack_bits(visible)
    return bitmaps


def _all_visible(b, h, q_idx, kv_idx):
    return torch.ones_like(q_idx, dtype=torch.bool)


def _pack_bits(visible: torch.Tensor) -> torch.Tensor:
    """bool [n, 128, 128] -> int32 [n, 128, 4]; bit c % 32 of word c // 32."""
    n = visible.shape[0]
    weights = torch.bitwise_left_shift(torch.ones(32, dtype=torch.int64, device=visible.device),
                                       torch.arange(32, device=visible.device))
    words = (visible.reshape(n, TILE, _WORDS_PER_ROW, 32).to(torch.int64) * weights).sum(-1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def _unpack_bits(bitmaps: torch.Tensor) -> torch.Tensor:
    """int32 [n, 128, 4] -> bool [n, 128, 128]."""
    shifts = torch.arange(32, device=bitmaps.device, dtype=torch.int32)
    bits = torch.bitwise_right_shift(bitmaps[..., None], shifts) & 1
    return bits.reshape(bitmaps.shape[0], TILE, TILE).to(torch.bool)
