"""Masks: every flashflex.masks built-in and random mask_mods drawn at test time, through both
block-mask routes (flashflex.create_block_mask, and torch's create_block_mask with the Mask or a
plain mask_mod), against torch's flex_attention in float64 with the hand-written torch mask_mod
of mask_cases.py. Fully masked rows give out = 0 and lse = -inf."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask as torch_create_block_mask

import flashflex
from dense_reference import dense_mask, index_grid
from helpers import TOL, assert_close, assert_lse_close, make_qkv, torch_flex_reference
from mask_cases import BUILTIN_CASES, RANDOM_CASES, build_case, causal_mod

BATCH, HQ, HKV, HEAD_DIM = 2, 2, 1, 64


def _run(case, gen, block_mask):
    q, k, v = make_qkv(gen, BATCH, HQ, HKV, case.q_len, case.kv_len, HEAD_DIM)
    out, lse = flashflex.flex_attention(q, k, v, block_mask=block_mask, enable_gqa=True, return_lse=True)
    ref_out, ref_lse = torch_flex_reference(q, k, v, case.torch_mask_mod)
    assert out.dtype == torch.float32
    assert_close(out, ref_out, TOL[torch.float32], f"{case.name}: out")
    assert_lse_close(lse, ref_lse, f"{case.name}: lse")
    empty = torch.isneginf(ref_lse)
    assert torch.all(out[empty] == 0), f"{case.name}: fully masked rows must give out = 0"


@pytest.mark.parametrize("case_name", sorted(BUILTIN_CASES))
def test_builtin_mask_predicate_matches_torch_mask_mod(case_name, gen):
    case = build_case(case_name, BATCH, gen)
    mask = case.builtin(flashflex.masks)
    assert isinstance(mask, flashflex.Mask)
    got = mask(*index_grid(BATCH, HQ, case.q_len, case.kv_len))
    want = dense_mask(case.torch_mask_mod, BATCH, HQ, case.q_len, case.kv_len)
    got = torch.as_tensor(got).expand_as(want)
    assert got.dtype == torch.bool
    assert torch.equal(got, want), f"{case_name}: {int((got != want).sum())} of {want.numel()} entries differ"


@pytest.mark.parametrize("case_name", sorted(BUILTIN_CASES))
def test_builtin_mask_with_flashflex_create_block_mask(case_name, gen):
    case = build_case(case_name, BATCH, gen)
    block_mask = flashflex.create_block_mask(case.builtin(flashflex.masks), BATCH, None, case.q_len, case.kv_len,
                                             device="cpu")
    assert isinstance(block_mask, flashflex.BlockMask)
    _run(case, gen, block_mask)


@pytest.mark.parametrize("case_name", sorted(BUILTIN_CASES))
def test_builtin_mask_as_torch_mask_mod(case_name, gen):
    case = build_case(case_name, BATCH, gen)
    block_mask = torch_create_block_mask(case.builtin(flashflex.masks), BATCH, None, case.q_len, case.kv_len,
                                         device="cpu")
    _run(case, gen, block_mask)


@pytest.mark.parametrize("route", ["torch_create_block_mask", "flashflex_create_block_mask"])
@pytest.mark.parametrize("case_name", sorted(RANDOM_CASES))
@pytest.mark.parametrize("draw", range(3))
def test_random_mask_mod(case_name, route, draw, gen):
    # `draw` only changes the test id, hence the seed of `gen`: three independent random masks.
    case = build_case(case_name, BATCH, gen, heads=HQ)
    create = torch_create_block_mask if route == "torch_create_block_mask" else flashflex.create_block_mask
    _run(case, gen, create(case.torch_mask_mod, BATCH, HQ, case.q_len, case.kv_len, device="cpu"))


@pytest.mark.parametrize("case_name", ["random_document", "random_sliding_window"])
@pytest.mark.parametrize("draw", range(3))
def test_random_builtin_mask(case_name, draw, gen):
    case = build_case(case_name, BATCH, gen)
    _run(case, gen, flashflex.create_block_mask(case.builtin(flashflex.masks), BATCH, None, case.q_len,
                                                case.kv_len, device="cpu"))


def test_fully_masked_rows_give_zero_output_and_minus_inf_lse(gen):
    # Rows q % 3 == 0 see nothing, and rows 0..139 (all of tile 0 and part of tile 1) see nothing:
    # empty rows inside partial tiles and a whole empty tile row.
    q_len, kv_len = 300, 257

    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx % 3 != 0) & (q_idx >= 140) & (kv_idx <= q_idx)

    q, k, v = make_qkv(gen, BATCH, HQ, HKV, q_len, kv_len, HEAD_DIM)
    block_mask = torch_create_block_mask(mask_mod, None, None, q_len, kv_len, device="cpu")
    out, lse = flashflex.flex_attention(q, k, v, block_mask=block_mask, enable_gqa=True, return_lse=True)
    empty = ~dense_mask(mask_mod, BATCH, HQ, q_len, kv_len).any(-1)
    assert int(empty.sum()) > 0
    assert not torch.isnan(out).any()
    assert torch.all(out[empty] == 0)
    assert torch.all(torch.isneginf(lse[empty]))
    assert torch.all(torch.isfinite(lse[~empty]))
    ref_out, ref_lse = torch_flex_reference(q, k, v, mask_mod)
    assert_close(out, ref_out, TOL[torch.float32], "out")
    assert_lse_close(lse, ref_lse)


def test_mask_that_hides_everything(gen):
    q, k, v = make_qkv(gen, 1, 2, 2, 130, 130, HEAD_DIM)
    block_mask = flashflex.create_block_mask(flashflex.masks.causal(offset=-200), None, None, 130, 130)
    out, lse = flashflex.flex_attention(q, k, v, block_mask=block_mask, return_lse=True)
    assert torch.all(out == 0)
    assert torch.all(torch.isneginf(lse))


def test_mask_depending_on_head_with_gqa(gen):
    # Query heads of one KV group see different keys: the mask must be indexed by the query head.
    hq, hkv, length = 8, 2, 200

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & ((kv_idx + h) % (h + 2) != 0)

    q, k, v = make_qkv(gen, BATCH, hq, hkv, length, length, HEAD_DIM)
    block_mask = torch_create_block_mask(mask_mod, None, hq, length, length, device="cpu")
    out, lse = flashflex.flex_attention(q, k, v, block_mask=block_mask, enable_gqa=True, return_lse=True)
    ref_out, ref_lse = torch_flex_reference(q, k, v, mask_mod)
    assert_close(out, ref_out, TOL[torch.float32], "out")
    assert_lse_close(lse, ref_lse)


def test_mask_with_batch_and_head_broadcast(gen):
    # A (1, 1) mask applies to every sample and head.
    q, k, v = make_qkv(gen, 2, 4, 4, 257, 257, HEAD_DIM)
    block_mask = flashflex.create_block_mask(flashflex.masks.causal(), None, None, 257, 257)
    out = flashflex.flex_attention(q, k, v, block_mask=block_mask)
    ref_out, _ = torch_flex_reference(q, k, v, causal_mod())
    assert_close(out, ref_out, TOL[torch.float32], "out")

