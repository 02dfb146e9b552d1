"""A torch.nn.attention.flex_attention.BlockMask (128 x 128 blocks) in flashflex's layout: its
tile lists reused, its mask_mod evaluated inside its partial blocks into bitmaps. As torch's
kernels do, a mask built broadcast (B or H = None) whose mask_mod reads b or h is evaluated per
real sample / head of the query inside its partial blocks (its block lists stay b = 0 / h = 0's).

Two schedules of the same evaluation (`_tile_bitmaps`):
- traced (torch.compile): static shapes throughout. The P = B * H * Mq * W slots of the partial
  lists (W their width: the bound the index tensor shapes give) each own a bitmap row; when at
  most a budget of slots are valid (2 * (Mq + Nk) per sample and head: above bands, documents
  and EAGLE3 steps),
  only they are evaluated, compacted into that many rows, else every slot is (torch.cond picks,
  on the device-side count). No nonzero, no data-dependent size, no graph break; the
  evaluation compiles into fused kernels.
- eager: only the valid slots are evaluated (compacted with nonzero), in chunks.
Nothing is cached: a captured tensor updated in place or a reassigned mask_mod is seen by the
next call. Convert once with BlockMask.from_torch to reuse a conversion across calls."""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

from . import _C

TILE = _C.TILE_SIZE
WORDS_PER_ROW = TILE // 32
# Partial tiles whose mask_mod is evaluated at once on the eager path (each costs 16K points).
_EVAL_CHUNK_TILES = 64
# Traced path: partial tiles per sample and head evaluated without the every-slot fallback, per
# q-tile plus kv-tile. Structured masks stay below it: a causal or sliding band has ~1-2 partial
# tiles per q-tile, an EAGLE3 step k one per q-tile and block (two when T is not a multiple of
# 128) plus one row and one column at the length edge: 2 * (Mq + (k + 1) * Mq) at most.
_PARTIAL_BUDGET = 2


def num_tiles(length: int) -> int:
    return (length + TILE - 1) // TILE


def convert(torch_mask, batch: Optional[int] = None, heads: Optional[int] = None):
    """(seq_lengths, the ten int32 tensors of flashflex.BlockMask, mask_mod). batch / heads: the
    query's, for the per-sample / per-head evaluation of a broadcast mask (None: not expanded)."""
    block_size = tuple(torch_mask.BLOCK_SIZE)
    if block_size != (TILE, TILE):
        raise ValueError(f"block_mask: expected BLOCK_SIZE {(TILE, TILE)} (flashflex tiles are {TILE} x {TILE}), "
                         f"got {block_size}; build it with create_block_mask(..., BLOCK_SIZE={TILE})")
    q_len, kv_len = torch_mask.seq_lengths
    counts, indices = torch_mask.kv_num_blocks, torch_mask.kv_indices
    mq, nk = num_tiles(q_len), num_tiles(kv_len)
    if indices.dim() != 4 or indices.shape[-2] != mq or indices.shape[-1] > nk:
        raise ValueError(f"block_mask: expected kv_indices [B, H, {mq}, <= {nk}] for seq_lengths {(q_len, kv_len)}, "
                         f"got {tuple(indices.shape)}")
    full_counts, full_indices = torch_mask.full_kv_num_blocks, torch_mask.full_kv_indices
    if full_counts is None:  # torch: no full lists means every listed block runs the mask_mod
        full_counts, full_indices = torch.zeros_like(counts), torch.zeros_like(indices)
    mask_mod = torch_mask.mask_mod
    b0, h0 = counts.shape[:2]
    reads_b, reads_h = _index_reads(mask_mod) if _may_broadcast(b0, h0, batch, heads) else (False, False)
    b = batch if reads_b and b0 == 1 and batch else b0
    h = heads if reads_h and h0 == 1 and heads else h0

    kv_lists = [_expand(t, b, h) for t in (counts, _pad_width(indices, nk), full_counts, _pad_width(full_indices, nk))]
    q_lists = _q_lists(torch_mask, kv_lists, mq, nk, b, h)
    ids, bitmaps = _partial_tiles(mask_mod, kv_lists[0], _expand(indices, b, h), nk, q_len, kv_len)
    lists = [t.to(torch.int32).contiguous() for t in kv_lists + q_lists]
    return (q_len, kv_len), lists + [ids, bitmaps], mask_mod


