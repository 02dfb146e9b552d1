"""torch BlockMasks made per step by torch's create_block_mask and passed as an argument to
torch.compile(flashflex.flex_attention): the TorchSpec pattern (a new EAGLE3 mask every TTT step,
keys of all steps concatenated). Under dynamic=False, the default dynamic mode and
fullgraph=True: forward and backward equal the float64 reference, no graph break (fullgraph
raises on one), and a second unroll with new masks of the same shapes compiles nothing new."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend
from torch.nn.attention.flex_attention import create_block_mask as torch_create_block_mask

import flashflex
from dense_reference import dense_attention, dense_mask
from eagle3_reference import generate_eagle3_mask
from helpers import TOL, assert_close, randn

BATCH, HQ, HKV, T, HEAD_DIM, STEPS = 2, 4, 2, 200, 64, 3


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _unroll(attend, gen, seq_lengths):
    """One TTT unroll; returns [(out, grads, reference out, reference grads)] per step."""
    results = []
    keys, values = [], []
    for step in range(STEPS):
        q = randn(gen, BATCH, HQ, T, HEAD_DIM).requires_grad_()
        keys.append(randn(gen, BATCH, HKV, T, HEAD_DIM))
        values.append(randn(gen, BATCH, HKV, T, HEAD_DIM))
        k = torch.cat(keys, dim=2).requires_grad_()
        v = torch.cat(values, dim=2).requires_grad_()
        mask_mod = generate_eagle3_mask(seq_lengths - step, T, k.shape[2])
        block_mask = torch_create_block_mask(mask_mod, BATCH, 1, T, k.shape[2], device="cpu")
        out = attend(q, k, v, block_mask=block_mask, enable_gqa=True)
        dout = randn(gen, *out.shape)
        (out * dout).sum().backward()

        q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
        ref, _ = dense_attention(q64, k64, v64, dense_mask(mask_mod, BATCH, 1, T, k.shape[2]))
        (ref * dout.double()).sum().backward()
        results.append((out, (q.grad, k.grad, v.grad), ref, (q64.grad, k64.grad, v64.grad)))
    return results


def _check(results):
    for step, (out, grads, ref, ref_grads) in enumerate(results):
        assert_close(out, ref, TOL[torch.float32], f"out of step {step}")
        for name, got, want in zip(("dq", "dk", "dv"), grads, ref_grads):
            assert_close(got, want, TOL[torch.float32], f"{name} of step {step}")


@pytest.mark.parametrize("dynamic", [False, None], ids=["static", "default-dynamic"])
def test_new_torch_mask_per_step_compiles_once_per_shape(dynamic, gen):
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(flashflex.flex_attention, dynamic=dynamic, fullgraph=True, backend=counter)
    _check(_unroll(compiled, gen, torch.tensor([T, T - 57])))
    compiled_first = counter.frame_count
    assert 1 <= compiled_first <= STEPS
    # New masks (new closures, new length tensors), same shapes: nothing recompiles.
    _check(_unroll(compiled, gen, torch.tensor([T - 31, T - 90])))
    assert counter.frame_count == compiled_first, "a new mask of the same shape recompiled"


def test_inductor_compiles_the_conversion(gen):
    """The conversion in fused kernels (inductor), one step, forward only: no data-dependent
    shape, so nothing falls back or breaks the graph. T = 1024 gives more list slots (256) than
    the budget of evaluated tiles (96): the torch.cond of the traced path is compiled too."""
    t = 1024
    compiled = torch.compile(flashflex.flex_attention, dynamic=False, fullgraph=True)
    q = randn(gen, BATCH, HQ, t, HEAD_DIM)
    k, v = randn(gen, BATCH, HKV, 2 * t, HEAD_DIM), randn(gen, BATCH, HKV, 2 * t, HEAD_DIM)
    mask_mod = generate_eagle3_mask(torch.tensor([t - 1, t - 170]), t, 2 * t)
    block_mask = torch_create_block_mask(mask_mod, BATCH, 1, t, 2 * t, device="cpu")
    out = compiled(q, k, v, block_mask=block_mask, enable_gqa=True)
    ref, _ = dense_attention(q.double(), k.double(), v.double(), dense_mask(mask_mod, BATCH, 1, t, 2 * t))
    assert_close(out, ref, TOL[torch.float32], "out")


@pytest.mark.parametrize("kind", ["structured", "random"])
def test_traced_conversion_within_and_past_the_budget(kind, gen):
    """T = 1024, 3 blocks: 2 x 8 x 24 = 384 list slots against a budget of 2 * (8 + 24) = 64
    evaluated tiles per sample. The EAGLE3 mask (about 40 partial tiles per sample) is evaluated
    on its valid slots only; a random mask (every tile partial) on every slot. Both equal the
    eager conversion and the dense mask."""
    t, batch = 1024, 2
    if kind == "structured":
        mask_mod = generate_eagle3_mask(torch.tensor([t - 2, t - 333]), t, 3 * t)
    else:
        table = torch.rand(batch, t, 3 * t, generator=gen) < 0.5

        def mask_mod(b, h, q_idx, kv_idx):
            return table[b, q_idx, kv_idx]
    block_mask = torch_create_block_mask(mask_mod, batch, 1, t, 3 * t, device="cpu")
    traced = torch.compile(lambda m: flashflex.BlockMask.from_torch(m)._tensors(), fullgraph=True,
                           backend="aot_eager")(block_mask)
    eager = flashflex.BlockMask.from_torch(block_mask)
    partial = int(eager.kv_num_blocks.sum())
    assert (partial <= batch * 64) == (kind == "structured"), partial
    rebuilt = flashflex.BlockMask(eager.seq_lengths, *traced)
    assert torch.equal(rebuilt.to_dense_elements(), dense_mask(mask_mod, batch, 1, t, 3 * t))
    assert torch.equal(rebuilt.to_dense_elements(), eager.to_dense_elements())


def test_traced_and_eager_conversions_agree(gen):
    """The compiled conversion (every list slot evaluated, static shapes) and the eager one
    (valid slots only) describe the same mask."""
    mask_mod = generate_eagle3_mask(torch.tensor([T - 3, T - 100]), T, 3 * T)
    block_mask = torch_create_block_mask(mask_mod, BATCH, 1, T, 3 * T, device="cpu")
    traced = torch.compile(lambda m: flashflex.BlockMask.from_torch(m)._tensors(), fullgraph=True,
                           backend="aot_eager")(block_mask)
    eager = flashflex.BlockMask.from_torch(block_mask)
    rebuilt = flashflex.BlockMask(eager.seq_lengths, *traced)
    assert torch.equal(rebuilt.to_dense_elements(), eager.to_dense_elements())
    assert torch.equal(rebuilt.to_dense_elements(), dense_mask(mask_mod, BATCH, 1, T, 3 * T))
    for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "q_num_blocks", "full_q_num_blocks"):
        assert torch.equal(getattr(rebuilt, name), getattr(eager, name)), name


@pytest.mark.parametrize("mode", ["eager", "compiled"])
def test_narrow_lists_from_kv_blocks(mode, gen):
    """A torch BlockMask made by hand with lists narrower than the kv-tiles (from_kv_blocks):
    the width, 2 here, bounds the tiles evaluated; the result is the mask_mod's."""
    from torch.nn.attention.flex_attention import BlockMask as TorchBlockMask
    t = 512

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (kv_idx > q_idx - 60)
    counts = torch.tensor([[[1, 2, 2, 2]]], dtype=torch.int32)
    indices = torch.tensor([[[[0, 0], [0, 1], [1, 2], [2, 3]]]], dtype=torch.int32)
    # compute_q_blocks=False: torch cannot transpose lists narrower than the kv-tiles; flashflex does.
    block_mask = TorchBlockMask.from_kv_blocks(counts, indices, BLOCK_SIZE=128, mask_mod=mask_mod, seq_lengths=(t, t),
                                               compute_q_blocks=False)
    attend = flashflex.flex_attention
    if mode == "compiled":
        attend = torch.compile(attend, fullgraph=True, backend="aot_eager")
    q, k, v = (randn(gen, 1, 2, t, HEAD_DIM) for _ in range(3))
    ref, _ = dense_attention(q.double(), k.double(), v.double(), dense_mask(mask_mod, 1, 1, t, t))
    assert_close(attend(q, k, v, block_mask=block_mask), ref, TOL[torch.float32], "out")
