"""The float64 dense attention the tests trust, in plain torch ops (never flashflex):

    scores = scale * q @ k^T                     [B, Hq, Q_LEN, KV_LEN]
    scores = score_mod(scores, b, h, q_idx, kv_idx)
    scores = scores.masked_fill(~mask, -inf)     mask evaluated by the mask_mod over the full grid
    lse    = logsumexp(scores, -1)               -inf where a row sees nothing
    out    = softmax(scores) @ v                 0 where a row sees nothing

Its autograd gives the reference gradients (torch's flex attention has no CPU backward); its
forward is itself checked against torch's flex_attention in test_dense_reference.py, and its
gradients against finite differences (gradcheck). Grouped-query attention: query head h reads
key/value head h // (Hq // Hkv), as torch's enable_gqa does.

Score mods here are torch flex score_mods, (score, b, h, q_idx, kv_idx) -> score, called once on
broadcast index tensors b [B,1,1,1], h [1,H,1,1], q_idx [1,1,Lq,1], kv_idx [1,1,1,Lkv]; mask_mods
likewise. Reference versions of the built-in score mods are below.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch

ScoreMod = Callable[..., torch.Tensor]


def index_grid(batch: int, heads: int, q_len: int, kv_len: int, device="cpu"):
    """Broadcastable (b, h, q_idx, kv_idx) int64 index tensors over [B, H, Q_LEN, KV_LEN]."""
    def ar(n, dim):
        shape = [1, 1, 1, 1]
        shape[dim] = n
        return torch.arange(n, device=device).view(shape)
    return ar(batch, 0), ar(heads, 1), ar(q_len, 2), ar(kv_len, 3)


def dense_mask(mask_mod: Optional[Callable], batch: int, heads: int, q_len: int, kv_len: int,
               device="cpu") -> torch.Tensor:
    """The mask_mod evaluated on every (b, h, q, kv): bool [B, H, Q_LEN, KV_LEN]."""
    if mask_mod is None:
        return torch.ones(batch, heads, q_len, kv_len, dtype=torch.bool, device=device)
    keep = mask_mod(*index_grid(batch, heads, q_len, kv_len, device))
    return torch.as_tensor(keep, device=device).to(torch.bool).expand(batch, heads, q_len, kv_len)


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None,
                    score_mod: Optional[ScoreMod] = None, scale: Optional[float] = None
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(out [B, Hq, Lq, D], lse [B, Hq, Lq]) in float64; differentiable in q, k, v and whatever
    the score_mod captures. mask: bool, broadcastable to [B, Hq, Lq, Lkv], or None."""
    assert q.dtype == k.dtype == v.dtype == torch.float64, "the reference runs in float64"
    batch, hq, q_len, head_dim = q.shape
    hkv, kv_len = k.shape[1], k.shape[2]
    assert hq % hkv == 0
    group = hq // hkv
    k = k.repeat_interleave(group, dim=1)  # [B, Hq, Lkv, D]
    v = v.repeat_interleave(group, dim=1)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale

    scores = scale * (q @ k.transpose(-1, -2))  # [B, Hq, Lq, Lkv]
    if score_mod is not None:
        scores = score_mod(scores, *index_grid(batch, hq, q_len, kv_len, q.device))
        scores = scores.expand(batch, hq, q_len, kv_len)
    if mask is None:
        mask = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=q.device)
    mask = mask.expand(batch, hq, q_len, kv_len)
    sees_any = mask.any(dim=-1, keepdim=True)  # [B, Hq, Lq, 1]

    scores = scores.masked_fill(~mask, float("-inf"))
    # A row that sees nothing gets finite dummy scores (so no -inf - -inf = NaN reaches autograd);
    # its out and lse are overwritten below, which also zeroes its gradients.
    scores = torch.where(sees_any, scores, torch.zeros_like(scores))
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    out = torch.exp(scores - lse) @ v
    out = torch.where(sees_any, out, torch.zeros_like(out))
    lse = torch.where(sees_any, lse, torch.full_like(lse, float("-inf")))
    return out, lse.squeeze(-1)


# ---- reference score mods (the formulas of the API description) ---------------------------------

def softcap_mod(cap: float) -> ScoreMod:
    def score_mod(score, b, h, q_idx, kv_idx):
        return cap * torch.tanh(score / cap)
    return score_mod


def alibi_mod(slopes: torch.Tensor) -> ScoreMod:
    """slopes [Hq]; s + slopes[h] * (kv_idx - q_idx)."""
    def score_mod(score, b, h, q_idx, kv_idx):
        return score + slopes[h] * (kv_idx - q_idx)
    return score_mod


def bias_mod(bias: torch.Tensor) -> ScoreMod:
    """bias [B or 1, Hq or 1, Lq, Lkv]; s + bias[b, h, q_idx, kv_idx] (size-1 dims broadcast)."""
    def score_mod(score, b, h, q_idx, kv_idx):
        return score + bias[b % bias.shape[0], h % bias.shape[1], q_idx, kv_idx]
    return score_mod
