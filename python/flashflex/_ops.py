"""The attention calls over the native core, in two forms with one implementation (_forward /
_backward below), as _eagle3_ops.py:

  eager       attention: an autograd.Function (or, with nothing to differentiate, the forward
              alone), the cheapest
              dispatch torch offers from Python (through the custom ops an eager call took
              0.2-0.4 ms more host time, bench/NOTES.md);
  compiled    torch.library custom ops flashflex::fwd / flashflex::bwd with fake implementations
              and registered autograd, which torch.compile traces without running; attention takes
              them while compiling (and torch.ops.flashflex.* reach them directly).

Block masks travel as their ten int32 tensors (their sequence lengths are q's and k's, checked
by the caller); score mods as (kind, cap, tensor)."""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.autograd.forward_ad as _forward_ad
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import _C
from ._check_args import check_sizes
from ._tensor_ref import device_code, stream_of, tensor_ref, unit_inner_stride
from .score_mods import _ALIBI, _BIAS


def _mask_args(mask_tensors: List[Tensor], q: Tensor, k: Tensor):
    if not mask_tensors:
        return None
    device_type, device_index = device_code(mask_tensors[0].device)
    b, h = mask_tensors[0].shape[:2]
    bitmaps = mask_tensors[-1]
    return (b, h, q.shape[2], k.shape[2], bitmaps.shape[0], device_type, device_index,
            [t.data_ptr() for t in mask_tensors])


def _mod_args(mod_kind: int, cap: float, mod_tensor: Optional[Tensor]):
    slopes = tensor_ref(mod_tensor) if mod_kind != _BIAS else None
    bias = tensor_ref(mod_tensor) if mod_kind == _BIAS else None
    return (mod_kind, cap, slopes, bias, 0, [], [])  # no linked kernel (_score_mod_linked.py)


def _empty_out(q: Tensor) -> Tensor:
    # Same layout as q (a [B, T, H, D] view in gives a [B, T, H, D] view out); v's head dim is q's.
    return torch.empty_like(q, memory_format=torch.preserve_format)


def _forward(q: Tensor, k: Tensor, v: Tensor, mask_tensors: List[Tensor], scale: float, mod_kind: int,
             cap: float, mod_tensor: Optional[Tensor], backend: int) -> Tuple[Tensor, Tensor]:
    return run_forward(q, k, v, mask_tensors, scale, _mod_args(mod_kind, cap, mod_tensor), backend)


def run_forward(q: Tensor, k: Tensor, v: Tensor, mask_tensors: List[Tensor], scale: float, mod: tuple,
                backend: int) -> Tuple[Tensor, Tensor]:
    """The native forward with `mod` as the binding takes it (_mod_args, or a linked mod's)."""
    out = _empty_out(q)
    lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
    args = (tensor_ref(q), tensor_ref(k), tensor_ref(v), tensor_ref(out), tensor_ref(lse), scale, mod,
            _mask_args(mask_tensors, q, k), backend)
    # The Hopper kernels' tile counter: one per call, so concurrent calls (streams, graph replays) never share it.
    workspace_bytes = _C.forward_workspace_size(*args)
    workspace = torch.empty(workspace_bytes, dtype=torch.uint8, device=q.device) if workspace_bytes else None
    _C.forward(*args, workspace.data_ptr() if workspace is not None else 0, workspace_bytes, stream_of(q))
    return out, lse


