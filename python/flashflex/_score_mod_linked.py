"""CUDA score mods no built-in expresses: the generated hook (_score_mod_codegen.py) linked into
the sm90 forward's LTO-IR (src/cuda/linked/sm90_fwd.cu, installed as flashflex/kernels/*.fatbin)
by _score_mod_link.py, through its disk cache; loaded once per process (flashflex._C's
load_linked_kernel) and launched with the hook's tensors in the kernel parameters (no copy, so
CUDA-graph capture works once the kernel is loaded).

Built: the forward on Hopper (compute capability 9.x), bfloat16 / float16, head dims 64, 128 and
256. The backward of a linked mod is not built: a call that needs gradients raises
NotImplementedError before any work."""

from __future__ import annotations

import functools
import os
from typing import Dict, List, Optional, Tuple

import torch

from . import _C
from . import _score_mod_link as link
from ._score_mod_codegen import Generated, generate, tensor_descriptor
from ._score_mod_graph import ScoreModGraph
from ._tensor_ref import DTYPE_CODES, stream_of, tensor_ref

__all__ = ["LinkedScoreMod", "linked_score_mod", "kernel_path"]

KERNEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels")
ARCH = "sm_90a"
_LINKED = _C.SCORE_MOD_KINDS["linked"]
_FORWARD_PASS = 0
_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}
_HANDLES: Dict[Tuple[str, torch.dtype, int], int] = {}  # (hook source, dtype, head dim) -> kernel


def kernel_path(dtype: torch.dtype, head_dim: int) -> str:
    return os.path.join(KERNEL_DIR, f"sm90_fwd_{_DTYPE_NAMES.get(dtype, dtype)}_hdim{head_dim}.fatbin")


@functools.lru_cache(maxsize=None)
def _kernel_image(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class LinkedScoreMod:
    """A callable's graph as a linked kernel for one (dtype, head dim): `attend` runs the forward."""

    def __init__(self, generated: Generated, handle: int, from_cache: bool):
        self.generated = generated
        self.handle = handle
        self.from_cache = from_cache  # the cubin came from the disk cache (or this process)

    def attend(self, query, key, value, mask_tensors: List[torch.Tensor], scale: float, backend: int):
        """(out, lse) of the forward; NotImplementedError where gradients are needed."""
        return _attend_outside_trace(self, query, key, value, mask_tensors, scale, backend)


def _attend(mod: LinkedScoreMod, query, key, value, mask_tensors, scale, backend):
    from ._ops import _empty_out, _mask_args  # _ops imports the resolution path: no cycle at import
    # 0-d tensors act as numbers on any device: the kernel reads them on query's
    inputs = [t if t.device == query.device else t.to(query.device) for t in mod.generated.inputs()]
    if torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value, *inputs)):
        raise NotImplementedError(
            "score_mod: the backward of a linked score mod is not built yet; on CUDA such a mod runs "
            "forward only (under torch.no_grad(), or with inputs that need no gradient)")
    out = _empty_out(query)
    lse = query.new_empty(query.shape[:-1], dtype=torch.float32)
    hook = (_LINKED, 0.0, None, None, mod.handle, [tensor_descriptor(t) for t in inputs])
    args = (tensor_ref(query), tensor_ref(key), tensor_ref(value), tensor_ref(out), tensor_ref(lse), scale, hook,
            _mask_args(mask_tensors, query, key), backend)
    workspace_bytes = _C.forward_workspace_size(*args)
    workspace = torch.empty(workspace_bytes, dtype=torch.uint8, device=query.device) if workspace_bytes else None
    # inputs stay referenced until the launch is queued; later frees are ordered on this stream
    _C.forward(*args, workspace.data_ptr() if workspace is not None else 0, workspace_bytes, stream_of(query))
    return out, lse


# Under torch.compile the call runs eagerly (a graph break): dynamo does not trace the binding.
_attend_outside_trace = torch._dynamo.disable(_attend)


def unavailable(graph: ScoreModGraph, query: torch.Tensor) -> Optional[str]:
    """Why `graph` cannot run as a linked kernel for query's call, or None."""
    if query.device.type != "cuda":
        return f"linked score mods run on CUDA tensors, got {query.device}"
    major, minor = torch.cuda.get_device_capability(query.device)
    if major != 9:
        return (f"linked score mods run on the Hopper forward only (compute capability 9.x); {query.device} has "
                f"{major}.{minor}")
    if query.dtype not in _DTYPE_NAMES:
        return f"linked score mods take bfloat16 or float16 query / key / value, got {query.dtype}"
    path = kernel_path(query.dtype, query.shape[-1])
    if not os.path.exists(path):
        return f"this build has no LTO-IR of the linked kernel for this call ({path} is missing)"
    return link.available()


def linked_score_mod(generated: Generated, query: torch.Tensor) -> LinkedScoreMod:
    """The loaded kernel of `generated` for query's dtype and head dim (unavailable() gave None)."""
    dtype, head_dim = query.dtype, query.shape[-1]
    key = (generated.source, dtype, head_dim)
    handle = _HANDLES.get(key)
    if handle is not None:
        return LinkedScoreMod(generated, handle, True)
    path = kernel_path(dtype, head_dim)
    cubin, from_cache = link.linked_hook(generated.source, ARCH, [(os.path.basename(path), _kernel_image(path))])
    handle = _C.load_linked_kernel(cubin, _FORWARD_PASS, DTYPE_CODES[dtype], head_dim)
    _HANDLES[key] = handle
    return LinkedScoreMod(generated, handle, from_cache)


def generated_or_reason(graph: ScoreModGraph):
    """(Generated, None), or (None, why the graph has no generated code)."""
    try:
        generated = generate(graph)
    except TypeError as e:
        return None, str(e)
    if generated.num_inputs > _C.MAX_HOOK_TENSORS:
        return None, (f"score_mod: a linked score mod reads at most {_C.MAX_HOOK_TENSORS} captured tensors, this one "
                      f"reads {generated.num_inputs}")
    return generated, None
