"""flashflex.eagle3_module: the attention of a Llama-style EAGLE3 draft decoder layer on
flashflex's TTT attention.

`Eagle3Attention` mirrors `LlamaFlexAttention` of the SpecForge / TorchSpec eagle3 draft models
(specforge/modeling/draft/llama3_eagle.py, torchspec/models/draft/llama3_eagle.py) and is meant as a
drop-in replacement for it: same projections (q/k/v from the 2 * hidden_size concatenation of the
normed input embedding and the normed hidden states, o_proj back to hidden_size, no biases), same
rotary embedding (Llama's rotate_half form, positions `position_ids + step`), same per-sample
lengths. What changes is the attention: instead of concatenating the TTT steps' keys / values
into one cache and running flex_attention with generate_eagle3_mask, this step's rotated K and V
are appended to per-step lists that the caller keeps across the unroll, and
flashflex.eagle3.ttt_attention reads the lists as they are (nothing is concatenated, so no step's
copy of the cache is kept alive for autograd).

    cache_keys, cache_values = [], []
    for step in range(ttt_length):
        out = attn(torch.cat([embeds, hidden], -1), cache_keys, cache_values, position_ids, seq_lengths)
        ...  # len(cache_keys) == step + 1 now
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
from torch import nn

from .eagle3 import ttt_attention

__all__ = ["Eagle3Attention", "rotate_half", "apply_rotary_pos_emb"]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Llama's rotate_half: [x1, x2] -> [-x2, x1] over the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """q [B, Hq, T, D], k [B, Hkv, T, D], cos / sin [B, T, D] (already gathered at the positions)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


class Eagle3Attention(nn.Module):
    """EAGLE3 draft attention (mirrors SpecForge / TorchSpec `LlamaFlexAttention`; drop-in
    replacement) whose TTT attention is flashflex.eagle3.ttt_attention.

    forward(hidden_states [B, T, 2 * hidden_size], cache_keys: list, cache_values: list,
    position_ids [B, T] (or [1, T]; None: 0..T-1), seq_lengths (None, int tensor [B] or list of
    ints: each sample's valid length, NOT reduced by the step)) -> [B, T, hidden_size].
    The TTT step is len(cache_keys) before the call; RoPE uses positions position_ids + step, as
    upstream. This step's rotated K and V ([B, Hkv, T, D]) are appended to the lists in place.
    """

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 rope_theta: float = 10000.0, max_position_embeddings: int = 2048):
        super().__init__()
        if num_heads % num_kv_heads != 0:
            raise ValueError(f"num_kv_heads: expected a divisor of num_heads={num_heads}, got {num_kv_heads}")
        if head_dim % 2 != 0:
            raise ValueError(f"head_dim: expected an even size (rotary embedding), got {head_dim}")
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.rope_theta = rope_theta
        self.max_position_embeddings = max_position_embeddings
        self.q_proj = nn.Linear(2 * hidden_size, num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(2 * hidden_size, num_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(2 * hidden_size, num_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=False)
        inv_freq = 1.0 / (rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def rotary(self, positions: torch.Tensor, dtype: torch.dtype):
        """(cos, sin) [B, T, D] in `dtype` at integer `positions` [B, T] (computed in float32)."""
        freqs = positions.to(torch.float32)[..., None] * self.inv_freq.to(positions.device, torch.float32)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def attend(self, q: torch.Tensor, cache_keys: List[torch.Tensor], cache_values: List[torch.Tensor],
               seq_lengths) -> torch.Tensor:
        """The TTT attention over the per-step lists: [B, Hq, T, D]. (A reference subclass may
        override this with the concatenated-K/V torch formulation.)"""
        return ttt_attention(q, cache_keys, cache_values, seq_lengths=seq_lengths)

    def forward(self, hidden_states: torch.Tensor, cache_keys: List[torch.Tensor], cache_values: List[torch.Tensor],
                position_ids: Optional[torch.Tensor] = None,
                seq_lengths: Optional[Union[torch.Tensor, Sequence[int]]] = None) -> torch.Tensor:
        self._check_inputs(hidden_states, cache_keys, cache_values)
        bsz, q_len, _ = hidden_states.shape
        step = len(cache_keys)
        if position_ids is None:
            position_ids = torch.arange(q_len, device=hidden_states.device)[None, :]
        elif (not isinstance(position_ids, torch.Tensor) or position_ids.dim() != 2
              or position_ids.shape[1] != q_len or position_ids.shape[0] not in (1, bsz)):
            got = tuple(position_ids.shape) if isinstance(position_ids, torch.Tensor) else type(position_ids).__name__
            raise ValueError(f"position_ids: expected a tensor [{bsz}, {q_len}] (or [1, {q_len}]), got {got}")
        positions = (position_ids + step).expand(bsz, q_len)

        q = self.q_proj(hidden_states).view(bsz, q_len, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden_states).view(bsz, q_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(bsz, q_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = self.rotary(positions, q.dtype)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        out = self.attend(q, [*cache_keys, k], [*cache_values, v], seq_lengths)  # [B, Hq, T, D]
        cache_keys.append(k)  # only once the attention accepted this step's inputs
        cache_values.append(v)
        out = out.transpose(1, 2).reshape(bsz, q_len, self.num_heads * self.head_dim)
        return self.o_proj(out)

    def _check_inputs(self, hidden_states, cache_keys, cache_values) -> None:
        if not isinstance(hidden_states, torch.Tensor) or hidden_states.dim() != 3:
            got = tuple(hidden_states.shape) if isinstance(hidden_states, torch.Tensor) else type(hidden_states).__name__
            raise ValueError(f"hidden_states: expected a tensor [B, T, {2 * self.hidden_size}], got {got}")
        if hidden_states.shape[-1] != 2 * self.hidden_size:
            raise ValueError(f"hidden_states: expected last dimension 2 * hidden_size = {2 * self.hidden_size} "
                             f"(embedding and hidden states concatenated), got {hidden_states.shape[-1]}")
        for name, cache in (("cache_keys", cache_keys), ("cache_values", cache_values)):
            if not isinstance(cache, list):
                raise ValueError(f"{name}: expected a list (kept by the caller across the TTT unroll; this step's "
                                 f"tensor is appended to it), got {type(cache).__name__}")
        if len(cache_keys) != len(cache_values):
            raise ValueError(f"cache_values: expected {len(cache_keys)} entries (as cache_keys), got {len(cache_values)}")
        bsz, q_len, _ = hidden_states.shape
        expected = (bsz, self.num_kv_heads, q_len, self.head_dim)
        for name, cache in (("cache_keys", cache_keys), ("cache_values", cache_values)):
            for j, t in enumerate(cache):
                if not isinstance(t, torch.Tensor) or tuple(t.shape) != expected:
                    got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                    raise ValueError(f"{name}[{j}]: expected shape {expected} (an earlier step of this unroll), "
                                     f"got {got}")
