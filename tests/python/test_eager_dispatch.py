"""Eager flex_attention reaches the native core through an autograd.Function, not through the
torch.library custom ops (through them an eager call took 0.2-0.4 ms more host time on an H200
host, bench/NOTES.md): no flashflex op is dispatched in eager mode, and the outputs and every
gradient (q, k, v, a learnable bias, learnable ALiBi slopes, the loss through lse) are
bit-identical to the custom-op route, which torch.compile takes. The native backwards are not
differentiable: a second-order gradient raises (flex_attention and ttt_attention), where a silent
zero would be wrong. Gradient checkpointing (both forms) with a new mask each step recomputes
through the same Function and gives the plain run's gradients."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import flashflex
from flashflex._kernel_options import resolve_kernel_options
from helpers import make_qkv, randn
from mask_cases import causal_mod

BATCH, HQ, HKV, Q_LEN, KV_LEN, HEAD_DIM = 2, 4, 2, 70, 133, 64


class _OpNames(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def _inputs(mod_name: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = make_qkv(gen, BATCH, HQ, HKV, Q_LEN, KV_LEN, HEAD_DIM)
    mask = flashflex.create_block_mask(causal_mod(KV_LEN - Q_LEN), BATCH, None, Q_LEN, KV_LEN)
    mod_tensor = None
    if mod_name == "bias":
        mod_tensor = randn(gen, 1, HQ, Q_LEN, KV_LEN, std=0.5)
    elif mod_name == "alibi":
        mod_tensor = torch.rand(HQ, generator=gen)
    leaves = [t.requires_grad_() for t in (q, k, v) + ((mod_tensor,) if mod_tensor is not None else ())]
    return q, k, v, mask, mod_tensor, leaves


def _score_mod(mod_name, mod_tensor):
    if mod_name == "bias":
        return flashflex.score_mods.bias(mod_tensor)
    if mod_name == "alibi":
        return flashflex.score_mods.alibi(mod_tensor)
    return flashflex.score_mods.softcap(4.0) if mod_name == "softcap" else None


def _loss(out, lse, gen_seed=1):
    gen = torch.Generator().manual_seed(gen_seed)
    finite_lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    return (out * randn(gen, *out.shape)).sum() + (finite_lse * randn(gen, *lse.shape)).sum()


@pytest.mark.parametrize("mod_name", ["none", "softcap", "bias", "alibi"])
def test_eager_dispatches_no_custom_op_and_matches_it(mod_name):
    q, k, v, mask, mod_tensor, leaves = _inputs(mod_name)
    with _OpNames() as ops:
        out, lse = flashflex.flex_attention(q, k, v, score_mod=_score_mod(mod_name, mod_tensor), block_mask=mask,
                                            enable_gqa=True, return_lse=True)
        grads = torch.autograd.grad(_loss(out, lse), leaves)
    flashflex_ops = sorted({n for n in ops.names if n.startswith("flashflex.")})
    assert not flashflex_ops, f"eager mode dispatched {flashflex_ops}"

    # The custom-op route (what torch.compile traces), called directly on the same inputs.
    deterministic, backend = resolve_kernel_options(None)
    mod = _score_mod(mod_name, mod_tensor)
    op_out, op_lse = torch.ops.flashflex.fwd(q, k, v, mask._tensors(), HEAD_DIM ** -0.5, mod.kind if mod else 0,
                                             mod.cap if mod else 0.0, mod_tensor, deterministic, backend)
    op_grads = torch.autograd.grad(_loss(op_out, op_lse), leaves)
    assert torch.equal(out, op_out) and torch.equal(lse, op_lse)
    for name, got, ref in zip(("dq", "dk", "dv", "d" + mod_name), grads, op_grads):
        assert torch.equal(got, ref), name


def test_no_grad_and_frozen_inputs_skip_autograd():
    q, k, v, mask, _, _ = _inputs("none")
    with torch.no_grad():
        assert flashflex.flex_attention(q, k, v, block_mask=mask, enable_gqa=True).grad_fn is None
    frozen = [t.detach() for t in (q, k, v)]
    assert flashflex.flex_attention(*frozen, block_mask=mask, enable_gqa=True).grad_fn is None


@pytest.mark.parametrize("grad_mode", [True, False])
def test_forward_mode_ad_raises_rather_than_dropping_tangents(grad_mode):
    # Dual tensors do not require grad: a call that skipped the Function for them would return
    # an output without a tangent, silently.
    import torch.autograd.forward_ad as fwAD
    q, k, v, mask, _, _ = _inputs("none")
    q, k, v = (t.detach() for t in (q, k, v))
    with fwAD.dual_level(), torch.set_grad_enabled(grad_mode):
        dual_q = fwAD.make_dual(q, torch.randn_like(q))
        with pytest.raises(RuntimeError, match="jvp"):
            flashflex.flex_attention(dual_q, k, v, block_mask=mask, enable_gqa=True)
        q0, k0, v0 = (randn(torch.Generator().manual_seed(1), 1, 2, 40, 64) for _ in range(3))
        with pytest.raises(RuntimeError, match="jvp"):
            flashflex.eagle3.ttt_attention(fwAD.make_dual(q0, torch.randn_like(q0)), [k0], [v0])


def test_second_order_gradients_raise():
    # The native backward is not differentiable: create_graph=True must not hand out gradients
    # whose own gradient would silently be zero (the custom ops raised here too).
    q, k, v, mask, _, leaves = _inputs("none")
    out = flashflex.flex_attention(q, k, v, block_mask=mask, enable_gqa=True)
    dq, = torch.autograd.grad(out.square().sum(), (q,), create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        dq.sum().backward()


def test_second_order_gradients_raise_for_ttt_attention():
    gen = torch.Generator().manual_seed(3)
    q, k0, v0 = (randn(gen, 1, 2, 40, 64).requires_grad_() for _ in range(3))
    k1, v1 = (randn(gen, 1, 2, 40, 64).requires_grad_() for _ in range(2))
    out = flashflex.eagle3.ttt_attention(q, [k0, k1], [v0, v1])
    dq, = torch.autograd.grad(out.square().sum(), (q,), create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        dq.sum().backward()


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_with_a_new_mask_each_step(use_reentrant):
    # Trainers recompute attention in the backward (torch.utils.checkpoint) and build a new mask
    # every step: the recomputed forward goes through the same Function, the gradients are the
    # ones of the plain run, bit for bit.
    from torch.utils.checkpoint import checkpoint
    for step in range(3):
        q, k, v, _, _, leaves = _inputs("none", seed=step)
        mask = flashflex.create_block_mask(causal_mod(KV_LEN - Q_LEN - 11 * step), BATCH, None, Q_LEN, KV_LEN)

        def layer(q, k, v):
            return flashflex.flex_attention(q, k, v, block_mask=mask, enable_gqa=True).square().sum()
        layer(q, k, v).backward()  # .backward(): reentrant checkpointing refuses autograd.grad
        plain = [t.grad.clone() for t in leaves]
        for t in leaves:
            t.grad = None
        checkpoint(layer, q, k, v, use_reentrant=use_reentrant).backward()
        for name, got, ref in zip(("dq", "dk", "dv"), (t.grad for t in leaves), plain):
            assert torch.equal(got, ref), (name, step)
