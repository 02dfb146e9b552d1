"""flashflex.flex_attention: torch.nn.attention.flex_attention's signature and semantics over the
native core. Validates with torch's argument names, resolves the block mask and score mod, and
calls _ops.attention (autograd and torch.compile live in _ops.py)."""

from __future__ import annotations

import math
import numbers
from typing import Optional

import torch

from . import _C
from ._check_args import check_bool, check_dense, check_sizes
from ._kernel_options import resolve_kernel_options
from ._ops import attention
from ._tensor_ref import SUPPORTED_DTYPES, unit_inner_stride
from ._score_mod_compile import resolve_score_mod
from ._score_mod_resolve import CallableScoreMod
from .block_mask import BlockMask
from .score_mods import _NONE, SUPPORTED, ScoreMod

__all__ = ["flex_attention"]

# Read once: torch.compile cannot trace a call into the binding.
_SUPPORTED_HEAD_DIMS = tuple(_C.supported_head_dims())


def flex_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, score_mod=None, block_mask=None,
                   scale: Optional[float] = None, enable_gqa: bool = False, return_lse: bool = False,
                   kernel_options: Optional[dict] = None, *, return_aux=None):
    """Attention of `query` [B, Hq, Q_LEN, D] over `key`/`value` [B, Hkv, KV_LEN, D] with a mask
    (`block_mask`: flashflex.BlockMask or torch BlockMask; None = every key visible) and a score
    modification (`score_mod`: from flashflex.score_mods, or a torch-flex callable (score, b, h,
    q_idx, kv_idx) -> score, see _score_mod_resolve.py). Returns out [B, Hq, Q_LEN, D], and
    lse float32 [B, Hq, Q_LEN] (natural log) with return_lse=True. A row with no visible key gives
    out 0 and lse -inf. return_aux=AuxRequest(lse=True) returns (out, AuxOutput(lse=...)) as in
    torch. kernel_options: {"deterministic": bool, "BACKEND": "AUTO" | "SM80" | "SM90"}
    (flashflex._kernel_options). Under autocast, query / key / value are first cast to the autocast
    dtype, as torch's flex_attention does."""
    check_bool("enable_gqa", enable_gqa)
    check_bool("return_lse", return_lse)
    query, key, value = _autocast_inputs(query, key, value)
    _check_tensors(query, key, value, enable_gqa)
    mask = _resolve_block_mask(block_mask, query, key)
    deterministic, backend = resolve_kernel_options(kernel_options)
    mod = _resolve_score_mod(score_mod, query, key, backend)
    scale = _resolve_scale(scale, query.shape[-1])
    # A Python callable (_score_mod_resolve.py): a built-in mod it reduces to, its graph (CPU), or
    # its linked kernel (CUDA).
    graph_mod = mod if isinstance(mod, CallableScoreMod) else None
    if graph_mod is not None:
        mod, scale = _resolve_score_mod(graph_mod.builtin, query, key), scale * graph_mod.scale_factor

    mask_tensors = [] if mask is None else mask._tensors()
    mod_tensor = mod.tensor if mod is not None else None
    if mod_tensor is not None:
        mod_tensor = unit_inner_stride(mod_tensor)
    if graph_mod is not None and graph_mod.graph is not None:
        out, lse = graph_mod.attend_cpu(query, key, value, mask, scale)
    elif graph_mod is not None and graph_mod.linked is not None:
        out, lse = graph_mod.linked.attend(unit_inner_stride(query), unit_inner_stride(key), unit_inner_stride(value),
                                           mask_tensors, scale, deterministic, backend)
    else:
        out, lse = attention(unit_inner_stride(query), unit_inner_stride(key), unit_inner_stride(value), mask_tensors,
                             scale, mod.kind if mod else _NONE, mod.cap if mod else 0.0, mod_tensor, deterministic,
                             backend)
    if return_aux is not None:
        return out, _aux_output(return_aux, return_lse, lse)
    return (out, lse) if return_lse else out


def _autocast_inputs(query, key, value):
    """torch's flex_attention casts q / k / v to the autocast dtype (floating, not float64, on the
    autocast device); the custom ops have no autocast rule of their own."""
    if not isinstance(query, torch.Tensor) or query.device.type not in ("cpu", "cuda"):
        return query, key, value
    device_type = query.device.type
    if not torch.is_autocast_enabled(device_type):
        return query, key, value
    dtype = torch.get_autocast_dtype(device_type)

    def cast(t):
        eligible = (isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64
                    and t.device.type == device_type)
        return t.to(dtype) if eligible else t

    return cast(query), cast(key), cast(value)


def _aux_output(request, return_lse: bool, lse: torch.Tensor):
    from torch.nn.attention.flex_attention import AuxOutput
    if return_lse:
        raise ValueError("return_aux: expected either return_lse or return_aux, got both")
    if getattr(request, "max_scores", False):
        raise NotImplementedError("return_aux: max_scores is not supported yet; request lse only")
    return AuxOutput(lse=lse if getattr(request, "lse", False) else None)


