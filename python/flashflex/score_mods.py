"""Score modifications supported by the compiled kernels: soft-capping, ALiBi and an additive
bias tensor. Each object also carries `.score_mod`, the equivalent torch flex score_mod, so the
same modification can be checked against torch.nn.attention.flex_attention."""

from __future__ import annotations

import math
import numbers
from typing import Callable, Optional

import torch

from . import _C

__all__ = ["ScoreMod", "softcap", "alibi", "bias", "SUPPORTED"]

SUPPORTED = ("softcap(cap)", "alibi(slopes)", "bias(tensor)")

# Codes of flashflex::ScoreModKind (include/flashflex/mods.hpp), as the binding exports them.
_NONE, _SOFTCAP, _ALIBI, _BIAS = (_C.SCORE_MOD_KINDS[name] for name in ("none", "softcap", "alibi", "bias"))


class ScoreMod:
    """A built-in score modification. Build one with softcap(), alibi() or bias()."""

    def __init__(self, kind: int, name: str, score_mod: Callable, cap: float = 0.0,
                 tensor: Optional[torch.Tensor] = None):
        self.kind = kind
        self.name = name
        self.cap = cap
        self.tensor = tensor  # ALiBi slopes or the bias; None for softcap
        self.score_mod = score_mod

    def __repr__(self) -> str:
        if self.kind == _SOFTCAP:
            return f"flashflex.score_mods.softcap({self.cap})"
        return f"flashflex.score_mods.{self.name}(tensor of shape {tuple(self.tensor.shape)})"


def softcap(cap: float) -> ScoreMod:
    """s -> cap * tanh(s / cap); cap is a finite real number > 0."""
    if isinstance(cap, bool) or not isinstance(cap, numbers.Real):
        raise TypeError(f"softcap: expected cap as a real number (int or float), got {_describe(cap)}")
    cap = float(cap)
    if not (math.isfinite(cap) and cap > 0):
        raise ValueError(f"softcap: expected a finite cap > 0, got {cap}")

    def score_mod(score, b, h, q_idx, kv_idx):
        return cap * torch.tanh(score / cap)

    return ScoreMod(_SOFTCAP, "softcap", score_mod, cap=cap)


def alibi(slopes: torch.Tensor) -> ScoreMod:
    """s -> s + slopes[h] * (kv_idx - q_idx); slopes is a real tensor [Hq], used as float32."""
    if not isinstance(slopes, torch.Tensor) or slopes.is_complex() or slopes.dtype == torch.bool:
        raise TypeError(f"alibi: expected slopes as a 1-D float32 tensor [Hq], got {_describe(slopes)}")
    if slopes.dim() != 1:
        raise ValueError(f"alibi: expected slopes as a 1-D float32 tensor [Hq], got {_describe(slopes)}")
    slopes = slopes.to(torch.float32)

    def score_mod(score, b, h, q_idx, kv_idx):
        return score + slopes[h] * (kv_idx - q_idx)

    return ScoreMod(_ALIBI, "alibi", score_mod, tensor=slopes)


def bias(tensor: torch.Tensor) -> ScoreMod:
    """s -> s + tensor[b, h, q_idx, kv_idx]; tensor is [B or 1, Hq or 1, Q_LEN, KV_LEN].
    If it requires grad, flex_attention returns its gradient."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"bias: expected a 4-D tensor [B or 1, Hq or 1, Q_LEN, KV_LEN], got {_describe(tensor)}")
    if tensor.dim() != 4:
        raise ValueError(f"bias: expected a 4-D tensor [B or 1, Hq or 1, Q_LEN, KV_LEN], got {_describe(tensor)}")

    def score_mod(score, b, h, q_idx, kv_idx):
        bb = b if tensor.shape[0] > 1 else 0
        hh = h if tensor.shape[1] > 1 else 0
        return score + tensor[bb, hh, q_idx, kv_idx]

    return ScoreMod(_BIAS, "bias", score_mod, tensor=tensor)


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dim()}-D {x.dtype} tensor"
    text = repr(x)
    return f"{type(x).__name__} {text if len(text) <= 40 else text[:37] + '...'}"
