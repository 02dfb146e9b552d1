"""flashflex.flex_attention under torch.compile(fullgraph=True): a flashflex.BlockMask built
outside the compiled function, score mods, forward and backward, no graph break (fullgraph
raises on one; the counting backend proves the frame was compiled, not skipped), and results
equal to the float64 reference."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend

import flashflex
from dense_reference import alibi_mod, bias_mod, dense_attention, dense_mask, softcap_mod
from helpers import TOL, assert_close, assert_lse_close, make_qkv, randn
from mask_cases import causal_mod

BATCH, HQ, HKV, Q_LEN, KV_LEN, HEAD_DIM = 2, 4, 2, 130, 257, 64


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _mods(name, gen):
    """(flashflex score mod, reference score mod, bias leaf or None, reference bias leaf or None)."""
    if name == "softcap":
        return flashflex.score_mods.softcap(3.0), softcap_mod(3.0), None, None
    if name == "alibi":
        slopes = torch.tensor([2.0 ** -(i + 1) for i in range(HQ)])
        return flashflex.score_mods.alibi(slopes), alibi_mod(slopes.double()), None, None
    bias = randn(gen, 1, HQ, Q_LEN, KV_LEN).requires_grad_()
    ref_bias = bias.detach().double().requires_grad_()
    return flashflex.score_mods.bias(bias), bias_mod(ref_bias), bias, ref_bias


@pytest.mark.parametrize("backend", ["aot_eager", "eager"])
@pytest.mark.parametrize("mod_name", ["softcap", "alibi", "bias"])
def test_compiled_forward_and_backward(mod_name, backend, gen):
    offset = KV_LEN - Q_LEN
    block_mask = flashflex.create_block_mask(flashflex.masks.causal(offset=offset), None, None, Q_LEN, KV_LEN)
    ff_mod, ref_mod, bias, ref_bias = _mods(mod_name, gen)
    q, k, v = (t.requires_grad_() for t in make_qkv(gen, BATCH, HQ, HKV, Q_LEN, KV_LEN, HEAD_DIM))
    dout = randn(gen, BATCH, HQ, Q_LEN, HEAD_DIM)

    def attend(q, k, v):
        out, lse = flashflex.flex_attention(q, k, v, score_mod=ff_mod, block_mask=block_mask, enable_gqa=True,
                                            return_lse=True)
        return (out * dout).sum() + lse.sum(), out, lse

    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(attend, fullgraph=True, backend=counter)
    loss, out, lse = compiled(q, k, v)
    loss.backward()
    assert counter.frame_count == 1, "the function was not compiled as one graph"

    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref_out, ref_lse = dense_attention(q64, k64, v64, dense_mask(causal_mod(offset), BATCH, HQ, Q_LEN, KV_LEN),
                                       ref_mod)
    ((ref_out * dout.double()).sum() + ref_lse.sum()).backward()
    assert_close(out, ref_out, TOL[torch.float32], "out")
    assert_lse_close(lse, ref_lse)
    for name, got, want in (("dq", q, q64), ("dk", k, k64), ("dv", v, v64)) + (
            (("dbias", bias, ref_bias),) if bias is not None else ()):
        assert got.grad is not None, f"{name}: no gradient"
        assert_close(got.grad, want.grad, TOL[torch.float32], name)


def test_compiled_twice_does_not_recompile(gen):
    block_mask = flashflex.create_block_mask(flashflex.masks.sliding_window(32), None, None, Q_LEN, Q_LEN)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(lambda q, k, v: flashflex.flex_attention(q, k, v, block_mask=block_mask),
                             fullgraph=True, backend=counter)
    outs = [compiled(*make_qkv(gen, 1, 2, 2, Q_LEN, Q_LEN, HEAD_DIM)) for _ in range(2)]
    assert counter.frame_count == 1
    assert not torch.equal(outs[0], outs[1])