def _backward(dout: Tensor, dlse: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
              mask_tensors: List[Tensor], scale: float, mod_kind: int, cap: float, mod_tensor: Optional[Tensor],
              need_dbias: bool, deterministic: bool, backend: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    dbias = torch.empty_like(mod_tensor) if need_dbias else q.new_empty(0)
    dq, dk, dv = run_backward(dout, dlse, q, k, v, out, lse, mask_tensors, scale,
                              _mod_args(mod_kind, cap, mod_tensor), dbias if need_dbias else None, deterministic,
                              backend)
    return dq, dk, dv, dbias


def run_backward(dout: Tensor, dlse: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                 mask_tensors: List[Tensor], scale: float, mod: tuple, dbias: Optional[Tensor], deterministic: bool,
                 backend: int) -> Tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) of the native backward with `mod` as the binding takes it; dbias written if given."""
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    # Named, so that a copy made for the layout outlives the native call reading its pointer.
    dout = unit_inner_stride(dout)
    dlse = None if dlse is None else unit_inner_stride(dlse)
    args = (tensor_ref(q), tensor_ref(k), tensor_ref(v), tensor_ref(out), tensor_ref(dout), tensor_ref(lse),
            tensor_ref(dlse), tensor_ref(dq), tensor_ref(dk), tensor_ref(dv), tensor_ref(dbias) if dbias is not None
            else None, scale, mod, _mask_args(mask_tensors, q, k), deterministic, backend)
    workspace_bytes = _C.backward_workspace_size(*args)
    workspace = torch.empty(workspace_bytes, dtype=torch.uint8, device=q.device) if workspace_bytes else None
    _C.backward(*args, workspace.data_ptr() if workspace is not None else 0, workspace_bytes, stream_of(q))
    return dq, dk, dv


def _gradients(backward, dout, dlse, q, k, v, out, lse, mask_tensors, scale, mod_kind, cap, mod_tensor,
               need_mod_grad: bool, deterministic: bool, backend: int):
    """(dq, dk, dv, d mod_tensor or None) through `backward` (_backward, or the flashflex::bwd op
    when compiled); learnable ALiBi slopes through the equal bias (_alibi_backward)."""
    if dout is None:  # only lse reached the loss
        dout = torch.zeros_like(out)
    if mod_kind == _ALIBI and need_mod_grad:
        return _alibi_backward(backward, dout, dlse, q, k, v, out, lse, mod_tensor, mask_tensors, scale,
                               deterministic, backend)
    need_dbias = mod_kind == _BIAS and need_mod_grad
    dq, dk, dv, dbias = backward(dout, dlse, q, k, v, out, lse, mask_tensors, scale, mod_kind, cap, mod_tensor,
                                 need_dbias, deterministic, backend)
    return dq, dk, dv, dbias if need_dbias else None


def _alibi_backward(backward, dout, dlse, q, k, v, out, lse, slopes, mask_tensors, scale, deterministic, backend):
    """Learnable ALiBi slopes: the kernels have no slope reduction, so the backward runs as the
    equal additive bias slopes[h] * (kv_idx - q_idx) (the same float32 products the kernels
    add), whose gradient dS gives d slopes[h] = sum over b, q, kv of dS * (kv_idx - q_idx).
    Correct on every backend; it materialises a float32 [1, Hq, Q_LEN, KV_LEN] bias and its
    gradient (a native row reduction in the kernels would avoid both)."""
    q_len, kv_len = q.shape[2], k.shape[2]
    distance = (torch.arange(kv_len, device=q.device)[None, :]
                - torch.arange(q_len, device=q.device)[:, None]).to(torch.float32)  # [Q_LEN, KV_LEN]
    bias = (slopes.to(torch.float32)[:, None, None] * distance)[None]               # [1, Hq, Q_LEN, KV_LEN]
    dq, dk, dv, dbias = backward(dout, dlse, q, k, v, out, lse, mask_tensors, scale, _BIAS, 0.0, bias, True,
                                 deterministic, backend)
    dslopes = (dbias[0] * distance).sum(dim=(-2, -1))
    return dq, dk, dv, dslopes.to(slopes.dtype)


# ---- eager: autograd.Function ------------------------------------------------------------------

class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mod_tensor, scale, mod_kind, cap, deterministic, backend, *mask_tensors):
        inputs = (q, k, v, list(mask_tensors), scale, mod_kind, cap, mod_tensor, deterministic, backend)
        output = _forward(q, k, v, list(mask_tensors), scale, mod_kind, cap, mod_tensor, backend)
        _setup_context(ctx, inputs, output)  # the custom op's: the same saved tensors and fields
        return output

    @staticmethod
    @once_differentiable  # the native backward is not differentiable: a second order raises
    def backward(ctx, dout, dlse):
        q, k, v, out, lse, mod_tensor, *mask_tensors = ctx.saved_tensors
        dq, dk, dv, dmod = _gradients(_backward, dout, dlse, q, k, v, out, lse, mask_tensors, ctx.scale,
                                      ctx.mod_kind, ctx.cap, mod_tensor, ctx.needs_input_grad[3],
                                      ctx.deterministic, ctx.backend)
        return (dq, dk, dv, dmod, None, None, None, None, None, *([None] * len(mask_tensors)))


def attention(q: Tensor, k: Tensor, v: Tensor, mask_tensors: List[Tensor], scale: float, mod_kind: int,
              cap: float, mod_tensor: Optional[Tensor], deterministic: bool, backend: int) -> Tuple[Tensor, Tensor]:
    """(out, lse) of checked arguments, differentiable in q, k, v and the score mod's tensor."""
    if torch.compiler.is_compiling():
        return attention_forward(q, k, v, mask_tensors, scale, mod_kind, cap, mod_tensor, deterministic, backend)
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad or (
        mod_tensor is not None and mod_tensor.requires_grad))
    # Nothing to differentiate: the forward alone (autograd.Function.apply costs ~10 us of host).
    # Inside a forward-AD dual level (grad mode or not) the Function runs, so that dual inputs raise
    # (it has no jvp) rather than lose their tangents.
    if not needs_grad and _forward_ad._current_level < 0:
        return _forward(q, k, v, mask_tensors, scale, mod_kind, cap, mod_tensor, backend)
    return _Attention.apply(q, k, v, mod_tensor, scale, mod_kind, cap, deterministic, backend, *mask_tensors)


