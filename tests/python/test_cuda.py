"""CUDA tensors (skipped without a GPU). A build without CUDA kernels must reject CUDA tensors
with NotImplementedError saying so; a build with them must match the float64 reference like the
CPU path, with the half-precision tolerances of helpers.TOL (a GPU kernel rounds P to the input
dtype: covered by those tolerances). float32 has no CUDA kernel: rejected with
NotImplementedError."""

from __future__ import annotations

import pytest
import torch

import flashflex
from dense_reference import dense_attention, dense_mask, softcap_mod
from helpers import TOL, assert_close, assert_lse_close, make_qkv, randn
from mask_cases import causal_mod

pytestmark = pytest.mark.cuda

CUDA_TOL = {torch.float16: TOL[torch.float16], torch.bfloat16: TOL[torch.bfloat16]}


def _call(fn, dtype):
    """fn(), or the check that this build (or dtype) rejects CUDA tensors clearly."""
    if not flashflex._C.has_cuda_backend() or dtype == torch.float32:
        with pytest.raises(NotImplementedError, match="CUDA|float32"):
            fn()
        return None
    return fn()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
def test_cuda_forward_and_backward(dtype, gen):
    batch, hq, hkv, q_len, kv_len, d = 2, 4, 2, 257, 300, 128
    q, k, v = (t.cuda().requires_grad_() for t in make_qkv(gen, batch, hq, hkv, q_len, kv_len, d, dtype=dtype))
    mask_mod = causal_mod(kv_len - q_len)
    block_mask = flashflex.create_block_mask(flashflex.masks.causal(kv_len - q_len), None, None, q_len, kv_len,
                                             device="cuda")
    result = _call(lambda: flashflex.flex_attention(
        q, k, v, score_mod=flashflex.score_mods.softcap(20.0), block_mask=block_mask, enable_gqa=True,
        return_lse=True), dtype)
    if result is None:
        return
    out, lse = result
    dout = randn(gen, batch, hq, q_len, d, dtype=dtype).cuda()
    (out * dout).sum().backward()

    q64, k64, v64 = (t.detach().cpu().double().requires_grad_() for t in (q, k, v))
    ref_out, ref_lse = dense_attention(q64, k64, v64, dense_mask(mask_mod, batch, hq, q_len, kv_len), softcap_mod(20.0))
    (ref_out * dout.cpu().double()).sum().backward()
    assert out.is_cuda and out.dtype == dtype
    assert_close(out, ref_out, CUDA_TOL[dtype], "out")
    assert_lse_close(lse.cpu(), ref_lse)
    for name, got, want in (("dq", q, q64), ("dk", k, k64), ("dv", v, v64)):
        assert_close(got.grad, want.grad, CUDA_TOL[dtype], name)


def test_cuda_tensors_with_cpu_block_mask(gen):
    q, k, v = (t.cuda() for t in make_qkv(gen, 1, 2, 2, 130, 130, 64, dtype=torch.bfloat16))
    block_mask = flashflex.create_block_mask(flashflex.masks.causal(), None, None, 130, 130, device="cpu")
    with pytest.raises(ValueError, match="block_mask"):
        flashflex.flex_attention(q, k, v, block_mask=block_mask)
