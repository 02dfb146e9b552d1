"""The trainers' paths on the GPU, bf16: torch BlockMasks made per step passed to
torch.compile(flashflex.flex_attention) with inductor (the conversion compiled into fused
kernels, fullgraph, no recompilation for new masks of the same shapes), learnable ALiBi slopes
(their gradient through the bias-gradient path), and a bf16 Eagle3Attention against its float32
original. References in float64 on the values the kernels received. Skipped without a GPU."""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend
from torch.nn.attention.flex_attention import create_block_mask as torch_create_block_mask

import flashflex
from dense_reference import alibi_mod, dense_attention, dense_mask
from eagle3_reference import generate_eagle3_mask
from flashflex.eagle3_module import Eagle3Attention, Eagle3Config
from helpers import TOL, assert_close, randn

pytestmark = pytest.mark.cuda
BF16 = torch.bfloat16


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compiled_dropin_with_a_new_torch_mask_per_step(gen):
    batch, hq, hkv, t, d, steps = 2, 8, 2, 1000, 128, 3
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(flashflex.flex_attention, dynamic=False, fullgraph=True, backend=counter)
    for unroll in range(2):
        lengths = torch.tensor([t - 7 * unroll, t - 300], device="cuda")
        keys, values = [], []
        for step in range(steps):
            q = randn(gen, batch, hq, t, d, dtype=BF16).cuda().requires_grad_()
            keys.append(randn(gen, batch, hkv, t, d, dtype=BF16).cuda())
            values.append(randn(gen, batch, hkv, t, d, dtype=BF16).cuda())
            k, v = (torch.cat(x, dim=2).requires_grad_() for x in (keys, values))
            mask_mod = generate_eagle3_mask(lengths - step, t, k.shape[2])
            block_mask = torch_create_block_mask(mask_mod, batch, 1, t, k.shape[2], device="cuda")
            out = compiled(q, k, v, block_mask=block_mask, enable_gqa=True)
            dout = randn(gen, *out.shape, dtype=BF16).cuda()
            (out * dout).sum().backward()
            q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
            ref, _ = dense_attention(q64, k64, v64, dense_mask(mask_mod, batch, 1, t, k.shape[2], device="cuda"))
            (ref * dout.double()).sum().backward()
            assert_close(out, ref, TOL[BF16], f"out of step {step}")
            for name, got, want in (("dq", q, q64), ("dk", k, k64), ("dv", v, v64)):
                assert_close(got.grad, want.grad, TOL[BF16], f"{name} of step {step}")
        if unroll == 0:
            first = counter.frame_count
    assert counter.frame_count == first, "new masks of the same shapes recompiled"


@pytest.mark.parametrize("backend", ["SM90", "SM80"])
def test_learnable_alibi_slopes_on_cuda(gen, backend):
    # The slopes' gradient, sum over (b, q, kv) of dS * (kv - q), nearly cancels for a loss of
    # out alone (rows of dS sum to 0: remainders of 6e-5 to 6e-3 of the terms' sum, below what
    # bf16 inputs can resolve); lse in the loss adds P, which does not cancel (0.11-0.20), so the
    # check against float64 can tell a right gradient from a wrong one.
    if backend == "SM90" and torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the sm90 kernels need a Hopper GPU")
    heads, q_len, kv_len = 8, 300, 517
    slopes = torch.tensor([2.0 ** -(i + 1) for i in range(heads)], device="cuda", requires_grad=True)
    q = randn(gen, 2, heads, q_len, 64, dtype=BF16).cuda().requires_grad_()
    k, v = (randn(gen, 2, 2, kv_len, 64, dtype=BF16).cuda().requires_grad_() for _ in range(2))
    offset = kv_len - q_len
    mask = flashflex.create_block_mask(flashflex.masks.causal(offset), None, None, q_len, kv_len, device="cuda")
    out, lse = flashflex.flex_attention(q, k, v, score_mod=flashflex.score_mods.alibi(slopes), block_mask=mask,
                                        enable_gqa=True, return_lse=True, kernel_options={"BACKEND": backend})
    dout = randn(gen, *out.shape, dtype=BF16).cuda()
    ((out * dout).sum() + lse.sum()).backward()
    slopes64 = slopes.detach().double().requires_grad_()
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    visible = dense_mask(lambda b, h, qi, kv: kv <= qi + offset, 1, 1, q_len, kv_len, device="cuda")
    ref, ref_lse = dense_attention(q64, k64, v64, visible, alibi_mod(slopes64))
    ((ref * dout.double()).sum() + ref_lse.sum()).backward()
    assert_close(out, ref, TOL[BF16], "out")
    assert_close(slopes.grad, slopes64.grad, TOL[BF16], "dslopes")
    for name, got, want in (("dq", q, q64), ("dk", k, k64), ("dv", v, v64)):
        assert_close(got.grad, want.grad, TOL[BF16], name)


def test_bf16_eagle3_module_on_cuda_matches_float32(gen):
    """model.to(bf16) on the GPU, 2 TTT steps at T = 4096 (the trainers' cast): outputs and
    parameter gradients within bf16 rounding of the float32 module run on the CPU (small heads:
    the CPU reference path stays affordable)."""
    torch.manual_seed(0)
    attn = Eagle3Attention(Eagle3Config(hidden_size=64, num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                                        max_position_embeddings=8192))
    ref = copy.deepcopy(attn)
    attn.to("cuda", BF16)
    x = torch.randn(1, 4096, 128, generator=gen)
    mask = torch.ones(1, 4096, dtype=torch.int64)
    cache, ref_cache = [[], []], [[], []]
    for step in range(2):
        out = attn(x.to("cuda", BF16), cache, mask.cuda())
        ref_out = ref(x, ref_cache, mask)
        assert_close(out.float().cpu(), ref_out, 3e-2, f"output of step {step}")
    dout = torch.randn(out.shape, generator=gen)
    (out.float() * dout.cuda()).sum().backward()
    (ref_out * dout).sum().backward()
    for (name, p), (_, r) in zip(attn.named_parameters(), ref.named_parameters()):
        assert_close(p.grad.float().cpu(), r.grad, 3e-2, f"grad of {name}")
