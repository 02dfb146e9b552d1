"""flashflex.BlockMask: sizes, the tile lists and bitmaps against the dense mask (the contract of
include/flashflex/block_mask.hpp, which mirrors torch's BlockMask with 128 x 128 tiles), the
summary, sparsity, PNG export, conversion from torch and device moves."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask as torch_create_block_mask

import flashflex
from dense_reference import dense_mask
from helpers import TOL, assert_close, make_qkv
from mask_cases import BUILTIN_CASES, build_case, causal_mod, random_tiled_table, table_mod

TILE = 128


def _tiles(n):
    return -(-n // TILE)


def _expected_tiles(mask: torch.Tensor):
    """(full, partial) bool [B, H, nq, nkv] from a dense mask [B, H, Lq, Lkv]: a tile is full when
    all of its 128 x 128 elements are visible (a tile reaching past Q_LEN or KV_LEN never is),
    partial when some are, empty otherwise."""
    b, h, lq, lkv = mask.shape
    padded = torch.zeros(b, h, _tiles(lq) * TILE, _tiles(lkv) * TILE, dtype=torch.bool)
    padded[:, :, :lq, :lkv] = mask
    tiles = padded.view(b, h, _tiles(lq), TILE, _tiles(lkv), TILE)
    full = tiles.all(dim=5).all(dim=3)
    some = tiles.any(dim=5).any(dim=3)
    return full, some & ~full


def _listed(num_blocks: torch.Tensor, indices: torch.Tensor, n_cols: int) -> torch.Tensor:
    """bool [B, H, rows, n_cols]: the first num_blocks entries of each row of indices."""
    num_blocks, indices = num_blocks.long(), indices.long()
    b, h, rows = num_blocks.shape
    out = torch.zeros(b, h, rows, n_cols, dtype=torch.bool)
    for bb in range(b):
        for hh in range(h):
            for r in range(rows):
                n = int(num_blocks[bb, hh, r])
                cols = indices[bb, hh, r, :n]
                assert len(set(cols.tolist())) == n, "a tile is listed twice"
                out[bb, hh, r, cols] = True
    return out


def _decode_bitmaps(block_mask, b, h, q_len, kv_len) -> torch.Tensor:
    """The dense mask the block mask describes: full tiles all visible, partial tiles from their
    bitmaps (bit of element (r, c): word r * 4 + c // 32, bit c % 32), the rest hidden."""
    nq, nkv = _tiles(q_len), _tiles(kv_len)
    full = _listed(block_mask.full_kv_num_blocks, block_mask.full_kv_indices, nkv)
    ids = block_mask.partial_tile_ids.long()
    words = block_mask.bitmaps.reshape(-1, TILE, TILE // 32).to(torch.int64) & 0xFFFFFFFF
    bits = ((words.unsqueeze(-1) >> torch.arange(32)) & 1).bool().reshape(-1, TILE, TILE)
    dense = torch.zeros(full.shape[0], full.shape[1], nq * TILE, nkv * TILE, dtype=torch.bool)
    for bb in range(full.shape[0]):
        for hh in range(full.shape[1]):
            for m in range(nq):
                for n in range(nkv):
                    tile = dense[bb, hh, m * TILE:(m + 1) * TILE, n * TILE:(n + 1) * TILE]
                    if full[bb, hh, m, n]:
                        tile[:] = True
                    elif ids[bb, hh, m, n] >= 0:
                        tile[:] = bits[ids[bb, hh, m, n]]
    return dense[:, :, :q_len, :kv_len]


def _check_against_dense(block_mask, mask: torch.Tensor):
    """Every list of the block mask against the dense mask [B', H', Lq, Lkv] (B', H' its own)."""
    q_len, kv_len = mask.shape[2:]
    nq, nkv = _tiles(q_len), _tiles(kv_len)
    full, partial = _expected_tiles(mask)
    assert tuple(block_mask.kv_num_blocks.shape) == tuple(mask.shape[:2]) + (nq,)
    assert tuple(block_mask.kv_indices.shape) == tuple(mask.shape[:2]) + (nq, nkv)
    assert torch.equal(_listed(block_mask.kv_num_blocks, block_mask.kv_indices, nkv), partial), "partial kv tiles"
    assert torch.equal(_listed(block_mask.full_kv_num_blocks, block_mask.full_kv_indices, nkv), full), "full kv tiles"
    # The q-side lists (used by the backward pass) are the transpose.
    assert torch.equal(_listed(block_mask.q_num_blocks, block_mask.q_indices, nq), partial.transpose(2, 3)), \
        "partial q tiles"
    assert torch.equal(_listed(block_mask.full_q_num_blocks, block_mask.full_q_indices, nq), full.transpose(2, 3)), \
        "full q tiles"
    # Each partial tile has a bitmap, and only partial tiles do.
    assert torch.equal(block_mask.partial_tile_ids >= 0, partial)
    decoded = _decode_bitmaps(block_mask, *mask.shape)
    assert torch.equal(decoded, mask), f"{int((decoded != mask).sum())} elements differ from the dense mask"


@pytest.mark.parametrize("case_name", sorted(BUILTIN_CASES))
def test_builtin_block_mask_matches_dense_mask(case_name, gen):
    batch = 2
    case = build_case(case_name, batch, gen)
    block_mask = flashflex.create_block_mask(case.builtin(flashflex.masks), batch, None, case.q_len, case.kv_len)
    b, h, q_len, kv_len = block_mask.shape
    assert b in (1, batch) and h == 1
    assert (q_len, kv_len) == (case.q_len, case.kv_len)
    _check_against_dense(block_mask, dense_mask(case.torch_mask_mod, b, h, q_len, kv_len))


@pytest.mark.parametrize("draw", range(3))
def test_callable_block_mask_matches_dense_mask_and_torch(draw, gen):
    batch, heads = 2, 3
    q_len, kv_len = int(torch.randint(129, 400, (1,), generator=gen)), int(torch.randint(1, 400, (1,), generator=gen))
    mask_mod = table_mod(random_tiled_table(gen, (batch, heads, q_len, kv_len)))
    block_mask = flashflex.create_block_mask(mask_mod, batch, heads, q_len, kv_len, device="cpu")
    assert tuple(block_mask.shape) == (batch, heads, q_len, kv_len)
    _check_against_dense(block_mask, dense_mask(mask_mod, batch, heads, q_len, kv_len))
    # Same tile counts as torch's builder.
    ref = torch_create_block_mask(mask_mod, batch, heads, q_len, kv_len, device="cpu")
    assert torch.equal(block_mask.kv_num_blocks.long(), ref.kv_num_blocks.long())
    assert torch.equal(block_mask.full_kv_num_blocks.long(), ref.full_kv_num_blocks.long())


def test_sizes_and_broadcast_dims():
    block_mask = flashflex.create_block_mask(flashflex.masks.causal(), None, None, 300, 257)
    assert tuple(block_mask.seq_lengths) == (300, 257)
    assert tuple(block_mask.shape) == (1, 1, 300, 257)
    assert tuple(block_mask.kv_num_blocks.shape) == (1, 1, 3)


def test_summary_names_sizes_and_sparsity():
    block_mask = flashflex.create_block_mask(flashflex.masks.sliding_window(64), None, None, 300, 257)
    text = str(block_mask)
    assert "300" in text and "257" in text and "sparsity" in text
    assert len(text.splitlines()) <= 5, "a short summary"


def test_sparsity_of_causal_mask():
    # 8 x 8 tiles, 28 strictly above the diagonal are skipped: 28 / 64 = 43.75 %.
    block_mask = flashflex.create_block_mask(flashflex.masks.causal(), None, None, 1024, 1024)
    assert isinstance(block_mask.sparsity(), float)
    assert block_mask.sparsity() == pytest.approx(43.75)
    torch_mask = torch_create_block_mask(causal_mod(), None, None, 1024, 1024, device="cpu")
    assert block_mask.sparsity() == pytest.approx(torch_mask.sparsity())


def test_sparsity_counts_skipped_tiles(gen):
    batch, heads, q_len, kv_len = 2, 2, 300, 400
    table = random_tiled_table(gen, (batch, heads, q_len, kv_len))
    block_mask = flashflex.create_block_mask(table_mod(table), batch, heads, q_len, kv_len)
    full, partial = _expected_tiles(table)
    expected = 100.0 * (1.0 - (full | partial).sum().item() / full.numel())
    assert block_mask.sparsity() == pytest.approx(expected)
    full_mask = flashflex.create_block_mask(lambda b, h, q, kv: q >= 0, None, None, q_len, kv_len)
    assert full_mask.sparsity() == pytest.approx(0.0)


def test_to_png_writes_a_png(tmp_path):
    block_mask = flashflex.create_block_mask(flashflex.masks.causal(), None, None, 300, 257)
    path = tmp_path / "mask.png"
    block_mask.to_png(str(path))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 50


def test_from_torch_matches_torch_lists_and_dense_mask(gen):
    batch, heads, q_len, kv_len = 2, 2, 257, 300
    mask_mod = table_mod(random_tiled_table(gen, (batch, heads, q_len, kv_len)))
    torch_mask = torch_create_block_mask(mask_mod, batch, heads, q_len, kv_len, device="cpu")
    block_mask = flashflex.BlockMask.from_torch(torch_mask)
    assert isinstance(block_mask, flashflex.BlockMask)
    assert tuple(block_mask.shape) == (batch, heads, q_len, kv_len)
    assert tuple(block_mask.seq_lengths) == (q_len, kv_len)
    assert torch.equal(block_mask.kv_num_blocks.long(), torch_mask.kv_num_blocks.long())
    assert torch.equal(block_mask.full_kv_num_blocks.long(), torch_mask.full_kv_num_blocks.long())
    _check_against_dense(block_mask, dense_mask(mask_mod, batch, heads, q_len, kv_len))


def test_from_torch_gives_the_same_attention(gen):
    q_len, kv_len = 300, 257
    torch_mask = torch_create_block_mask(causal_mod(-30), None, None, q_len, kv_len, device="cpu")
    q, k, v = make_qkv(gen, 1, 2, 2, q_len, kv_len, 64)
    direct = flashflex.flex_attention(q, k, v, block_mask=torch_mask)
    converted = flashflex.flex_attention(q, k, v, block_mask=flashflex.BlockMask.from_torch(torch_mask))
    assert_close(converted, direct, TOL[torch.float32], "out")
    assert torch.all(direct[:, :, :30] == 0)


def test_to_cpu_keeps_the_mask(gen):
    block_mask = flashflex.create_block_mask(flashflex.masks.sliding_window(40, 3), None, None, 257, 300)
    moved = block_mask.to("cpu")
    assert isinstance(moved, flashflex.BlockMask)
    assert tuple(moved.shape) == tuple(block_mask.shape)
    for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices", "q_num_blocks", "q_indices",
                 "full_q_num_blocks", "full_q_indices", "partial_tile_ids", "bitmaps"):
        assert getattr(moved, name).device.type == "cpu"
        assert torch.equal(getattr(moved, name), getattr(block_mask, name)), name


@pytest.mark.cuda
def test_to_cuda_moves_every_tensor():
    block_mask = flashflex.create_block_mask(flashflex.masks.causal(), None, None, 257, 257)
    moved = block_mask.to("cuda")
    for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices", "q_num_blocks", "q_indices",
                 "full_q_num_blocks", "full_q_indices", "partial_tile_ids", "bitmaps"):
        assert getattr(moved, name).is_cuda, name
        assert torch.equal(getattr(moved, name).cpu(), getattr(block_mask, name)), name


def test_create_block_mask_device_argument_default_is_cpu():
    block_mask = flashflex.create_block_mask(flashflex.masks.causal(), None, None, 130, 130)
    assert block_mask.kv_num_blocks.device.type == "cpu"
