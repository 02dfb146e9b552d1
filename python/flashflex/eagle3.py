"""flashflex.eagle3: EAGLE3 test-time-training (TTT) attention as a structured path.

TTT step k has k + 1 key/value blocks K_0..K_k, V_0..V_k, each [B, Hkv, T, D], passed as lists
(never concatenated: torch.cat keeps every step's copy alive for autograd). Row q of sample b is
valid iff q < L_b - k (L_b = seq_lengths[b], or T when seq_lengths is None); a valid row sees
K_0[0..q] (causal) and K_j[q] for 1 <= j <= k (one row-local key per later block), all in one
softmax of scale * q.k. This is the customers' generate_eagle3_mask over [K_0 | ... | K_k] with
seq_lengths - k as its lengths. Invalid rows give out 0, lse -inf and zero gradients. No score
mods apply on this path. Gradients flow to q and to every block (_eagle3_ops.py: an
autograd.Function in eager mode, the flashflex::eagle3_fwd / _bwd custom ops under
torch.compile(fullgraph=True))."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from . import _C
from ._check_args import check_bool, check_dense, check_sizes
from ._eagle3_ops import eagle3_attention
from ._kernel_options import resolve_kernel_options
from ._tensor_ref import SUPPORTED_DTYPES, unit_inner_stride
from .attention import _resolve_scale

__all__ = ["ttt_attention"]

# Read once: torch.compile cannot trace a call into the binding.
_SUPPORTED_HEAD_DIMS = tuple(_C.supported_head_dims())
_LENGTH_DTYPES = (torch.int32, torch.int64)


def ttt_attention(q: torch.Tensor, k_blocks: Sequence[torch.Tensor], v_blocks: Sequence[torch.Tensor],
                  seq_lengths: Optional[Union[torch.Tensor, Sequence[int]]] = None, scale: Optional[float] = None,
                  return_lse: bool = False, kernel_options: Optional[dict] = None):
    """EAGLE3 TTT attention of `q` [B, Hq, T, D] over `k_blocks` / `v_blocks` (lists of k + 1
    tensors [B, Hkv, T, D], same dtype and device as q; Hq a multiple of Hkv; any strides with
    innermost stride 1, so [B, T, H, D] memory seen as [B, H, T, D] works). `seq_lengths`: the
    valid length L_b of each sample (int32 / int64 tensor [B] on q's device, or a list of ints,
    each in [0, T]); None means every sample has length T, so the last k rows are invalid.
    `scale` defaults to 1 / sqrt(D). Returns out [B, Hq, T, D] in q's layout, and with
    return_lse=True also lse float32 [B, Hq, T] (natural log; -inf on invalid rows).
    kernel_options: {"deterministic": bool, "BACKEND": "AUTO" | "SM80" | "SM90"} (flashflex._kernel_options)."""
    check_bool("return_lse", return_lse)
    deterministic, backend = resolve_kernel_options(kernel_options)
    _check_query(q)
    if _usual_blocks(q, k_blocks, v_blocks):
        k_blocks, v_blocks = list(k_blocks), list(v_blocks)
    else:  # find and word the error, or copy the blocks whose rows are not contiguous
        k_blocks = _check_block_list("k_blocks", k_blocks, q)
        v_blocks = _check_block_list("v_blocks", v_blocks, q)
        if len(v_blocks) != len(k_blocks):
            raise ValueError(f"v_blocks: expected {len(k_blocks)} blocks (as k_blocks), got {len(v_blocks)}")
        _check_block_shapes(q, k_blocks, v_blocks)
        k_blocks = [unit_inner_stride(k) for k in k_blocks]
        v_blocks = [unit_inner_stride(v) for v in v_blocks]
    lengths = _resolve_seq_lengths(seq_lengths, q)
    scale = _resolve_scale(scale, q.shape[-1])
    out, lse = eagle3_attention(unit_inner_stride(q), k_blocks, v_blocks, lengths, scale, deterministic, backend)
    return (out, lse) if return_lse else out


def _usual_blocks(q: torch.Tensor, k_blocks, v_blocks) -> bool:
    """The case of every call of an unroll, in one test per block: lists of as many plain 4-d
    tensors of q's dtype and device, all of k_blocks[0]'s shape (q's batch, T and D; heads dividing
    q's), rows contiguous. Anything else takes the checks below, which word the error."""
    if not (isinstance(k_blocks, (list, tuple)) and isinstance(v_blocks, (list, tuple)) and k_blocks
            and len(v_blocks) == len(k_blocks) and isinstance(k_blocks[0], torch.Tensor)):
        return False
    shape, dtype, device = k_blocks[0].shape, q.dtype, q.device
    if not (len(shape) == 4 and (shape[0], shape[2], shape[3]) == (q.shape[0], q.shape[2], q.shape[3])
            and shape[1] > 0 and q.shape[1] % shape[1] == 0):
        return False
    for blocks in (k_blocks, v_blocks):
        for t in blocks:
            if not (isinstance(t, torch.Tensor) and t.shape == shape and t.dtype == dtype and t.device == device
                    and t.layout == torch.strided and not t.is_nested and t.stride(-1) == 1):
                return False
    return True


def _check_query(q) -> None:
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q: expected a torch.Tensor, got {type(q).__name__}")
    check_dense("q", q)
    if q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"q: expected dtype float32, float16 or bfloat16, got {q.dtype}")
    if q.dim() != 4:
        raise ValueError(f"q: expected 4 dimensions [B, Hq, T, D], got shape {tuple(q.shape)}")
    if q.numel() == 0:
        raise ValueError(f"q: expected non-empty sizes, got shape {tuple(q.shape)}")
    check_sizes("q", q, "T")
    if q.shape[-1] not in _SUPPORTED_HEAD_DIMS:
        raise ValueError(f"q: expected head dim in {_SUPPORTED_HEAD_DIMS}, got {q.shape[-1]}")