def _check_tensors(query, key, value, enable_gqa: bool) -> None:
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        check_dense(name, t)
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{name}: expected dtype float32, float16 or bfloat16, got {t.dtype}")
        if t.dim() != 4:
            raise ValueError(f"{name}: expected 4 dimensions [B, H, SEQ_LEN, D], got shape {tuple(t.shape)}")
        if t.numel() == 0:
            raise ValueError(f"{name}: expected non-empty sizes, got shape {tuple(t.shape)}")
        check_sizes(name, t, "Q_LEN" if name == "query" else "KV_LEN")
    for name, t in (("key", key), ("value", value)):
        if t.dtype != query.dtype:
            raise TypeError(f"{name}: expected dtype {query.dtype} (as query), got {t.dtype}")
        if t.device != query.device:
            raise ValueError(f"{name}: expected device {query.device} (as query), got {t.device}")
    b, hq, _, d = query.shape
    if key.shape[0] != b or value.shape[0] != b:
        raise ValueError(f"key/value: expected batch {b} (as query), got {key.shape[0]} and {value.shape[0]}")
    if key.shape[-1] != d:
        raise ValueError(f"key: expected head dim {d} (as query), got {key.shape[-1]}")
    if value.shape[1] != key.shape[1] or value.shape[2] != key.shape[2]:
        raise ValueError(f"value: expected heads and length {tuple(key.shape[1:3])} (as key), got "
                         f"{tuple(value.shape[1:3])}")
    if value.shape[-1] != d:
        raise ValueError(f"value: expected head dim {d} (as query), got {value.shape[-1]}")
    hkv = key.shape[1]
    if hq != hkv and not enable_gqa:
        raise ValueError(f"key: expected {hq} heads (as query) unless enable_gqa=True, got {hkv}")
    if hq % hkv != 0:
        raise ValueError(f"key: expected a number of heads dividing query's {hq} heads, got {hkv}")
    dims = _SUPPORTED_HEAD_DIMS
    if d not in dims:
        raise ValueError(f"query: expected head dim in {dims}, got {d}")


def _resolve_block_mask(block_mask, query, key) -> Optional[BlockMask]:
    if block_mask is None:
        return None
    if not isinstance(block_mask, BlockMask):
        from torch.nn.attention.flex_attention import BlockMask as TorchBlockMask
        if not isinstance(block_mask, TorchBlockMask):
            raise TypeError(f"block_mask: expected a flashflex.BlockMask, a torch BlockMask or None, got "
                            f"{type(block_mask).__name__}")
        # Converted on every call (under torch.compile, inside the graph): never stale.
        block_mask = BlockMask.from_torch(block_mask, batch=query.shape[0], heads=query.shape[1])
    b, h, q_len, kv_len = block_mask.shape
    if (q_len, kv_len) != (query.shape[2], key.shape[2]):
        raise ValueError(f"block_mask: expected seq_lengths {(query.shape[2], key.shape[2])} (as query and key), "
                         f"got {(q_len, kv_len)}")
    if b not in (1, query.shape[0]):
        raise ValueError(f"block_mask: expected batch {query.shape[0]} or 1 (as query), got {b}")
    if h not in (1, query.shape[1]):
        raise ValueError(f"block_mask: expected heads {query.shape[1]} or 1 (as query), got {h}")
    if block_mask.device != query.device:
        raise ValueError(f"block_mask: expected device {query.device} (as query), got {block_mask.device}; "
                         f"move it with block_mask.to(device)")
    return block_mask


def _resolve_score_mod(score_mod, query, key, backend: int = 0) -> Optional[ScoreMod]:
    if score_mod is None:
        return None
    if not isinstance(score_mod, ScoreMod):
        if callable(score_mod):  # captured and recognised in _score_mod_resolve.py
            return resolve_score_mod(score_mod, query, key, backend)
        raise TypeError(f"score_mod: expected None, a callable (score, b, h, q_idx, kv_idx) -> score or one of "
                        f"flashflex.score_mods: {', '.join(SUPPORTED)}, got {type(score_mod).__name__}")
    t = score_mod.tensor
    if t is not None:
        if t.device != query.device:
            raise ValueError(f"score_mod: expected its tensor on {query.device} (as query), got {t.device}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"score_mod: expected its tensor as float32, float16 or bfloat16, got {t.dtype}")
        b, hq, q_len, _ = query.shape
        kv_len = key.shape[2]
        if score_mod.name == "alibi" and tuple(t.shape) != (hq,):
            raise ValueError(f"score_mod: expected {hq} ALiBi slopes (one per query head), got shape {tuple(t.shape)}")
        if score_mod.name == "bias" and (t.shape[0] not in (1, b) or t.shape[1] not in (1, hq)
                                         or tuple(t.shape[2:]) != (q_len, kv_len)):
            raise ValueError(f"score_mod: expected a bias of shape [{b} or 1, {hq} or 1, {q_len}, {kv_len}], got "
                             f"{tuple(t.shape)}")
    return score_mod


def _resolve_scale(scale, head_dim: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale: expected a finite number or None, got {type(scale).__name__} {scale!r}")
    if not math.isfinite(scale):
        raise ValueError(f"scale: expected a finite number or None, got {scale!r}")
    return float(scale)


