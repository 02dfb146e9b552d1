"""The CPU path of a score_mod graph no built-in mod expresses: dense attention in float64 with the
graph evaluated over every (b, h, q_idx, kv_idx) (_score_mod_graph.evaluate), differentiable in
query, key, value and the captured tensors (plain torch autograd). Numerics follow torch flex and
the kernels: the mod sees scale * q.k before masking; a row with no visible score (masked, or -inf
after the mod) gives out 0, lse -inf and zero gradients."""

from __future__ import annotations

import torch

from ._score_mod_graph import ScoreModGraph, evaluate

__all__ = ["graph_attention", "graph_attention_outside_trace"]


def _grids(batch: int, heads: int, q_len: int, kv_len: int, device):
    return [torch.arange(n, dtype=torch.int32, device=device).view([n if i == d else 1 for i in range(4)])
            for d, n in enumerate((batch, heads, q_len, kv_len))]


def graph_attention(graph: ScoreModGraph, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, block_mask,
                    scale: float):
    """(out in query's dtype [B, Hq, Q, D], lse float32 [B, Hq, Q]); key / value heads are shared
    by Hq // Hkv query heads (GQA), as in the kernels."""
    batch, heads, q_len, _ = query.shape
    kv_len, group = key.shape[2], heads // key.shape[1]
    q = query.to(torch.float64)
    k = key.to(torch.float64).repeat_interleave(group, dim=1)
    v = value.to(torch.float64).repeat_interleave(group, dim=1)
    shape = (batch, heads, q_len, kv_len)
    scores = evaluate(graph, scale * (q @ k.transpose(-1, -2)), *_grids(*shape, query.device)).expand(shape)

    visible = torch.ones(shape, dtype=torch.bool, device=query.device)
    if block_mask is not None:
        visible = block_mask.to_dense_elements().to(query.device).expand(shape)
    visible = visible & (scores.detach() != float("-inf"))
    sees_any = visible.any(dim=-1, keepdim=True)
    scores = scores.masked_fill(~visible, float("-inf"))
    # Rows that see nothing get finite dummy scores, overwritten below: no NaN reaches autograd.
    scores = torch.where(sees_any, scores, torch.zeros_like(scores))
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    out = torch.exp(scores - lse) @ v
    out = torch.where(sees_any, out, torch.zeros_like(out))
    lse = torch.where(sees_any, lse, torch.full_like(lse, float("-inf"))).squeeze(-1)
    return out.to(query.dtype), lse.to(torch.float32)


# Under torch.compile the graph is evaluated eagerly (a graph break): dynamo does not trace fx
# interpreters.
graph_attention_outside_trace = torch._dynamo.disable(graph_attention)