def _check_block_list(name: str, blocks, q: torch.Tensor) -> list:
    """A non-empty list or tuple of 4-d tensors of q's dtype and device."""
    if isinstance(blocks, torch.Tensor) or not isinstance(blocks, (list, tuple)):
        raise TypeError(f"{name}: expected a list of tensors [B, Hkv, T, D] (one per TTT block, not "
                        f"concatenated), got {type(blocks).__name__}")
    if len(blocks) == 0:
        raise ValueError(f"{name}: expected at least one block (block 0: the causal keys), got an empty list")
    for j, t in enumerate(blocks):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}[{j}]: expected a torch.Tensor, got {type(t).__name__}")
        check_dense(f"{name}[{j}]", t)
        if t.dtype != q.dtype:
            raise TypeError(f"{name}[{j}]: expected dtype {q.dtype} (as q), got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name}[{j}]: expected device {q.device} (as q), got {t.device}")
        if t.dim() != 4:
            raise ValueError(f"{name}[{j}]: expected 4 dimensions [B, Hkv, T, D], got shape {tuple(t.shape)}")
    return list(blocks)


def _check_block_shapes(q: torch.Tensor, k_blocks: list, v_blocks: list) -> None:
    b, hq, t, d = q.shape
    first = k_blocks[0]
    if (first.shape[0], first.shape[2], first.shape[3]) != (b, t, d):
        raise ValueError(f"k_blocks[0]: expected shape [{b}, Hkv, {t}, {d}] (batch, T and D as q), got "
                         f"{tuple(first.shape)}")
    hkv = first.shape[1]
    if hq % hkv != 0:
        raise ValueError(f"k_blocks[0]: expected a number of heads dividing q's {hq} heads, got {hkv}")
    for name, blocks in (("k_blocks", k_blocks), ("v_blocks", v_blocks)):
        for j, block in enumerate(blocks):
            if block.shape != first.shape:
                raise ValueError(f"{name}[{j}]: expected shape {tuple(first.shape)} (as k_blocks[0]), got "
                                 f"{tuple(block.shape)}")


def _resolve_seq_lengths(seq_lengths, q: torch.Tensor) -> Optional[torch.Tensor]:
    """None, or an int32 / int64 tensor [B] on q's device with stride 1. A list's values are
    checked here; a CPU tensor's by the native core; a CUDA tensor's are not read (no sync)."""
    if seq_lengths is None:
        return None
    b, t = q.shape[0], q.shape[2]
    if isinstance(seq_lengths, torch.Tensor):
        if seq_lengths.dtype not in _LENGTH_DTYPES:
            raise TypeError(f"seq_lengths: expected an int32 or int64 tensor, got dtype {seq_lengths.dtype}")
        if tuple(seq_lengths.shape) != (b,):
            raise ValueError(f"seq_lengths: expected shape ({b},) (one length per sample of q), got "
                             f"{tuple(seq_lengths.shape)}")
        if seq_lengths.device != q.device:
            raise ValueError(f"seq_lengths: expected device {q.device} (as q), got {seq_lengths.device}")
        return unit_inner_stride(seq_lengths)
    if not isinstance(seq_lengths, (list, tuple)):
        raise TypeError(f"seq_lengths: expected None, an int32 / int64 tensor or a list of ints, got "
                        f"{type(seq_lengths).__name__}")
    if len(seq_lengths) != b:
        raise ValueError(f"seq_lengths: expected {b} lengths (one per sample of q), got {len(seq_lengths)}")
    for i, length in enumerate(seq_lengths):
        if isinstance(length, bool) or not isinstance(length, int):
            raise TypeError(f"seq_lengths[{i}]: expected an int, got {type(length).__name__}")
        if not 0 <= length <= t:
            raise ValueError(f"seq_lengths[{i}]: expected a length in [0, {t}], got {length}")
    return torch.tensor(list(seq_lengths), dtype=torch.int64, device=q.device)
