"""torch's BlockMask surface on flashflex.BlockMask (numel, as_tuple, _adjust, to_string, indexing,
block-level to_dense), create_block_mask's BLOCK_SIZE and separate_full_blocks keywords, the
gradient of learnable ALiBi slopes and the output dtype under CPU autocast, each against torch's
own object or the float64 reference."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.attention.flex_attention as torch_flex
from torch.nn.attention.flex_attention import create_block_mask as torch_create_block_mask

import flashflex
from dense_reference import alibi_mod, dense_attention, dense_mask
from helpers import TOL, assert_close, make_qkv, randn
from mask_cases import causal_mod, random_tiled_table, table_mod

BATCH, HEADS, Q_LEN, KV_LEN = 2, 3, 300, 400


@pytest.fixture
def pair(gen):
    """(flashflex mask, torch mask, mask_mod) of one random tiled mask_mod: the same lists."""
    mask_mod = table_mod(random_tiled_table(gen, (BATCH, HEADS, Q_LEN, KV_LEN)))
    torch_mask = torch_create_block_mask(mask_mod, BATCH, HEADS, Q_LEN, KV_LEN, device="cpu")
    return flashflex.create_block_mask(mask_mod, BATCH, HEADS, Q_LEN, KV_LEN), torch_mask, mask_mod


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a.long(), b.long())
    return a == b


def test_numel_as_tuple_to_dense_and_to_string_are_torchs(pair):
    mask, torch_mask, _ = pair
    assert mask.numel() == torch_mask.numel() == BATCH * HEADS * Q_LEN * KV_LEN
    ours, theirs = mask.as_tuple(), torch_mask.as_tuple()
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours[:-1], theirs[:-1])):
        assert _same(a, b), f"as_tuple()[{i}]"
    assert len(mask.as_tuple(flatten=False)) == len(torch_mask.as_tuple(flatten=False))
    assert mask.to_dense().dtype == torch_mask.to_dense().dtype
    assert torch.equal(mask.to_dense(), torch_mask.to_dense())  # block level: [B, H, Mq, Nk]
    assert tuple(mask.to_dense().shape) == (BATCH, HEADS, 3, 4)
    assert mask.to_string() == torch_mask.to_string()
    assert mask.to_string(grid_size=4, limit=1) == torch_mask.to_string(grid_size=4, limit=1)


def test_to_dense_elements_is_the_element_level_mask(pair):
    mask, _, mask_mod = pair
    assert torch.equal(mask.to_dense_elements(), dense_mask(mask_mod, BATCH, HEADS, Q_LEN, KV_LEN))


@pytest.mark.parametrize("index", [1, -1, (0, 2), (slice(0, 2), slice(1, 3)), (torch.tensor([1, 0]),)],
                         ids=["int", "negative", "int-int", "slices", "tensor"])
def test_indexing_selects_samples_and_heads_as_torch(pair, index, gen):
    mask, torch_mask, mask_mod = pair
    sliced, torch_sliced = mask[index], torch_mask[index]
    assert tuple(sliced.shape) == tuple(torch_sliced.shape)
    assert torch.equal(sliced.kv_num_blocks, torch_sliced.kv_num_blocks)
    assert torch.equal(sliced.full_kv_num_blocks, torch_sliced.full_kv_num_blocks)
    dense = dense_mask(mask_mod, BATCH, HEADS, Q_LEN, KV_LEN)
    padded = index if isinstance(index, tuple) else (index,)
    padded = tuple(slice(i % n, i % n + 1) if isinstance(i, int) else i for i, n in zip(padded, (BATCH, HEADS)))
    assert torch.equal(sliced.to_dense_elements(), dense[padded])
    # The sliced mask runs: sample / head selection with the bitmaps shared.
    b, h = sliced.shape[:2]
    q, k, v = make_qkv(gen, b, h, h, Q_LEN, KV_LEN, 64)
    ref, _ = dense_attention(q.double(), k.double(), v.double(), dense[padded])
    assert_close(flashflex.flex_attention(q, k, v, block_mask=sliced), ref, TOL[torch.float32], "out")


def test_indexing_q_tiles_is_refused_with_the_reason(pair):
    mask, _, _ = pair
    with pytest.raises(NotImplementedError, match="keep every q-tile"):
        mask[0, 0, torch.tensor([1])]


@pytest.mark.parametrize("builtin", [True, False], ids=["builtin", "callable"])
def test_adjust_gives_the_mask_at_the_new_lengths(builtin):
    mask_mod = flashflex.masks.causal() if builtin else causal_mod()
    mask = flashflex.create_block_mask(mask_mod, None, None, 1000, 1000)
    adjusted = mask._adjust(300, 270)
    assert tuple(adjusted.shape) == (1, 1, 300, 270)
    assert torch.equal(adjusted.to_dense_elements(), dense_mask(causal_mod(), 1, 1, 300, 270))
    assert adjusted.numel() == 300 * 270  # torch >= 2.13 counts B * H * Q_LEN * KV_LEN (2.11: padded tiles)


@pytest.mark.parametrize("block_size", [128, (128, 128)])
def test_block_size_128_is_accepted(block_size):
    mask = flashflex.create_block_mask(flashflex.masks.causal(), None, None, 256, 256, BLOCK_SIZE=block_size)
    assert mask.BLOCK_SIZE == (128, 128)


@pytest.mark.parametrize("block_size", [64, (128, 64), 256])
def test_other_block_sizes_are_refused_naming_the_keyword(block_size):
    with pytest.raises(ValueError, match=r"BLOCK_SIZE: expected 128 or \(128, 128\)"):
        flashflex.create_block_mask(flashflex.masks.causal(), None, None, 256, 256, BLOCK_SIZE=block_size)


@pytest.mark.skipif("separate_full_blocks" not in inspect.signature(torch_create_block_mask).parameters,
                    reason="this torch's create_block_mask has no separate_full_blocks to compare against")
@pytest.mark.parametrize("builtin", [True, False], ids=["builtin", "callable"])
def test_separate_full_blocks_false_lists_every_tile_as_partial(builtin, gen):
    q_len, kv_len = 300, 400
    mask_mod = flashflex.masks.causal(offset=100) if builtin else causal_mod(100)
    merged = flashflex.create_block_mask(mask_mod, None, None, q_len, kv_len, separate_full_blocks=False)
    torch_merged = torch_create_block_mask(causal_mod(100), None, None, q_len, kv_len, device="cpu",
                                           separate_full_blocks=False)
    assert int(merged.full_kv_num_blocks.sum()) == 0 and int(merged.full_q_num_blocks.sum()) == 0
    assert torch.equal(merged.kv_num_blocks, torch_merged.kv_num_blocks)
    assert torch.equal(merged.to_dense(), torch_merged.to_dense())
    assert torch.equal(merged.to_dense_elements(), dense_mask(causal_mod(100), 1, 1, q_len, kv_len))
    q, k, v = make_qkv(gen, 1, 2, 2, q_len, kv_len, 64)
    separate = flashflex.create_block_mask(mask_mod, None, None, q_len, kv_len)
    assert_close(flashflex.flex_attention(q, k, v, block_mask=merged),
                 flashflex.flex_attention(q, k, v, block_mask=separate), TOL[torch.float32], "out")


def test_learnable_alibi_slopes_get_their_gradient(gen):
    heads, q_len, kv_len = 4, 130, 257
    slopes = torch.tensor([2.0 ** -(i + 1) for i in range(heads)], requires_grad=True)
    q, k, v = (t.requires_grad_() for t in make_qkv(gen, 2, heads, 2, q_len, kv_len, 64))
    mask = flashflex.create_block_mask(flashflex.masks.causal(kv_len - q_len), None, None, q_len, kv_len)
    out = flashflex.flex_attention(q, k, v, score_mod=flashflex.score_mods.alibi(slopes), block_mask=mask,
                                   enable_gqa=True)
    dout = randn(gen, *out.shape)
    (out * dout).sum().backward()

    slopes64 = slopes.detach().double().requires_grad_()
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref, _ = dense_attention(q64, k64, v64, dense_mask(causal_mod(kv_len - q_len), 1, 1, q_len, kv_len),
                             alibi_mod(slopes64))
    (ref * dout.double()).sum().backward()
    assert slopes.grad is not None, "no gradient for the slopes"
    assert_close(slopes.grad, slopes64.grad, TOL[torch.float32], "dslopes")
    for name, got, want in (("dq", q, q64), ("dk", k, k64), ("dv", v, v64)):
        assert_close(got.grad, want.grad, TOL[torch.float32], name)


def test_output_dtype_under_cpu_autocast_is_torchs(gen):
    q, k, v = make_qkv(gen, 1, 2, 2, 130, 130, 64)
    mask_mod = causal_mod()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = flashflex.flex_attention(q, k, v, block_mask=flashflex.create_block_mask(
            flashflex.masks.causal(), None, None, 130, 130))
        torch_out = torch_flex.flex_attention(q, k, v, block_mask=torch_create_block_mask(
            mask_mod, None, None, 130, 130, device="cpu"))
    assert torch_out.dtype == torch.bfloat16
    assert out.dtype == torch_out.dtype
    ref, _ = dense_attention(*(t.to(torch.bfloat16).double() for t in (q, k, v)), dense_mask(mask_mod, 1, 1, 130, 130))
    assert_close(out, ref, TOL[torch.bfloat16], "out")
