"""The score_mod zoo (test_score_mod_callables.py) on CUDA, in bf16: every recognised callable runs
on the ahead-of-time kernels, forward and backward (captured tensors' gradients included), against
the float64 reference; every other one runs on the linked kernels (forward and backward likewise);
both kernel families (backend AUTO: the sm90 kernels on Hopper; SM80). Skipped without a GPU.

Tolerance, as in test_cuda_backward.py: 2 x the error of a low-precision dense attention (products
in bf16, softmax in float32, P rounded to bf16) against the same float64 reference, plus 2 ulps."""

from __future__ import annotations

import pytest
import torch

import flashflex
from flashflex import _C
from flashflex._score_mod_resolve import resolve_callable
from dense_reference import dense_attention, dense_mask
from helpers import make_qkv, randn
from test_cuda_backward import ULP, lowp_attention, rel_err
from test_score_mod_callables import BATCH, HEAD_DIM, HKV, HQ, KV_LEN, MASK, Q_LEN, ZOO, _tensors, vmapped

pytestmark = pytest.mark.cuda
DTYPE = torch.bfloat16


def _run(attend, q, k, v, leaves, dout, dlse):
    # The loss runs through lse too: without it a learnable ALiBi slope's gradient is the small
    # remainder of cancelling terms, which no bf16 check can tell from a wrong one (bench/NOTES.md,
    # learnable ALiBi slopes).
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out, lse = attend(q, k, v)
    finite_lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    ((out.float() * dout.float()).sum() + (finite_lse.float() * dlse.float()).sum()).backward()
    return [out] + [t.grad for t in (q, k, v)] + [t.grad for t in leaves]


@pytest.mark.parametrize("backend", ["AUTO", "SM80"])
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_on_cuda(name, backend, gen):
    case = ZOO[name]
    ff, ref = _tensors(case.tensors, gen)
    ff = {n: (torch.nn.Parameter(t.detach().cuda()) if isinstance(t, torch.nn.Parameter)
              else t.detach().cuda().requires_grad_(t.requires_grad)) for n, t in ff.items()}
    low = {n: t.detach().cuda().requires_grad_(t.requires_grad) for n, t in ff.items()}
    mod, ref_mod, low_mod = case.build(ff), case.build(ref), case.build(low)
    q, k, v = (t.cuda() for t in make_qkv(gen, BATCH, HQ, HKV, Q_LEN, KV_LEN, HEAD_DIM, dtype=DTYPE))
    block_mask = flashflex.create_block_mask(MASK, None, None, Q_LEN, KV_LEN, device="cuda")
    if case.kind is None:
        linked = resolve_callable(mod, q, k, _C.BACKENDS[backend]).linked
        assert linked is not None, f"{name}: expected the linked kernels"
    dout = randn(gen, BATCH, HQ, Q_LEN, HEAD_DIM).cuda()
    dlse = randn(gen, BATCH, HQ, Q_LEN).cuda()
    mask = dense_mask(MASK, BATCH, HQ, Q_LEN, KV_LEN)
    leaves = [ff[n] if not isinstance(mod, torch.nn.Module) else mod.bias for n in ff if ff[n].requires_grad]
    got = _run(lambda q, k, v: flashflex.flex_attention(q, k, v, score_mod=mod, block_mask=block_mask,
                                                        enable_gqa=True, return_lse=True,
                                                        kernel_options={"BACKEND": backend}), q, k, v, leaves, dout,
               dlse)
    want = _run(lambda q, k, v: dense_attention(q, k, v, mask, vmapped(ref_mod)),
                *(t.cpu().double() for t in (q, k, v)), [ref[n] for n in ref if ref[n].requires_grad],
                dout.cpu().double(), dlse.cpu().double())
    base = _run(lambda q, k, v: lowp_attention(q, k, v, mask.cuda(), vmapped(low_mod), HEAD_DIM ** -0.5),
                q, k, v, [low[n] for n in low if low[n].requires_grad], dout, dlse)
    names = ["out", "dq", "dk", "dv"] + [f"d{n}" for n in ff if ff[n].requires_grad]
    floor = 0.01 * max(w.abs().max().item() for w in want[1:4])
    for what, g, w, b in zip(names, got, want, base):
        err, base_err = rel_err(g.cpu(), w, floor), rel_err(b.cpu(), w, floor)
        tol = 2 * base_err + 2 * ULP[DTYPE]
        assert err <= tol, f"{name} {what}: error {err:.3e} > {tol:.3e} (2 x low-precision {base_err:.3e} + 2 ulp)"


def test_float64_bias_on_cuda_runs_as_a_float32_bias(gen):
    bias64 = randn(gen, 1, HQ, Q_LEN, KV_LEN, dtype=torch.float64)
    bias = bias64.cuda()
    mod = lambda s, b, h, q, kv: s + bias[0, h, q, kv]  # noqa: E731
    q, k, v = (t.cuda() for t in make_qkv(gen, BATCH, HQ, HKV, Q_LEN, KV_LEN, HEAD_DIM, dtype=DTYPE))
    resolved = resolve_callable(mod, q, k)
    assert resolved.graph is None and resolved.builtin.name == "bias"
    assert resolved.builtin.tensor.dtype == torch.float32
    out = flashflex.flex_attention(q, k, v, score_mod=mod, enable_gqa=True)
    want, _ = dense_attention(*(t.cpu().double() for t in (q, k, v)), None,
                              vmapped(lambda s, b, h, q, kv: s + bias64[0, h, q, kv]))
    base, _ = lowp_attention(q, k, v, None, vmapped(lambda s, b, h, q, kv: s + bias.float()[0, h, q, kv]),
                             HEAD_DIM ** -0.5)
    err, base_err = rel_err(out.cpu(), want), rel_err(base.cpu(), want)
    assert err <= 2 * base_err + 2 * ULP[DTYPE], f"out: error {err:.3e}, low-precision dense {base_err:.3e}"
