"""The EAGLE3 calls over the native entry points (python/src/bind_eagle3.cpp), in two forms with
one implementation (_forward / _backward below):

  eager       eagle3_attention: an autograd.Function (or, without grad, the forward alone), the
              cheapest dispatch torch offers from Python;
  compiled    torch.library custom ops flashflex::eagle3_fwd / flashflex::eagle3_bwd with fake
              implementations and registered autograd, which torch.compile(fullgraph=True) traces
              without running; eagle3_attention takes them while compiling.

Gradients flow to q and to every key/value block. The blocks travel as lists, never concatenated;
the backward returns one flat list [dq, dk_0..dk_k, dv_0..dv_k]. Block 0's causal mask comes
prebuilt from _eagle3_mask_cache. Arguments are checked by flashflex.eagle3 before they get here."""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.autograd.forward_ad as _forward_ad
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import _C
from ._eagle3_mask_cache import causal_mask
from ._tensor_ref import stream_of, tensor_ref, unit_inner_stride


def _empty_out(q: Tensor) -> Tensor:
    # Same layout as q: a [B, T, H, D] view in gives a [B, T, H, D] view out.
    return torch.empty_like(q, memory_format=torch.preserve_format)


def _empty_lse(q: Tensor) -> Tensor:
    return q.new_empty(q.shape[:-1], dtype=torch.float32)


class _Workspace:
    """alloc_workspace of the binding: the scratch tensor outlives the native call with this
    object (torch's caching allocator makes it free after the first call of a size)."""

    __slots__ = ("device", "tensor")

    def __init__(self, device: torch.device):
        self.device, self.tensor = device, None

    def __call__(self, nbytes: int) -> int:
        self.tensor = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        return self.tensor.data_ptr()


def _block_refs(blocks: List[Tensor], like: tuple) -> list:
    # The blocks share q's dtype and device (checked by flashflex.eagle3): only pointer, sizes and
    # strides differ from the first tuple.
    return [(t.data_ptr(), like[1], like[2], like[3], t.shape, t.stride()) for t in blocks]


def _forward(q: Tensor, k_blocks: List[Tensor], v_blocks: List[Tensor], seq_lengths: Optional[Tensor],
             scale: float, backend: int) -> Tuple[Tensor, Tensor]:
    out, lse = _empty_out(q), _empty_lse(q)
    stream = stream_of(q)
    q_ref = tensor_ref(q)
    _C.eagle3_forward(q_ref, _block_refs(k_blocks, q_ref), _block_refs(v_blocks, q_ref), tensor_ref(seq_lengths),
                      tensor_ref(out), tensor_ref(lse), scale, backend, causal_mask(q, stream), _Workspace(q.device),
                      stream)
    return out, lse


def _backward(dout: Tensor, dlse: Optional[Tensor], q: Tensor, k_blocks: List[Tensor], v_blocks: List[Tensor],
              seq_lengths: Optional[Tensor], out: Tensor, lse: Tensor, scale: float, deterministic: bool,
              backend: int) -> List[Tensor]:
    dq = torch.empty_like(q)
    dk_blocks = [torch.empty_like(k) for k in k_blocks]
    dv_blocks = [torch.empty_like(v) for v in v_blocks]
    # Named, so that a copy made for the layout outlives the native call reading its pointer.
    dout = unit_inner_stride(dout)
    dlse = None if dlse is None else unit_inner_stride(dlse)
    stream = stream_of(q)
    q_ref = tensor_ref(q)
    _C.eagle3_backward(q_ref, _block_refs(k_blocks, q_ref), _block_refs(v_blocks, q_ref), tensor_ref(seq_lengths),
                       tensor_ref(out), tensor_ref(dout), tensor_ref(lse), tensor_ref(dlse), tensor_ref(dq),
                       _block_refs(dk_blocks, q_ref), _block_refs(dv_blocks, q_ref), scale, deterministic, backend,
                       causal_mask(q, stream), _Workspace(q.device), stream)
    return [dq, *dk_blocks, *dv_blocks]


# ---- eager: autograd.Function ------------------------------------------------------------------

