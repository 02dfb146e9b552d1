"""kernel_options of flex_attention and ttt_attention: which kernels run and how the backward sums.

  {"deterministic": bool}   the backward's fixed summation order (default False)
  {"BACKEND": name}         "AUTO" (default): the Hopper kernels (sm90) on compute capability 9.x
                            where they exist for the call, else the portable sm80 kernels; "SM80" or
                            "SM90" force one ("SM90" off Hopper is an error). torch flex's names
                            ("TRITON", "FLASH", "TRITON_DECODE") mean AUTO, so code written for torch
                            runs unchanged. Ignored on the CPU. The environment variable
                            FLASHFLEX_BACKEND, read at import, sets the default (e.g. SM80 to run a
                            whole program or test suite on the portable kernels).
"""

from __future__ import annotations

import os
import warnings
from typing import Tuple

from . import _C
from ._check_args import check_bool

_TORCH_BACKENDS = ("TRITON", "FLASH", "TRITON_DECODE")
_KNOWN = ("deterministic", "BACKEND")


def _backend_code(backend, name: str) -> int:
    if not isinstance(backend, str):
        raise TypeError(f"{name}: expected a str, got {type(backend).__name__} {backend!r}")
    key = "AUTO" if backend.upper() in _TORCH_BACKENDS else backend.upper()
    if key not in _C.BACKENDS:
        raise ValueError(f"{name}: expected one of {sorted(_C.BACKENDS)} (or torch's {list(_TORCH_BACKENDS)}, "
                         f"read as AUTO), got {backend!r}")
    return _C.BACKENDS[key]


_DEFAULT_BACKEND = _backend_code(os.environ.get("FLASHFLEX_BACKEND", "AUTO"), "FLASHFLEX_BACKEND")


def resolve_kernel_options(kernel_options) -> Tuple[bool, int]:
    """(deterministic, backend code of flashflex._C.BACKENDS)."""
    if kernel_options is None:
        return False, _DEFAULT_BACKEND
    if not isinstance(kernel_options, dict):
        raise TypeError(f"kernel_options: expected a dict or None, got {type(kernel_options).__name__}")
    ignored = sorted(str(k) for k in kernel_options if k not in _KNOWN)
    if ignored:
        warnings.warn(f"kernel_options: ignoring {ignored}; flashflex understands {list(_KNOWN)}", stacklevel=3)
    deterministic = kernel_options.get("deterministic", False)
    check_bool('kernel_options["deterministic"]', deterministic)
    backend = kernel_options.get("BACKEND")
    return deterministic, _DEFAULT_BACKEND if backend is None else _backend_code(backend, 'kernel_options["BACKEND"]')
