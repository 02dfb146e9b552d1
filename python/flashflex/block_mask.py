"""flashflex.BlockMask: the tile lists and partial-tile bitmaps every backend consumes
(layout: include/flashflex/block_mask.hpp), built from a built-in mask (C++ builders), from a
torch BlockMask (its lists reused, its mask_mod evaluated inside its partial tiles only:
_torch_mask.py), or from any torch-style mask_mod (through torch's create_block_mask). It also
offers torch's BlockMask surface (numel, as_tuple, _adjust, to_string, indexing, block-level
to_dense), so code written against torch's class runs on it."""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

from . import _C, _torch_mask
from ._png import write_png
from ._validate_block_mask import check_create_args, check_torch_block_mask
from ._torch_mask import TILE, WORDS_PER_ROW as _WORDS_PER_ROW, num_tiles as _num_tiles
from .masks import Mask

__all__ = ["BlockMask", "create_block_mask"]

_LIST_FIELDS = ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices", "q_num_blocks",
                "q_indices", "full_q_num_blocks", "full_q_indices")


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
    def from_torch(cls, block_mask, batch: Optional[int] = None, heads: Optional[int] = None) -> "BlockMask":
        """Converts a torch.nn.attention.flex_attention.BlockMask with 128 x 128 blocks: its lists
        reused, its mask_mod evaluated inside its partial blocks. With batch / heads (the
        query's), a mask built with B or H = None whose mask_mod reads b or h is evaluated per
        real sample / head inside its partial blocks, as torch's kernels do. Under torch.compile
        the conversion has static shapes and compiles with the call. Nothing is cached: convert
        once and pass the result to reuse a conversion across calls."""
        if not torch.compiler.is_compiling():  # value checks read the lists: eager calls only
            check_torch_block_mask(block_mask)
        seq_lengths, tensors, mask_mod = _torch_mask.convert(block_mask, batch, heads)
        return cls(seq_lengths, *tensors, mask_mod=mask_mod)

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

    def _tensors(self):
        """The ten int32 tensors the custom ops take (_ops._mask_args reads them)."""
        return [getattr(self, f) for f in _LIST_FIELDS] + [self.partial_tile_ids, self.bitmaps]

    # ---- torch's BlockMask surface -----------------------------------------------------

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

    def numel(self) -> int:
        """B * H * Q_LEN * KV_LEN, as torch's BlockMask.numel."""
        b, h, q_len, kv_len = self.shape
        return b * h * q_len * kv_len

    def sparsity(self) -> float:
        """Percentage of tiles skipped (neither partial nor full), as torch's BlockMask reports it."""
        b, h, mq = self.kv_num_blocks.shape
        total = b * h * mq * self.kv_indices.shape[-1]
        computed = int(self.kv_num_blocks.sum()) + int(self.full_kv_num_blocks.sum())
        return 100.0 * (1.0 - computed / total)

    def to_torch(self):
        """The torch BlockMask with the same lists (sharing their tensors) and mask_mod; the
        bitmaps, flashflex's own, are not part of it."""
        from torch.nn.attention.flex_attention import BlockMask as TorchBlockMask, noop_mask
        lists = [getattr(self, f) for f in _LIST_FIELDS]
        return TorchBlockMask(self.seq_lengths, *lists, self.BLOCK_SIZE,
                              self.mask_mod if self.mask_mod is not None else noop_mask)

    def as_tuple(self, flatten: bool = True) -> tuple:
        """torch's BlockMask.as_tuple (same fields, same order) of this mask's lists."""
        return self.to_torch().as_tuple(flatten)

    def to_dense(self) -> torch.Tensor:
        """int32 [B, H, Mq, Nk]: 1 where a tile is computed (partial or full), as torch's
        BlockMask.to_dense (block level). The element-level mask is to_dense_elements()."""
        return self.to_torch().to_dense()

    def to_string(self, grid_size=(20, 20), limit: int = 4) -> str:
        """torch's block-level text rendering of this mask's tiles."""
        return self.to_torch().to_string(grid_size, limit)

    def __getitem__(self, index) -> "BlockMask":
        """The mask of some samples / heads: index is (batch[, head]), each an int, a slice or an
        index tensor; an int keeps its dimension (as torch). The bitmaps are shared; mask_mod is
        dropped (its b / h no longer match, as torch's sliced masks). Every q-tile is kept:
        flashflex's lists cover the whole query."""
        index = index if isinstance(index, tuple) else (index,)
        if len(index) > 2:
            raise NotImplementedError(f"BlockMask[...]: expected (batch[, head]) indices, got {len(index)}; "
                                      f"flashflex masks keep every q-tile, slice batch and heads only")
        sizes = self.kv_num_blocks.shape[:2]
        padded = tuple(index) + (slice(None),) * (2 - len(index))
        index = tuple((slice(i % n, i % n + 1) if isinstance(i, int) else i) for i, n in zip(padded, sizes))
        lists = [t[index] for t in self._tensors()[:-1]]
        return BlockMask(self.seq_lengths, *[t.contiguous() for t in lists], self.bitmaps, mask_mod=None)

    def _adjust(self, new_q_len: int, new_kv_len: int) -> "BlockMask":
        """The same mask_mod over new sequence lengths (torch: BlockMask._adjust), built again:
        flashflex's bitmaps and edge tiles depend on the lengths."""
        if self.mask_mod is None:
            raise ValueError("BlockMask._adjust: expected a BlockMask with its mask_mod, got one without (sliced with "
                             "[]); build it again with create_block_mask")
        b, h = self.shape[:2]
        return create_block_mask(self.mask_mod, b, h, new_q_len, new_kv_len, device=self.device)

    def __str__(self) -> str:
        b, h, q_len, kv_len = self.shape
        mq, nk = self.kv_indices.shape[-2:]
        full = int(self.full_kv_num_blocks.sum())
        partial = int(self.kv_num_blocks.sum())
        return (f"flashflex.BlockMask(shape=(B={b}, H={h}, Q_LEN={q_len}, KV_LEN={kv_len}), "
                f"tiles={mq}x{nk} of {TILE}x{TILE}, full={full}, partial={partial}, "
                f"sparsity={self.sparsity():.2f}%, device={self.device})")

    __repr__ = __str__

    # ---- flashflex's own inspection ------------------------------------------------------

    def tile_states(self) -> torch.Tensor:
        """int8 [B, H, Mq, Nk]: 0 empty, 1 partial, 2 full."""
        nk = self.kv_indices.shape[-1]
        full = _torch_mask.list_grid(self.full_kv_num_blocks, self.full_kv_indices, nk)
        partial = _torch_mask.list_grid(self.kv_num_blocks, self.kv_indices, nk)
        return torch.where(full, 2, partial.to(torch.int8)).to(torch.int8)

    def to_dense_elements(self) -> torch.Tensor:
        """bool [B, H, Q_LEN, KV_LEN]: the element-level mask (for inspection of small masks)."""
        b, h, q_len, kv_len = self.shape
        mq, nk = self.kv_indices.shape[-2:]
        states = self.tile_states()
        tiles = (states == 2).to(torch.bool)[..., None, None].expand(b, h, mq, nk, TILE, TILE).clone()
        partial = (self.partial_tile_ids >= 0).nonzero()
        if partial.shape[0]:
            ids = self.partial_tile_ids[partial[:, 0], partial[:, 1], partial[:, 2], partial[:, 3]].long()
            tiles[partial[:, 0], partial[:, 1], partial[:, 2], partial[:, 3]] = _torch_mask.unpack_bits(
                self.bitmaps[ids])
        dense = tiles.permute(0, 1, 2, 4, 3, 5).reshape(b, h, mq * TILE, nk * TILE)
        return dense[:, :, :q_len, :kv_len]

    def to_png(self, path: str, b: int = 0, h: int = 0, max_pixels: int = 1024) -> None:
        """Renders sample b, head h: white masked, light blue visible in a partial tile, dark blue
        visible in a full tile; large masks are shown tile by tile."""
        _, _, q_len, kv_len = self.shape
        states = self.tile_states()[b if self.shape[0] > 1 else 0, h if self.shape[1] > 1 else 0]
        if max(q_len, kv_len) <= max_pixels:
            visible = self._select(b, h).to_dense_elements()[0, 0]
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
        lists = [t[bb:bb + 1, hh:hh + 1].contiguous() for t in self._tensors()[:-1]]
        return BlockMask(self.seq_lengths, *lists, self.bitmaps, mask_mod=self.mask_mod)

    def _without_full_tiles(self) -> "BlockMask":
        """Every computed tile listed as partial (torch: separate_full_blocks=False): each full
        tile gets an all-visible bitmap appended after the existing ones."""
        b, h, mq, nk = self.partial_tile_ids.shape
        full = _torch_mask.list_grid(self.full_kv_num_blocks, self.full_kv_indices, nk)
        computed = full | (self.partial_tile_ids >= 0)
        rank = full.reshape(-1).cumsum(0).view(full.shape) - 1
        ids = torch.where(full, self.bitmaps.shape[0] + rank, self.partial_tile_ids.long()).to(torch.int32)
        new_bitmaps = _torch_mask.full_tile_bitmaps(full.nonzero(), *self.seq_lengths)
        counts, indices = _torch_mask.ordered(computed)
        q_counts, q_indices = _torch_mask.ordered(computed.transpose(-1, -2))
        zeros = [torch.zeros_like(counts), torch.zeros_like(indices), torch.zeros_like(q_counts),
                 torch.zeros_like(q_indices)]
        return BlockMask(self.seq_lengths, counts, indices, zeros[0], zeros[1], q_counts, q_indices, zeros[2],
                         zeros[3], ids.contiguous(), torch.cat([self.bitmaps, new_bitmaps]), mask_mod=self.mask_mod)

    def _check_layout(self) -> None:
        for name in _LIST_FIELDS + ("partial_tile_ids", "bitmaps"):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or t.dtype != torch.int32:
                raise TypeError(f"BlockMask.{name}: expected an int32 tensor, got "
                                f"{t.dtype if isinstance(t, torch.Tensor) else type(t).__name__}")
            if not t.is_contiguous():  # the kernels read them by pointer, row-major
                raise ValueError(f"BlockMask.{name}: expected a contiguous tensor, got strides {t.stride()}")
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


