"""torch.Tensor -> the plain tuple the binding reads (pointer, dtype code, device, sizes, strides)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch

# Codes of flashflex::DType (include/flashflex/tensor.hpp). The integer codes serve index inputs
# (EAGLE3 sequence lengths); attention tensors take SUPPORTED_DTYPES only.
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.int32: 3, torch.int64: 4}
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

TensorTuple = Tuple[int, int, int, int, Tuple[int, ...], Tuple[int, ...]]


def device_code(device: torch.device) -> Tuple[int, int]:
    """(flashflex::DeviceType, index) of a torch device."""
    if device.type == "cuda":
        return 1, device.index if device.index is not None else torch.cuda.current_device()
    return 0, 0


def tensor_ref(t: Optional[torch.Tensor]) -> Optional[TensorTuple]:
    if t is None:
        return None
    device_type, device_index = device_code(t.device)
    return (t.data_ptr(), DTYPE_CODES[t.dtype], device_type, device_index, tuple(t.shape), tuple(t.stride()))


def unit_inner_stride(t: torch.Tensor) -> torch.Tensor:
    """The kernels read rows with stride 1: copy only when the innermost stride is not 1."""
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def stream_of(t: torch.Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream if t.is_cuda else 0
