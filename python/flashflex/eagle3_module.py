"""flashflex.eagle3_module: the attention of a Llama-style EAGLE3 draft decoder layer on
flashflex's TTT attention, swappable for the draft attention class of the SpecForge / TorchSpec
trainers (specforge/modeling/draft/llama3_eagle.py, torchspec/models/draft/llama3_eagle.py).

Same constructor (a Llama config: hidden_size, num_attention_heads, num_key_value_heads,
head_dim, max_position_embeddings, rope_theta, rope_scaling), same projections (q/k/v from the
2 * hidden_size concatenation of the normed input embedding and hidden states, o_proj back to
hidden_size, no biases), same RoPE (rotate_half form, positions position_ids + TTT step, scaling
linear / dynamic / llama3 / yarn: flashflex/rope.py, tables in float32 whatever the module's
dtype), same per-sample lengths (attention_mask [B, T] of 1s then 0s). What changes is the
attention: the steps' K / V stay a list, never concatenated, and flashflex.eagle3.ttt_attention
reads them as they are. The caller's lists are never modified. Two cache conventions:

    # SpecForge: cache_hidden = [keys, values]; on return both are new lists with this step added
    cache_hidden = [[], []]
    for step in range(ttt_length):
        out = attn(hidden_states, cache_hidden, attention_mask, position_ids)
    # TorchSpec: functional (checkpoint-safe); the step is len(cache_keys)
    cache_keys = cache_values = None
    for step in range(ttt_length):
        out, cache_keys, cache_values = attn(hidden_states, attention_mask=attention_mask,
                                             position_ids=position_ids, cache_keys=cache_keys,
                                             cache_values=cache_values, use_cache=True)

With cache_hidden under torch.utils.checkpoint pass ttt_step=step: the call then reads only the
first ttt_step entries, so its recomputation sees the inputs of its first run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import torch
from torch import nn

from .eagle3 import ttt_attention
from .rope import RotaryEmbedding, apply_rotary_pos_emb, rotate_half

__all__ = ["Eagle3Attention", "Eagle3Config", "rotate_half", "apply_rotary_pos_emb"]

_UNSET = object()


@dataclass
class Eagle3Config:
    """The fields of a transformers LlamaConfig that Eagle3Attention reads (any object with
    these attributes works, a LlamaConfig included). head_dim None: hidden_size / heads."""
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: Optional[int] = None
    head_dim: Optional[int] = None
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rope_scaling: Optional[dict] = None


class Eagle3Attention(nn.Module):
    """EAGLE3 draft attention over flashflex.eagle3.ttt_attention (module docstring: the call
    conventions). forward(hidden_states [B, T, 2 * hidden_size], cache_hidden=None,
    attention_mask=None ([B, T], 1 on valid tokens: lengths attention_mask.sum(-1), NOT reduced
    by the step), position_ids=None ([B, T] or [1, T]; None: 0..T-1), past_key_values (must be
    None), output_attentions / use_cache (accepted, unused), *, ttt_step,
    seq_lengths (instead of attention_mask: int tensor [B] or list), cache_keys, cache_values)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.hidden_size = int(config.hidden_size)
        self.num_heads = int(config.num_attention_heads)
        self.num_kv_heads = int(getattr(config, "num_key_value_heads", None) or self.num_heads)
        self.head_dim = int(getattr(config, "head_dim", None) or self.hidden_size // self.num_heads)
        if self.num_heads % self.num_kv_heads != 0:
            raise ValueError(f"num_key_value_heads: expected a divisor of num_attention_heads={self.num_heads}, "
                             f"got {self.num_kv_heads}")
        self.rotary_emb = RotaryEmbedding(self.head_dim, config)
        self.q_proj = nn.Linear(2 * self.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(2 * self.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(2 * self.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, self.hidden_size, bias=False)

    def rotary(self, positions: torch.Tensor, seq_len: Optional[int] = None):
        """(cos, sin) float32 [B, T, D] at integer `positions` [B, T]."""
        return self.rotary_emb(positions, positions.shape[-1] if seq_len is None else seq_len)

    def attend(self, q: torch.Tensor, cache_keys: List[torch.Tensor], cache_values: List[torch.Tensor],
               seq_lengths) -> torch.Tensor:
        """The TTT attention over the per-step lists: [B, Hq, T, D]. (A reference subclass may
        override this with the concatenated-K/V torch formulation.)"""
        return ttt_attention(q, cache_keys, cache_values, seq_lengths=seq_lengths)

    def forward(self, hidden_states: torch.Tensor, cache_hidden: Optional[list] = None,
                attention_mask: Optional[torch.Tensor] = None, position_ids: Optional[torch.Tensor] = None,
                past_key_values=None, output_attentions: bool = False, use_cache: bool = False, *,
                ttt_step: Optional[int] = None, seq_lengths: Optional[Union[torch.Tensor, Sequence[int]]] = None,
                cache_keys=_UNSET, cache_values=_UNSET):
        functional = cache_keys is not _UNSET or cache_values is not _UNSET
        if past_key_values is not None:  # never silently ignore a cache the caller relies on
            raise ValueError(f"past_key_values: expected None (the TTT steps live in cache_hidden = [keys, values] "
                             f"lists, as SpecForge's sdpa backend passes them, or in cache_keys / cache_values), got "
                             f"{type(past_key_values).__name__}")
        if functional and cache_hidden is not None:
            raise ValueError("cache_hidden: expected either cache_hidden or cache_keys / cache_values, got both")
        self._check_hidden(hidden_states)
        if functional:
            keys = self._cache_list("cache_keys", None if cache_keys is _UNSET else cache_keys)
            values = self._cache_list("cache_values", None if cache_values is _UNSET else cache_values)
        elif cache_hidden is not None:
            if not isinstance(cache_hidden, list) or len(cache_hidden) != 2:
                raise ValueError(f"cache_hidden: expected a list [keys, values] of two lists, got "
                                 f"{type(cache_hidden).__name__}" + (f" of {len(cache_hidden)} entries"
                                                                       if isinstance(cache_hidden, list) else ""))
            keys = self._cache_list("cache_hidden[0]", cache_hidden[0])
            values = self._cache_list("cache_hidden[1]", cache_hidden[1])
        else:
            keys, values = [], []
        step = self._step(ttt_step, keys, values)
        past_keys, past_values = keys[:step], values[:step]
        self._check_cache(hidden_states, past_keys, past_values)
        lengths = self._lengths(hidden_states, attention_mask, seq_lengths)

        bsz, q_len, _ = hidden_states.shape
        positions = (self._position_ids(position_ids, bsz, q_len, hidden_states.device) + step).expand(bsz, q_len)
        q = self.q_proj(hidden_states).view(bsz, q_len, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden_states).view(bsz, q_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(bsz, q_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = self.rotary(positions, q_len + step)  # upstream's seq_len: q_len + step (dynamic NTK)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        out = self.attend(q, past_keys + [k], past_values + [v], lengths)  # [B, Hq, T, D]
        out = self.o_proj(out.transpose(1, 2).reshape(bsz, q_len, self.num_heads * self.head_dim))
        if functional:
            return out, past_keys + [k], past_values + [v]
        if cache_hidden is not None:
            # New lists (the caller's are not modified); a recomputation (ttt_step given, later
            # steps already listed) replaces only its own entry.
            cache_hidden[0] = past_keys + [k] + keys[step + 1:]
            cache_hidden[1] = past_values + [v] + values[step + 1:]
        return out

    # ---- argument checks ---------------------------------------------------------------------

    def _check_hidden(self, hidden_states) -> None:
        if not isinstance(hidden_states, torch.Tensor) or hidden_states.dim() != 3:
            got = tuple(hidden_states.shape) if isinstance(hidden_states, torch.Tensor) else type(hidden_states).__name__
            raise ValueError(f"hidden_states: expected a tensor [B, T, {2 * self.hidden_size}], got {got}")
        if hidden_states.shape[-1] != 2 * self.hidden_size:
            raise ValueError(f"hidden_states: expected last dimension 2 * hidden_size = {2 * self.hidden_size} "
                             f"(embedding and hidden states concatenated), got {hidden_states.shape[-1]}")

    @staticmethod
    def _cache_list(name: str, cache) -> list:
        if cache is None:
            return []
        if isinstance(cache, torch.Tensor):
            raise ValueError(f"{name}: expected a list of the earlier steps' tensors [B, Hkv, T, D] (flashflex keeps "
                             f"the steps apart, never concatenated), got a tensor of shape {tuple(cache.shape)}")
        if not isinstance(cache, (list, tuple)):
            raise ValueError(f"{name}: expected a list of the earlier steps' tensors, got {type(cache).__name__}")
        return list(cache)

    @staticmethod
    def _step(ttt_step, keys: list, values: list) -> int:
        if len(keys) != len(values):
            raise ValueError(f"cache values: expected {len(keys)} entries (as the keys), got {len(values)}")
        if ttt_step is None:
            return len(keys)
        if isinstance(ttt_step, bool) or not isinstance(ttt_step, int) or not 0 <= ttt_step <= len(keys):
            raise ValueError(f"ttt_step: expected an int in [0, {len(keys)}] (the cache holds {len(keys)} steps), "
                             f"got {ttt_step!r}")
        return ttt_step

    def _check_cache(self, hidden_states, keys: list, values: list) -> None:
        bsz, q_len, _ = hidden_states.shape
        expected = (bsz, self.num_kv_heads, q_len, self.head_dim)
        for name, cache in (("cache keys", keys), ("cache values", values)):
            for j, t in enumerate(cache):
                if not isinstance(t, torch.Tensor) or tuple(t.shape) != expected:
                    got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                    raise ValueError(f"{name}[{j}]: expected shape {expected} (an earlier step of this unroll), "
                                     f"got {got}")

    @staticmethod
    def _lengths(hidden_states, attention_mask, seq_lengths):
        if attention_mask is None:
            return seq_lengths
        if seq_lengths is not None:
            raise ValueError("seq_lengths: expected either attention_mask or seq_lengths, got both")
        bsz, q_len, _ = hidden_states.shape
        if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != (bsz, q_len):
            got = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
            raise ValueError(f"attention_mask: expected the data loader's padding mask [{bsz}, {q_len}] (1 on valid "
                             f"tokens, right padding), got {got}")
        return attention_mask.sum(dim=-1).to(torch.int64)

    @staticmethod
    def _position_ids(position_ids, bsz: int, q_len: int, device) -> torch.Tensor:
        if position_ids is None:
            return torch.arange(q_len, device=device)[None, :]
        if (not isinstance(position_ids, torch.Tensor) or position_ids.dim() != 2
                or position_ids.shape[1] != q_len or position_ids.shape[0] not in (1, bsz)):
            got = tuple(position_ids.shape) if isinstance(position_ids, torch.Tensor) else type(position_ids).__name__
            raise ValueError(f"position_ids: expected a tensor [{bsz}, {q_len}] (or [1, {q_len}]), got {got}")
        return position_ids