def create_block_mask(mask_mod, B: Optional[int], H: Optional[int], Q_LEN: int, KV_LEN: int, device="cpu",
                      BLOCK_SIZE=TILE, separate_full_blocks: bool = True) -> BlockMask:
    """A BlockMask for `mask_mod`, with torch's create_block_mask signature: a flashflex.masks.Mask
    goes through the C++ builders (no dense evaluation; on a CUDA device the GPU builder, on
    torch's current stream, with bitmaps room for an upper bound of partial tiles, CUDA-graph
    capturable for masks without per-sample data); any other torch-style mask_mod
    (b, h, q_idx, kv_idx) -> bool goes through torch's create_block_mask, and its partial tiles
    are then evaluated once more for their bitmaps. B or H = None builds a mask shared by every
    sample / head. BLOCK_SIZE must be 128 (or (128, 128)): flashflex's tiles. With
    separate_full_blocks=False every computed tile is listed as partial (torch's meaning)."""
    check_create_args(mask_mod, B, H, Q_LEN, KV_LEN, device)
    if BLOCK_SIZE not in (TILE, (TILE, TILE), [TILE, TILE]):
        raise ValueError(f"BLOCK_SIZE: expected {TILE} or ({TILE}, {TILE}) (flashflex tiles are {TILE} x {TILE}), "
                         f"got {BLOCK_SIZE!r}")
    if not isinstance(separate_full_blocks, bool):
        raise TypeError(f"separate_full_blocks: expected a bool, got {type(separate_full_blocks).__name__}")
    mask = _create_block_mask(mask_mod, B, H, Q_LEN, KV_LEN, device)
    return mask if separate_full_blocks else mask._without_full_tiles()


def _create_block_mask(mask_mod, B, H, Q_LEN, KV_LEN, device) -> BlockMask:
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
