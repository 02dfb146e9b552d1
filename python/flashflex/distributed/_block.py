"""One block of sequence-sharded attention: queries of one global range against keys of another,
returning (out, lse) so that blocks merge through their log-sum-exp (merge_partials).

float32 / float16 / bfloat16 run flashflex.flex_attention (its kernels, CPU or CUDA) with the
block's BlockMask built by flashflex.create_block_mask. float64 runs a dense masked softmax in
torch ops: the CPU reference path, O(Q_LEN x KV_LEN) memory per block, there so that the
distributed composition can be checked to float64 rounding (the kernels take no float64)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .. import masks as _masks
from ..attention import flex_attention
from ..block_mask import create_block_mask

__all__ = ["attend_block", "block_mask_for", "merge_partials", "partial_weight"]


def block_mask_for(mask: Optional[_masks.Mask], q: torch.Tensor, k: torch.Tensor):
    """What attend_block takes as `prepared`: a BlockMask (kernel path), the Mask itself (float64
    path, evaluated densely) or None (every key visible)."""
    if mask is None or q.dtype == torch.float64:
        return mask
    batch = q.shape[0] if mask.batch else None
    return create_block_mask(mask, batch, None, q.shape[2], k.shape[2], device=q.device)


def attend_block(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prepared, scale: float,
                 enable_gqa: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """(out [B, Hq, Lq, D] in q's dtype, lse [B, Hq, Lq]: float32, float64 on the float64 path;
    -inf where a row sees nothing); differentiable in q, k, v and through lse."""
    if q.dtype == torch.float64:
        return _dense_float64(q, k, v, prepared, scale)
    return flex_attention(q, k, v, block_mask=prepared, scale=scale, enable_gqa=enable_gqa, return_lse=True)


def _dense_float64(q, k, v, mask: Optional[_masks.Mask], scale: float):
    batch, hq, q_len, _ = q.shape
    kv_len, group = k.shape[2], hq // k.shape[1]
    k = k.repeat_interleave(group, dim=1)  # query head h reads key head h // group, as the kernels
    v = v.repeat_interleave(group, dim=1)
    scores = scale * (q @ k.transpose(-1, -2))  # [B, Hq, Lq, Lkv]
    shape = (batch, hq, q_len, kv_len)
    if mask is None:
        visible = torch.ones(shape, dtype=torch.bool, device=q.device)
    else:
        grids = [torch.arange(n, device=q.device).view([n if i == d else 1 for i in range(4)])
                 for d, n in enumerate(shape)]
        visible = torch.as_tensor(mask(*grids), device=q.device).to(torch.bool).expand(shape)
    sees_any = visible.any(dim=-1, keepdim=True)
    scores = scores.masked_fill(~visible, float("-inf"))
    # Rows that see nothing get finite dummy scores, overwritten below: no NaN reaches autograd.
    scores = torch.where(sees_any, scores, torch.zeros_like(scores))
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    out = torch.where(sees_any, torch.exp(scores - lse) @ v, torch.zeros((), dtype=q.dtype, device=q.device))
    lse = torch.where(sees_any, lse, torch.full_like(lse, float("-inf")))
    return out, lse.squeeze(-1)


def partial_weight(lse_part: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """exp(lse_part - lse), and 0 where the part sees nothing (lse_part = -inf, so also lse = -inf
    for a row that sees nothing at all, where the plain formula gives NaN)."""
    seen = lse_part != float("-inf")
    return torch.where(seen, torch.exp(torch.where(seen, lse_part - lse, torch.zeros_like(lse))),
                       torch.zeros_like(lse))


def merge_partials(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor):
    """Softmax over the union of two disjoint key sets from each set's (out, lse): lse =
    logaddexp(lse_a, lse_b), out = w_a out_a + w_b out_b with w = exp(lse_part - lse).
    Differentiable; rows that see nothing in either stay out 0, lse -inf, zero gradient."""
    lse = torch.logaddexp(lse_a, lse_b)
    out = partial_weight(lse_a, lse).unsqueeze(-1) * out_a + partial_weight(lse_b, lse).unsqueeze(-1) * out_b
    return out, lse
