"""torch.library custom ops flashflex::eagle3_fwd / flashflex::eagle3_bwd over the native EAGLE3
entry points (python/src/bind_eagle3.cpp), with fake implementations (torch.compile traces them
without running them) and registered autograd to q and to every key/value block. The blocks
travel as List[Tensor], never concatenated; the backward returns one flat list
[dq, dk_0..dk_k, dv_0..dv_k]. Arguments are checked by flashflex.eagle3 before they get here."""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import _C
from ._tensor_ref import stream_of, tensor_ref, unit_inner_stride


def _empty_out(q: Tensor) -> Tensor:
    # Same layout as q: a [B, T, H, D] view in gives a [B, T, H, D] view out.
    return torch.empty_like(q, memory_format=torch.preserve_format)


def _empty_lse(q: Tensor) -> Tensor:
    return q.new_empty(q.shape[:-1], dtype=torch.float32)


def _workspace(num_bytes: int, device: torch.device) -> Optional[Tensor]:
    # torch's caching allocator makes this free after the first call of a size.
    return torch.empty(num_bytes, dtype=torch.uint8, device=device) if num_bytes else None


@torch.library.custom_op("flashflex::eagle3_fwd", mutates_args=())
def eagle3_forward(q: Tensor, k_blocks: List[Tensor], v_blocks: List[Tensor], seq_lengths: Optional[Tensor],
                   scale: float, deterministic: bool, backend: int) -> Tuple[Tensor, Tensor]:
    out, lse = _empty_out(q), _empty_lse(q)
    args = (tensor_ref(q), [tensor_ref(k) for k in k_blocks], [tensor_ref(v) for v in v_blocks],
            tensor_ref(seq_lengths), tensor_ref(out), tensor_ref(lse), scale)
    # CUDA: the causal BlockMask of block 0 is built on the device into this scratch, every call.
    workspace_bytes = _C.eagle3_forward_workspace_size(*args)
    workspace = _workspace(workspace_bytes, q.device)
    _C.eagle3_forward(*args, backend, workspace.data_ptr() if workspace is not None else 0, workspace_bytes,
                      stream_of(q))
    return out, lse


@eagle3_forward.register_fake
def _(q, k_blocks, v_blocks, seq_lengths, scale, deterministic, backend):
    return _empty_out(q), _empty_lse(q)


@torch.library.custom_op("flashflex::eagle3_bwd", mutates_args=())
def eagle3_backward(dout: Tensor, dlse: Optional[Tensor], q: Tensor, k_blocks: List[Tensor],
                    v_blocks: List[Tensor], seq_lengths: Optional[Tensor], out: Tensor, lse: Tensor,
                    scale: float, deterministic: bool, backend: int) -> List[Tensor]:
    dq = torch.empty_like(q)
    dk_blocks = [torch.empty_like(k) for k in k_blocks]
    dv_blocks = [torch.empty_like(v) for v in v_blocks]
    # Named, so that a copy made for the layout outlives the native call reading its pointer.
    dout = unit_inner_stride(dout)
    dlse = None if dlse is None else unit_inner_stride(dlse)
    args = (tensor_ref(q), [tensor_ref(k) for k in k_blocks], [tensor_ref(v) for v in v_blocks],
            tensor_ref(seq_lengths), tensor_ref(out), tensor_ref(dout), tensor_ref(lse), tensor_ref(dlse),
            tensor_ref(dq), [tensor_ref(t) for t in dk_blocks], [tensor_ref(t) for t in dv_blocks], scale,
            deterministic)
    workspace_bytes = _C.eagle3_backward_workspace_size(*args)
    workspace = _workspace(workspace_bytes, q.device)
    _C.eagle3_backward(*args, backend, workspace.data_ptr() if workspace is not None else 0, workspace_bytes,
                       stream_of(q))
    return [dq, *dk_blocks, *dv_blocks]


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


def _backward(ctx, dout, dlse):
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


eagle3_forward.register_autograd(_backward, setup_context=_setup_context)
