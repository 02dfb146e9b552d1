"""The EAGLE3 test-time-training attention the tests of test_eagle3.py trust, written two
independent ways in plain torch (never flashflex), both in float64:

(a) the customers' formulation: generate_eagle3_mask as TorchSpec / SpecForge write it, an
    or_masks of a causal part with its padding clause and a suffix part selecting
    kv_idx % T == q_idx for kv_idx >= T, on their lengths `seq_lengths - lck` (lck = the TTT
    step k), run by torch's own flex_attention (eager) over the blocks concatenated here;
(b) the SDPA formulation: causal logits scale * q K_0^T over block 0, the k diagonal logits
    scale * q_i . K_j[i] concatenated to them, one softmax, out = P_causal V_0 + sum_j P_j V_j[i].
    Differentiable: its float64 autograd gives the reference gradients (torch's flex attention has
    no CPU backward).

Rows with i >= L_b - k see nothing: out 0, lse -inf (and zero gradients through (b)).
"""

from __future__ import annotations

import math
import warnings
from typing import List, Optional, Tuple

import torch
from torch.nn.attention.flex_attention import AuxRequest, create_block_mask, or_masks
from torch.nn.attention.flex_attention import flex_attention as torch_flex_attention


def generate_eagle3_mask(seq_lengths: torch.Tensor, q_len: int, kv_len: int):
    """The customers' mask_mod over [K_0 | K_1 | ... | K_k] (kv_len = (k + 1) * q_len);
    seq_lengths are their per-sample lengths already reduced by the step."""
    def causal_mask(b, h, q_idx, kv_idx):
        causal = q_idx >= kv_idx
        padding = (kv_idx < seq_lengths[b]) & (q_idx < seq_lengths[b])
        return causal & padding

    def suffix_mask(b, h, q_idx, kv_idx):
        suffix = kv_idx >= q_len
        padding = kv_idx % q_len < seq_lengths[b]
        diagonal = (kv_idx - q_idx) % q_len == 0
        return suffix & padding & diagonal

    mask_mod = or_masks(causal_mask, suffix_mask)
    mask_mod.__name__ = f"eagle3_mask_Q_{q_len}_KV_{kv_len}"
    return mask_mod


def lengths_or_full(seq_lengths: Optional[torch.Tensor], batch: int, seq_len: int) -> torch.Tensor:
    """int64 [B] on the CPU: seq_lengths, or seq_len for every sample."""
    if seq_lengths is None:
        return torch.full((batch,), seq_len, dtype=torch.int64)
    return torch.as_tensor(seq_lengths).to(torch.int64).cpu()


def flex_reference(q: torch.Tensor, k_blocks: List[torch.Tensor], v_blocks: List[torch.Tensor],
                   seq_lengths: Optional[torch.Tensor] = None, scale: Optional[float] = None
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(a): torch's eager flex_attention with the customers' mask on float64 copies; (out, lse)."""
    batch, hq, seq_len, _ = q.shape
    step = len(k_blocks) - 1
    kv_len = seq_len * (step + 1)
    lengths = lengths_or_full(seq_lengths, batch, seq_len) - step
    block_mask = create_block_mask(generate_eagle3_mask(lengths, seq_len, kv_len), batch, None, seq_len, kv_len,
                                   device="cpu")
    q64 = q.detach().to(torch.float64)
    k64 = torch.cat([k.detach().to(torch.float64) for k in k_blocks], dim=2)  # [B, Hkv, (k + 1) T, D]
    v64 = torch.cat([v.detach().to(torch.float64) for v in v_blocks], dim=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()"
        out, aux = torch_flex_attention(q64, k64, v64, block_mask=block_mask, scale=scale,
                                        enable_gqa=hq != k64.shape[1], return_aux=AuxRequest(lse=True))
    return out, aux.lse


def valid_rows(seq_lengths: Optional[torch.Tensor], batch: int, seq_len: int, step: int) -> torch.Tensor:
    """bool [B, T]: row i of sample b is valid iff i < L_b - step."""
    lengths = lengths_or_full(seq_lengths, batch, seq_len)
    return torch.arange(seq_len)[None, :] < (lengths - step)[:, None]


def sdpa_reference(q: torch.Tensor, k_blocks: List[torch.Tensor], v_blocks: List[torch.Tensor],
                   seq_lengths: Optional[torch.Tensor] = None, scale: Optional[float] = None
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(b): (out [B, Hq, T, D], lse [B, Hq, T]) in float64, differentiable in q and every block
    (pass float64 leaves). Query head h reads key/value head h // (Hq // Hkv)."""
    assert q.dtype == torch.float64 and all(t.dtype == torch.float64 for t in [*k_blocks, *v_blocks])
    batch, hq, seq_len, head_dim = q.shape
    group = hq // k_blocks[0].shape[1]
    step = len(k_blocks) - 1
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale

    def per_query_head(t):
        return t.repeat_interleave(group, dim=1)

    causal = torch.ones(seq_len, seq_len, dtype=torch.bool).tril()
    logits = scale * (q @ per_query_head(k_blocks[0]).transpose(-1, -2))  # [B, Hq, T, T]
    logits = logits.masked_fill(~causal, float("-inf"))
    diagonal = [scale * (q * per_query_head(k)).sum(-1, keepdim=True) for k in k_blocks[1:]]  # [B, Hq, T, 1]
    logits = torch.cat([logits, *diagonal], dim=-1)  # [B, Hq, T, T + step]

    valid = valid_rows(seq_lengths, batch, seq_len, step)[:, None, :, None]  # [B, 1, T, 1]
    # Invalid rows get finite dummy logits (no -inf - -inf = NaN in autograd); their out and lse
    # are replaced below, which also zeroes their gradients.
    logits = torch.where(valid, logits, torch.zeros_like(logits))
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    p = torch.exp(logits - lse)
    out = p[..., :seq_len] @ per_query_head(v_blocks[0])
    for j in range(1, step + 1):
        out = out + p[..., seq_len + j - 1:seq_len + j] * per_query_head(v_blocks[j])
    out = torch.where(valid, out, torch.zeros_like(out))
    lse = torch.where(valid, lse, torch.full_like(lse, float("-inf")))
    return out, lse.squeeze(-1)