def _may_broadcast(b0: int, h0: int, batch: Optional[int], heads: Optional[int]) -> bool:
    return (b0 == 1 and bool(batch) and batch > 1) or (h0 == 1 and bool(heads) and heads > 1)


def _expand(t: torch.Tensor, b: int, h: int) -> torch.Tensor:
    return t if tuple(t.shape[:2]) == (b, h) else t.expand(b, h, *t.shape[2:])


def _pad_width(indices: torch.Tensor, nk: int) -> torch.Tensor:
    """kv lists narrower than the number of kv-tiles (from_kv_blocks allows it) padded to nk."""
    width = indices.shape[-1]
    return indices if width == nk else torch.nn.functional.pad(indices, (0, nk - width))


def _q_lists(torch_mask, kv_lists, mq: int, nk: int, b: int, h: int):
    """torch's q-direction lists when it has them in flashflex's shape, else transposed here."""
    out = []
    for k, (counts_name, indices_name) in enumerate((("q_num_blocks", "q_indices"),
                                                     ("full_q_num_blocks", "full_q_indices"))):
        counts, indices = getattr(torch_mask, counts_name), getattr(torch_mask, indices_name)
        full_missing = k == 1 and torch_mask.full_kv_num_blocks is None
        if counts is not None and not full_missing and tuple(indices.shape[-2:]) == (nk, mq):
            out += [_expand(counts, b, h), _expand(indices, b, h)]
        else:
            out += list(transpose_lists(kv_lists[2 * k], kv_lists[2 * k + 1], nk))
    return out


def list_grid(counts: torch.Tensor, indices: torch.Tensor, nk: int) -> torch.Tensor:
    """bool [B, H, rows, nk]: the tiles a list names, with static shapes (invalid slots scatter
    into a discarded extra column)."""
    b, h, rows, width = indices.shape
    valid = torch.arange(width, device=indices.device) < counts[..., None]
    target = torch.where(valid, indices.long().clamp(0, nk - 1), nk)
    grid = torch.zeros((b, h, rows, nk + 1), dtype=torch.bool, device=indices.device)
    return grid.scatter(-1, target, True)[..., :nk]


def ordered(grid: torch.Tensor):
    """(counts int32 [..., rows], indices int32 [..., rows, cols]) of a bool tile grid: the
    selected columns first, ascending, the rest after them (unused)."""
    cols = grid.shape[-1]
    key = (~grid).to(torch.int64) * cols + torch.arange(cols, device=grid.device)
    return grid.sum(-1).to(torch.int32).contiguous(), key.argsort(-1).to(torch.int32).contiguous()


def transpose_lists(counts: torch.Tensor, indices: torch.Tensor, nk: int):
    """The q-direction lists (per kv-tile, ascending q-tiles) of kv-direction lists."""
    return ordered(list_grid(counts, indices, nk).transpose(-1, -2))


def full_tile_bitmaps(tiles: torch.Tensor, q_len: int, kv_len: int) -> torch.Tensor:
    """[P, 128, 4] all-visible bitmaps (within Q_LEN / KV_LEN) of tiles [P, 4] (b, h, m, n)."""
    tiles = tiles.long()
    return _tile_bitmaps(None, tiles[:, 0], tiles[:, 1], tiles[:, 2], tiles[:, 3], q_len, kv_len)