# ---- compiled: torch.library custom ops ----------------------------------------------------------

@torch.library.custom_op("flashflex::fwd", mutates_args=())
def attention_forward(q: Tensor, k: Tensor, v: Tensor, mask_tensors: List[Tensor],
                      scale: float, mod_kind: int, cap: float, mod_tensor: Optional[Tensor],
                      deterministic: bool, backend: int) -> Tuple[Tensor, Tensor]:
    # The op is reachable without flex_attention (torch.ops.flashflex.fwd): sizes past the index
    # limits must fail before the outputs are allocated; the native core checks everything else.
    check_sizes("q", q, "Q_LEN")
    check_sizes("k", k, "KV_LEN")
    return _forward(q, k, v, mask_tensors, scale, mod_kind, cap, mod_tensor, backend)


@attention_forward.register_fake
def _(q, k, v, mask_tensors, scale, mod_kind, cap, mod_tensor, deterministic, backend):
    return _empty_out(q), q.new_empty(q.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("flashflex::bwd", mutates_args=())
def attention_backward(dout: Tensor, dlse: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                       lse: Tensor, mask_tensors: List[Tensor], scale: float, mod_kind: int,
                       cap: float, mod_tensor: Optional[Tensor], need_dbias: bool,
                       deterministic: bool, backend: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    return _backward(dout, dlse, q, k, v, out, lse, mask_tensors, scale, mod_kind, cap, mod_tensor, need_dbias,
                     deterministic, backend)


@attention_backward.register_fake
def _(dout, dlse, q, k, v, out, lse, mask_tensors, scale, mod_kind, cap, mod_tensor, need_dbias,
      deterministic, backend):
    dbias = torch.empty_like(mod_tensor) if need_dbias else q.new_empty(0)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dbias


def _setup_context(ctx, inputs, output):
    q, k, v, mask_tensors, scale, mod_kind, cap, mod_tensor, deterministic, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, mod_tensor, *mask_tensors)
    ctx.scale, ctx.mod_kind, ctx.cap = scale, mod_kind, cap
    ctx.deterministic, ctx.backend = deterministic, backend
    ctx.set_materialize_grads(False)


def _custom_op_backward(ctx, dout, dlse):
    q, k, v, out, lse, mod_tensor, *mask_tensors = ctx.saved_tensors
    dq, dk, dv, dmod = _gradients(attention_backward, dout, dlse, q, k, v, out, lse, mask_tensors, ctx.scale,
                                  ctx.mod_kind, ctx.cap, mod_tensor, ctx.needs_input_grad[7], ctx.deterministic,
                                  ctx.backend)
    no_mask_grads = [None] * len(mask_tensors)  # autograd expects the inputs' structure, list included
    return dq, dk, dv, no_mask_grads, None, None, None, dmod, None, None


attention_forward.register_autograd(_custom_op_backward, setup_context=_setup_context)