class _Eagle3Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, seq_lengths, scale, deterministic, backend, num_blocks, *blocks):
        k_blocks, v_blocks = list(blocks[:num_blocks]), list(blocks[num_blocks:])
        out, lse = _forward(q, k_blocks, v_blocks, seq_lengths, scale, backend)
        ctx.save_for_backward(q, out, lse, seq_lengths, *blocks)
        ctx.num_blocks, ctx.scale, ctx.deterministic, ctx.backend = num_blocks, scale, deterministic, backend
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    @once_differentiable  # the native backward is not differentiable: a second order raises
    def backward(ctx, dout, dlse):
        q, out, lse, seq_lengths, *blocks = ctx.saved_tensors
        n = ctx.num_blocks
        if dout is None:  # only lse reached the loss
            dout = torch.zeros_like(out)
        grads = _backward(dout, dlse, q, blocks[:n], blocks[n:], seq_lengths, out, lse, ctx.scale, ctx.deterministic,
                          ctx.backend)
        return (grads[0], None, None, None, None, None, *grads[1:])


def eagle3_attention(q: Tensor, k_blocks: List[Tensor], v_blocks: List[Tensor], seq_lengths: Optional[Tensor],
                     scale: float, deterministic: bool, backend: int) -> Tuple[Tensor, Tensor]:
    """(out, lse) of checked arguments, differentiable in q and every block (and through lse)."""
    if torch.compiler.is_compiling():
        return eagle3_forward(q, k_blocks, v_blocks, seq_lengths, scale, deterministic, backend)
    # Inside a forward-AD dual level the Function runs (it raises for dual inputs: no jvp).
    if not torch.is_grad_enabled() and _forward_ad._current_level < 0:
        return _forward(q, k_blocks, v_blocks, seq_lengths, scale, backend)
    return _Eagle3Attention.apply(q, seq_lengths, scale, deterministic, backend, len(k_blocks), *k_blocks, *v_blocks)


# ---- compiled: torch.library custom ops ----------------------------------------------------------

@torch.library.custom_op("flashflex::eagle3_fwd", mutates_args=())
def eagle3_forward(q: Tensor, k_blocks: List[Tensor], v_blocks: List[Tensor], seq_lengths: Optional[Tensor],
                   scale: float, deterministic: bool, backend: int) -> Tuple[Tensor, Tensor]:
    return _forward(q, k_blocks, v_blocks, seq_lengths, scale, backend)


@eagle3_forward.register_fake
def _(q, k_blocks, v_blocks, seq_lengths, scale, deterministic, backend):
    return _empty_out(q), _empty_lse(q)


@torch.library.custom_op("flashflex::eagle3_bwd", mutates_args=())
def eagle3_backward(dout: Tensor, dlse: Optional[Tensor], q: Tensor, k_blocks: List[Tensor],
                    v_blocks: List[Tensor], seq_lengths: Optional[Tensor], out: Tensor, lse: Tensor,
                    scale: float, deterministic: bool, backend: int) -> List[Tensor]:
    return _backward(dout, dlse, q, k_blocks, v_blocks, seq_lengths, out, lse, scale, deterministic, backend)


@eagle3_backward.register_fake
def _(dout, dlse, q, k_blocks, v_blocks, seq_lengths, out, lse, scale, deterministic, backend):
    return [torch.empty_like(q), *(torch.empty_like(k) for k in k_blocks), *(torch.empty_like(v) for v in v_blocks)]


def _setup_context(ctx, inputs, output):
    q, k_blocks, v_blocks, seq_lengths, scale, deterministic, backend = inputs
    out, lse = output
    ctx.num_blocks = len(k_blocks)
    ctx.has_seq_lengths = seq_lengths is not None
    lengths = [seq_lengths] if seq_lengths is not None else []
    ctx.save_for_backward(q, out, lse, *k_blocks, *v_blocks, *lengths)
    ctx.scale, ctx.deterministic, ctx.backend = scale, deterministic, backend
    ctx.set_materialize_grads(False)


def _custom_op_backward(ctx, dout, dlse):
    q, out, lse, *rest = ctx.saved_tensors
    n = ctx.num_blocks
    k_blocks, v_blocks = list(rest[:n]), list(rest[n:2 * n])
    seq_lengths = rest[2 * n] if ctx.has_seq_lengths else None
    if dout is None:  # only lse reached the loss
        dout = torch.zeros_like(out)
    grads = eagle3_backward(dout, dlse, q, k_blocks, v_blocks, seq_lengths, out, lse, ctx.scale, ctx.deterministic,
                            ctx.backend)
    # autograd expects the inputs' structure: a list of gradients in each list's position.
    return grads[0], list(grads[1:1 + n]), list(grads[1 + n:]), None, None, None, None


eagle3_forward.register_autograd(_custom_op_backward, setup_context=_setup_context)