def _partial_tiles(mask_mod, counts: torch.Tensor, indices: torch.Tensor, nk: int, q_len: int, kv_len: int):
    """(partial_tile_ids [B, H, Mq, Nk] int32, bitmaps [P, 128, 4] int32) of the partial lists
    (indices [B, H, Mq, W] as torch gave them: W slots per row bound the partial tiles)."""
    b, h, mq, width = indices.shape
    device = indices.device
    valid = torch.arange(width, device=device) < counts[..., None]                     # [b, h, mq, W] slots
    cols = indices.long().clamp(0, nk - 1)
    coords = [torch.arange(s, device=device).view(shape).expand(b, h, mq, width)
              for s, shape in ((b, (-1, 1, 1, 1)), (h, (1, -1, 1, 1)), (mq, (1, 1, -1, 1)))] + [cols]
    if torch.compiler.is_compiling():
        slot_ids = torch.arange(b * h * mq * width, device=device, dtype=torch.int32).view(b, h, mq, width)
        bitmaps = _traced_bitmaps(mask_mod, torch.stack([c.reshape(-1) for c in coords], 1), valid.reshape(-1),
                                  b * h * _PARTIAL_BUDGET * (mq + nk), q_len, kv_len)
    else:
        flat_valid = valid.reshape(-1)
        slot_ids = (flat_valid.cumsum(0) - 1).to(torch.int32).view(b, h, mq, width)
        chosen = flat_valid.nonzero().squeeze(1)
        selected = [c.reshape(-1)[chosen] for c in coords]
        bitmaps = torch.zeros((chosen.shape[0], TILE, WORDS_PER_ROW), dtype=torch.int32, device=device)
        for start in range(0, chosen.shape[0], _EVAL_CHUNK_TILES):
            part = [c[start:start + _EVAL_CHUNK_TILES] for c in selected]
            bitmaps[start:start + part[0].shape[0]] = _tile_bitmaps(mask_mod, *part, q_len, kv_len)
    # Invalid slots scatter into a discarded extra column.
    ids = torch.full((b, h, mq, nk + 1), -1, dtype=torch.int32, device=device)
    ids = ids.scatter(-1, torch.where(valid, cols, nk), torch.where(valid, slot_ids, -1))[..., :nk]
    return ids.contiguous(), bitmaps


def _traced_bitmaps(mask_mod, coords: torch.Tensor, valid: torch.Tensor, budget: int, q_len: int, kv_len: int):
    """Bitmaps [P, 128, 4] of the P slots (coords [P, 4] = (b, h, m, n), valid [P]) with static
    shapes. When at most `budget` slots are valid (torch.cond on the device-side count), only
    they are evaluated: compacted into `budget` rows by a cumsum and a scatter, their bitmaps
    scattered back to their slots (the other rows stay 0: no list refers to them). Otherwise,
    and when the slots are no more than the budget anyway, every slot is evaluated."""
    num_slots = coords.shape[0]

    def every_slot(coords, valid):
        return _tile_bitmaps(mask_mod, *coords.unbind(1), q_len, kv_len)

    if num_slots <= budget:
        return every_slot(coords, valid)

    def valid_slots_only(coords, valid):
        rank = valid.to(torch.int64).cumsum(0) - 1
        target = torch.where(valid, rank, budget)  # invalid slots land in a discarded row
        # Rows past the valid count keep slot 0: evaluated again and written with equal bits.
        slots = torch.zeros(budget + 1, dtype=torch.int64, device=coords.device).scatter(
            0, target, torch.arange(num_slots, device=coords.device))[:budget]
        chosen = coords[slots]
        bits = _tile_bitmaps(mask_mod, *chosen.unbind(1), q_len, kv_len)
        empty = torch.zeros((num_slots, TILE, WORDS_PER_ROW), dtype=torch.int32, device=coords.device)
        return empty.index_put((slots,), bits)

    return torch.cond(valid.sum() <= budget, valid_slots_only, every_slot, (coords, valid))


