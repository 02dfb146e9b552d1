"""A torch BlockMask passed to flashflex.flex_attention means what it means to torch's kernels,
eager and compiled: a tensor its mask_mod captures, updated in place, and a reassigned mask_mod
are seen by the next call (never a stale conversion); a mask built with B or H = None whose
mask_mod reads b or h is evaluated per real sample / head inside its partial blocks (its block
lists are sample 0's / head 0's, as torch's create_block_mask makes them)."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch.nn.attention.flex_attention import create_block_mask as torch_create_block_mask

import flashflex
from dense_reference import dense_attention
from helpers import TOL, assert_close, make_qkv
from mask_cases import random_table

Q_LEN, KV_LEN, HEAD_DIM = 130, 257, 64
# Half of the elements visible at random: every 128 x 128 tile is partial (a full or empty tile
# has probability 2^-16384), so in-place changes of the table stay inside the listed tiles.
DENSITY = 0.5


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _attend(mode):
    if mode == "eager":
        return flashflex.flex_attention
    return torch.compile(flashflex.flex_attention, fullgraph=True, backend="aot_eager")


def _reference(q, k, v, visible):
    out, _ = dense_attention(q.double(), k.double(), v.double(), visible)
    return out


@pytest.mark.parametrize("mode", ["eager", "compiled"])
def test_in_place_update_of_a_captured_tensor_is_seen(mode, gen):
    table = random_table(gen, (Q_LEN, KV_LEN), DENSITY)
    block_mask = torch_create_block_mask(lambda b, h, q, kv: table[q, kv], None, None, Q_LEN, KV_LEN, device="cpu")
    q, k, v = make_qkv(gen, 1, 2, 2, Q_LEN, KV_LEN, HEAD_DIM)
    attend = _attend(mode)
    assert_close(attend(q, k, v, block_mask=block_mask), _reference(q, k, v, table), TOL[torch.float32], "before")
    table.copy_(random_table(gen, (Q_LEN, KV_LEN), DENSITY))
    assert_close(attend(q, k, v, block_mask=block_mask), _reference(q, k, v, table), TOL[torch.float32], "after")


@pytest.mark.parametrize("mode", ["eager", "compiled"])
def test_reassigned_mask_mod_is_seen(mode, gen):
    first, second = (random_table(gen, (Q_LEN, KV_LEN), DENSITY) for _ in range(2))
    block_mask = torch_create_block_mask(lambda b, h, q, kv: first[q, kv], None, None, Q_LEN, KV_LEN, device="cpu")
    q, k, v = make_qkv(gen, 1, 2, 2, Q_LEN, KV_LEN, HEAD_DIM)
    attend = _attend(mode)
    assert_close(attend(q, k, v, block_mask=block_mask), _reference(q, k, v, first), TOL[torch.float32], "first")
    block_mask.mask_mod = lambda b, h, q, kv: second[q, kv]
    assert_close(attend(q, k, v, block_mask=block_mask), _reference(q, k, v, second), TOL[torch.float32], "second")


@pytest.mark.parametrize("mode", ["eager", "compiled"])
@pytest.mark.parametrize("broadcast", ["batch", "heads"])
def test_broadcast_mask_reading_b_or_h_is_evaluated_per_sample_and_head(broadcast, mode, gen):
    batch, heads = (3, 1) if broadcast == "batch" else (1, 3)
    tables = random_table(gen, (3, Q_LEN, KV_LEN), DENSITY)
    if broadcast == "batch":
        def mask_mod(b, h, q, kv):
            return tables[b, q, kv]
    else:
        def mask_mod(b, h, q, kv):
            return tables[h, q, kv]
    block_mask = torch_create_block_mask(mask_mod, None, None, Q_LEN, KV_LEN, device="cpu")
    q, k, v = make_qkv(gen, batch, heads, heads, Q_LEN, KV_LEN, HEAD_DIM)
    visible = tables[:, None] if broadcast == "batch" else tables[None]
    out = _attend(mode)(q, k, v, block_mask=block_mask)
    assert_close(out, _reference(q, k, v, visible), TOL[torch.float32], "out")


def test_broadcast_mask_not_reading_b_or_h_stays_shared(gen):
    """A mask_mod that ignores b and h keeps one set of lists and bitmaps for every head."""
    table = random_table(gen, (Q_LEN, KV_LEN), DENSITY)
    torch_mask = torch_create_block_mask(lambda b, h, q, kv: table[q, kv], None, None, Q_LEN, KV_LEN, device="cpu")
    converted = flashflex.BlockMask.from_torch(torch_mask, batch=2, heads=8)
    assert tuple(converted.shape[:2]) == (1, 1)
    expanded = flashflex.BlockMask.from_torch(
        torch_create_block_mask(lambda b, h, q, kv: table[q, kv] & (h >= 0), None, None, Q_LEN, KV_LEN,
                                device="cpu"), batch=2, heads=8)
    assert tuple(expanded.shape[:2]) == (1, 8)
