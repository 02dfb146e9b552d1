"""Rotary position embedding of Llama-style configs, as Hugging Face Llama configs name it:
`rope_theta` and `rope_scaling` (or transformers v5's `rope_parameters`), with rope_type
default / linear / dynamic / llama3 / yarn. The tables are always computed in float32 from the
config's Python numbers: nothing is stored as a buffer, so casting a model (model.to(bf16)) can
never round the frequencies (at position 8192 a bf16 frequency is off by whole radians)."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

__all__ = ["RotaryEmbedding", "rotate_half", "apply_rotary_pos_emb"]

SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Llama's rotate_half: [x1, x2] -> [-x2, x1] over the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """q [B, Hq, T, D], k [B, Hkv, T, D], cos / sin [B, T, D] (float32, at the positions), cast to
    q's dtype as Llama does."""
    cos, sin = cos.unsqueeze(1).to(q.dtype), sin.unsqueeze(1).to(q.dtype)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


class RotaryEmbedding:
    """The rotary tables of one attention layer: RotaryEmbedding(head_dim, config) reads
    rope_theta / rope_scaling (or rope_parameters) and max_position_embeddings from the config."""

    def __init__(self, head_dim: int, config):
        if head_dim % 2 != 0:
            raise ValueError(f"head_dim: expected an even size (rotary embedding), got {head_dim}")
        self.head_dim = head_dim
        self.max_position_embeddings = int(getattr(config, "max_position_embeddings", 2048) or 2048)
        self.theta, scaling = _rope_config(config)
        self.scaling = dict(scaling) if scaling else {}
        self.rope_type = self.scaling.get("rope_type", self.scaling.get("type", "default")) or "default"
        if self.rope_type not in SUPPORTED_ROPE_TYPES:
            raise ValueError(f"rope_scaling: expected rope_type in {SUPPORTED_ROPE_TYPES}, got {self.rope_type!r}")
        if self.rope_type != "default" and self.rope_type != "llama3" and self.scaling.get("factor") is None:
            raise ValueError(f"rope_scaling: rope_type {self.rope_type!r} needs 'factor', got {self.scaling}")

    def __call__(self, positions: torch.Tensor, seq_len: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) float32 [*positions.shape, head_dim] at integer `positions`; seq_len (the
        longest position in use + 1, upstream's q_len + step) drives dynamic NTK scaling."""
        inv_freq, attention_factor = self.inv_freq(positions.device, seq_len)
        freqs = positions.to(torch.float32)[..., None] * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        if attention_factor != 1.0:
            cos, sin = cos * attention_factor, sin * attention_factor
        return cos, sin

    def inv_freq(self, device, seq_len: int) -> Tuple[torch.Tensor, float]:
        """(inverse frequencies float32 [head_dim / 2], factor applied to cos and sin)."""
        dim = self.head_dim
        exponents = torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim
        s = self.scaling
        kind = self.rope_type
        if kind == "dynamic" and seq_len > self.max_position_embeddings:
            factor = float(s["factor"])
            base = self.theta * ((factor * seq_len / self.max_position_embeddings) - (factor - 1)) ** (dim / (dim - 2))
            return 1.0 / (base ** exponents), 1.0
        inv_freq = 1.0 / (self.theta ** exponents)
        if kind == "linear":
            return inv_freq / float(s["factor"]), 1.0
        if kind == "llama3":
            return _llama3(inv_freq, s, self.max_position_embeddings), 1.0
        if kind == "yarn":
            return _yarn(inv_freq, s, dim, self.theta, self.max_position_embeddings)
        return inv_freq, 1.0


def _rope_config(config) -> Tuple[float, Optional[dict]]:
    """(theta, scaling dict or None) from a v4 config (rope_theta, rope_scaling) or a v5 one
    (rope_parameters holding both)."""
    params = getattr(config, "rope_parameters", None)
    if params:
        params = dict(params)
        return float(params.get("rope_theta", 10000.0)), params
    scaling = getattr(config, "rope_scaling", None)
    if scaling is not None and not isinstance(scaling, dict):
        scaling = {key: getattr(scaling, key) for key in dir(scaling) if not key.startswith("_")}
    return float(getattr(config, "rope_theta", 10000.0) or 10000.0), scaling


def _llama3(inv_freq: torch.Tensor, s: dict, max_position_embeddings: int) -> torch.Tensor:
    """Llama 3.1: wavelengths above original / low_freq_factor divided by factor, below
    original / high_freq_factor kept, a smooth blend between."""
    factor = float(s.get("factor", 1.0) or 1.0)
    low, high = float(s["low_freq_factor"]), float(s["high_freq_factor"])
    original = float(s.get("original_max_position_embeddings") or max_position_embeddings)
    wavelen = 2 * math.pi / inv_freq
    smooth = (original / wavelen - low) / (high - low) if high != low else torch.zeros_like(inv_freq)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    return torch.where(wavelen < original / high, inv_freq,
                       torch.where(wavelen > original / low, inv_freq / factor, blended))


def _yarn(inv_freq: torch.Tensor, s: dict, dim: int, theta: float, max_position_embeddings: int):
    """YaRN: interpolated (/ factor) and extrapolated frequencies blended by a linear ramp over
    the dimensions between the beta_fast and beta_slow rotation counts; cos and sin scaled by
    the attention factor: the config's attention_factor, else get_mscale(factor, mscale) /
    get_mscale(factor, mscale_all_dim) when both are given, else 0.1 ln(factor) + 1 (as
    transformers' _compute_yarn_parameters)."""
    factor = float(s["factor"])
    original = float(s.get("original_max_position_embeddings") or max_position_embeddings)
    beta_fast = float(s.get("beta_fast") or 32)
    beta_slow = float(s.get("beta_slow") or 1)

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), dim - 1)
    if low == high:
        high += 0.001  # no zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device=inv_freq.device) - low) / (high - low)).clamp(0, 1)
    extrapolation = 1 - ramp
    blended = (inv_freq / factor) * (1 - extrapolation) + inv_freq * extrapolation
    attention_factor = s.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = s.get("mscale"), s.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
        else:
            attention_factor = _yarn_mscale(factor, 1.0)
    return blended, float(attention_factor)


def _yarn_mscale(factor: float, mscale: float) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0