def _tile_bitmaps(mask_mod: Optional[Callable], b, h, m, n, q_len: int, kv_len: int) -> torch.Tensor:
    """mask_mod over the 128 x 128 elements of tiles (b, h, m, n) (each [P]), packed to [P, 128, 4].
    Nested vmaps give mask_mod scalar-shaped indices, as torch's create_block_mask does; points
    past Q_LEN / KV_LEN are clamped into range (a mask_mod indexing its own tables stays in
    bounds) and then hidden."""
    # int32 indices, as torch's kernels give mask_mods (int64 arithmetic is slower on GPUs).
    b, h, m, n = (x.to(torch.int32) for x in (b, h, m, n))
    offsets = torch.arange(TILE, device=m.device, dtype=torch.int32)
    q = m[:, None] * TILE + offsets                                                  # [P, 128]
    kv = n[:, None] * TILE + offsets                                                 # [P, 128]
    fn = mask_mod if mask_mod is not None else _all_visible
    fn = torch.vmap(fn, in_dims=(None, None, None, 0))
    fn = torch.vmap(fn, in_dims=(None, None, 0, None))
    fn = torch.vmap(fn, in_dims=(0, 0, 0, 0))
    visible = fn(b, h, q.clamp(max=q_len - 1), kv.clamp(max=kv_len - 1)).to(torch.bool)  # [P, 128, 128]
    visible = visible & (q < q_len)[:, :, None] & (kv < kv_len)[:, None, :]
    return pack_bits(visible)


def _all_visible(b, h, q_idx, kv_idx):
    return torch.ones_like(q_idx, dtype=torch.bool)


def pack_bits(visible: torch.Tensor) -> torch.Tensor:
    """bool [n, 128, 128] -> int32 [n, 128, 4]; bit c % 32 of word c // 32. The 32 bits of a word
    are distinct powers of two, so their int32 sum is their OR (bit 31 is INT32_MIN: no carry)."""
    n = visible.shape[0]
    shifts = torch.arange(32, dtype=torch.int32, device=visible.device)
    bits = torch.bitwise_left_shift(visible.reshape(n, TILE, WORDS_PER_ROW, 32).to(torch.int32), shifts)
    return bits.sum(-1, dtype=torch.int32)


def unpack_bits(bitmaps: torch.Tensor) -> torch.Tensor:
    """int32 [n, 128, 4] -> bool [n, 128, 128]."""
    shifts = torch.arange(32, device=bitmaps.device, dtype=torch.int32)
    bits = torch.bitwise_right_shift(bitmaps[..., None], shifts) & 1
    return bits.reshape(bitmaps.shape[0], TILE, TILE).to(torch.bool)


# ---- which indices a mask_mod reads ------------------------------------------------------------

def _index_reads(mask_mod) -> Tuple[bool, bool]:
    """(reads b, reads h). A flashflex Mask reads b iff it carries per-sample data and never h;
    any other mask_mod is traced symbolically (torch.fx) once per compilation, and assumed to read
    both when it cannot be traced (Python control flow on its indices): slower, never wrong."""
    from .masks import Mask
    if mask_mod is None:
        return False, False
    if isinstance(mask_mod, Mask):
        return mask_mod.batch > 0, False
    return _traced_reads(mask_mod)


@torch._dynamo.assume_constant_result
def _traced_reads(mask_mod) -> Tuple[bool, bool]:
    # Under torch.compile this runs once, at trace time; the mask_mod's code is guarded anyway,
    # since the compiled graph inlines it.
    try:
        graph = torch.fx.symbolic_trace(lambda b, h, q_idx, kv_idx: mask_mod(b, h, q_idx, kv_idx)).graph
    except Exception:  # noqa: BLE001 - any failure to trace means "assume it reads both"
        return True, True
    placeholders = [node for node in graph.nodes if node.op == "placeholder"]
    return len(placeholders[0].users) > 0, len(placeholders[1].users) > 0
