"""CUDA score mods no built-in expresses: the generated hook (_score_mod_codegen.py) linked into
the kernels' LTO-IR (src/cuda/linked/, installed as flashflex/kernels/*.fatbin) by
_score_mod_link.py, through its disk cache; loaded once per process (flashflex._C's
load_linked_kernel) and launched with the hook's tensors in the kernel parameters (no copy, so
CUDA-graph capture works once the kernels are loaded: make the first call outside the capture).
Limits: a 0-d CPU tensor the mod captures is copied to the device at every call (a capture cannot
take that: make it a CUDA tensor); every distinct mod (Python floats are baked into its source)
is linked and loaded once and stays loaded for the process.

Built, bfloat16 / float16: the sm80 family (compute_80 LTO-IR, linked for the GPU at hand, any
from Ampere on), forward and backward at head dims 64, 128, 256; the Hopper family (sm_90a),
forward at 64, 128, 256 and backward at 64 and 128. A call takes the family its backend takes:
the Hopper one on Hopper GPUs (the sm80 one for a backward at head dim 256, as the built-in mods),
the sm80 one elsewhere or with backend SM80. The backward gives dq, dk, dv and the gradients of
captured tensors that require them (each gather's partial times dS, added atomically into float32
buffers: not in deterministic mode)."""

from __future__ import annotations

import functools
import os
import re
import warnings
from typing import Dict, List, Optional, Tuple

import torch
import torch.autograd.forward_ad as _forward_ad
from torch.autograd.function import once_differentiable

from . import _C
from . import _score_mod_link as link
from ._ops import run_backward, run_forward
from ._score_mod_codegen import Generated, generate, tensor_descriptor
from ._score_mod_graph import ScoreModGraph
from ._tensor_ref import DTYPE_CODES

__all__ = ["LinkError", "LinkedScoreMod", "linked_score_mod", "kernel_path"]

LinkError = link.LinkError

KERNEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels")
_LINKED = _C.SCORE_MOD_KINDS["linked"]
_FORWARD_PASS, _BACKWARD_PASS = 0, 1  # flashflex::KernelPass
SM80, SM90 = _C.BACKENDS["SM80"], _C.BACKENDS["SM90"]  # kernel families (LinkedKernelKind::family)
_FAMILY_NAMES = {SM80: "sm80", SM90: "sm90"}
SM90_BACKWARD_HEAD_DIMS = (64, 128)  # the sm90 backward's (src/cuda/linked/sm90_bwd.cu)
_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}
# (hook source, pass, family, target, dtype, head dim) -> kernel
_HANDLES: Dict[Tuple[str, int, int, str, torch.dtype, int], int] = {}


def kernel_path(dtype: torch.dtype, head_dim: int, pass_: int = 0, family: int = SM90) -> str:
    """The LTO-IR of one family's pass (0 forward, 1 backward) for dtype and head dim."""
    name = "bwd" if pass_ == _BACKWARD_PASS else "fwd"
    return os.path.join(KERNEL_DIR, f"{_FAMILY_NAMES[family]}_{name}_{_DTYPE_NAMES.get(dtype, dtype)}_hdim{head_dim}"
                                    f".fatbin")


def family(capability: Tuple[int, int], backend: int, pass_: int, head_dim: int) -> int:
    """The kernel family a call of this pass runs on (the built-in mods' choice, native select_arch)."""
    hopper = capability[0] == 9 and backend != SM80
    if pass_ == _BACKWARD_PASS and head_dim not in SM90_BACKWARD_HEAD_DIMS and backend != SM90:
        hopper = False  # the sm90 backward has no head dim 256: the sm80 one runs it
    return SM90 if hopper else SM80


def target(capability: Tuple[int, int], family_: int) -> str:
    """The architecture a family's kernel is linked for on a GPU of `capability`."""
    return "sm_90a" if family_ == SM90 else f"sm_{capability[0]}{capability[1]}"


@functools.lru_cache(maxsize=None)
def _kernel_image(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class LinkedScoreMod:
    """A callable's graph as linked kernels for one (dtype, head dim, GPU capability, backend):
    `attend` runs the forward (and, through autograd, the backward, whose kernel is loaded with
    the first call needing it)."""

    def __init__(self, generated: Generated, handle: int, from_cache: bool, dtype: torch.dtype, head_dim: int,
                 capability: Tuple[int, int] = (9, 0), backend: int = 0):
        self.generated = generated
        self.handle = handle  # the forward's kernel, of family(capability, backend, forward, head_dim)
        self.from_cache = from_cache  # the forward's cubin came from the disk cache (or this process)
        self.dtype, self.head_dim = dtype, head_dim
        self.capability, self.backend = capability, backend
        self.family = family(capability, backend, _FORWARD_PASS, head_dim)
        self._backward_handle: Optional[int] = None

    def backward_handle(self) -> int:
        if self._backward_handle is None:
            fam = family(self.capability, self.backend, _BACKWARD_PASS, self.head_dim)
            if fam == SM90 and self.head_dim not in SM90_BACKWARD_HEAD_DIMS:
                raise NotImplementedError(
                    f"score_mod: the sm90 backward of a linked score mod is built for head dims "
                    f"{SM90_BACKWARD_HEAD_DIMS}, got {self.head_dim}; use backend AUTO or SM80 (kernel_options), or "
                    f"run this one forward only (torch.no_grad(), or inputs that need no gradient)")
            try:
                self._backward_handle, _ = _load(self.generated, _BACKWARD_PASS, fam, target(self.capability, fam),
                                                 self.dtype, self.head_dim)
            except LinkError as e:
                raise NotImplementedError(f"score_mod: the linked backward kernel cannot be linked here: {e}") from e
        return self._backward_handle

    def attend(self, query, key, value, mask_tensors: List[torch.Tensor], scale: float, deterministic: bool,
               backend: int):
        """(out, lse), differentiable in query, key, value and the hook's captured tensors."""
        return _attend_outside_trace(self, query, key, value, mask_tensors, scale, deterministic, backend)


def _attend(mod: LinkedScoreMod, query, key, value, mask_tensors, scale, deterministic, backend):
    inputs = []
    for t in mod.generated.inputs():
        t = t if t.device == query.device else t.to(query.device)  # 0-d tensors act as numbers on any device
        # a tensor whose gradient the kernel adds to by offset: its own memory, laid out densely
        inputs.append(t.contiguous() if t.requires_grad else t)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value, *inputs))
    # Inside a forward-AD dual level the Function runs, so that dual inputs raise (as _ops.attention).
    if not needs_grad and _forward_ad._current_level < 0:
        return run_forward(query, key, value, mask_tensors, scale, _forward_mod(mod, inputs), backend)
    if deterministic and any(t.requires_grad for t in inputs):
        raise NotImplementedError("score_mod: the gradients of a linked mod's captured tensors are added atomically; "
                                  "kernel_options={'deterministic': True} cannot take them")
    if needs_grad:
        mod.backward_handle()  # loaded now, outside any later graph capture of the backward
    return _LinkedAttention.apply(mod, mask_tensors, scale, deterministic, backend, query, key, value, *inputs)


# Under torch.compile the call runs eagerly (a graph break): dynamo does not trace the binding.
_attend_outside_trace = torch._dynamo.disable(_attend)


def _forward_mod(mod: LinkedScoreMod, inputs) -> tuple:
    return (_LINKED, 0.0, None, None, mod.handle, [tensor_descriptor(t) for t in inputs], [])


class _LinkedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mod, mask_tensors, scale, deterministic, backend, query, key, value, *inputs):
        out, lse = run_forward(query, key, value, mask_tensors, scale, _forward_mod(mod, inputs), backend)
        ctx.save_for_backward(query, key, value, out, lse, *mask_tensors, *inputs)
        ctx.mod, ctx.scale, ctx.deterministic, ctx.backend = mod, scale, deterministic, backend
        ctx.num_masks = len(mask_tensors)
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    @once_differentiable  # the native backward is not differentiable: a second order raises
    def backward(ctx, dout, dlse):
        query, key, value, out, lse, *rest = ctx.saved_tensors
        mask_tensors, inputs = rest[:ctx.num_masks], rest[ctx.num_masks:]
        mod = ctx.mod
        wanted = ctx.needs_input_grad[8:]
        # float32 accumulators, one per captured tensor wanting its gradient; gathers add by offset
        accum = [torch.zeros(t.shape, dtype=torch.float32, device=t.device) if want else None
                 for t, want in zip(inputs, wanted)]
        gather_grads = [accum[g.tensor].data_ptr() if accum[g.tensor] is not None else 0
                        for g in mod.generated.gathers]
        hook = (_LINKED, 0.0, None, None, mod.backward_handle(), [tensor_descriptor(t) for t in inputs], gather_grads)
        if dout is None:  # only lse reached the loss
            dout = torch.zeros_like(out)
        dq, dk, dv = run_backward(dout, dlse, query, key, value, out, lse, list(mask_tensors), ctx.scale, hook, None,
                                  ctx.deterministic, ctx.backend)
        grads = [a.to(t.dtype) if a is not None else None for a, t in zip(accum, inputs)]
        return (None, None, None, None, None, dq, dk, dv, *grads)


def unavailable(graph: ScoreModGraph, query: torch.Tensor, backend: int = 0) -> Optional[str]:
    """Why `graph` cannot run as a linked kernel for query's call with `backend`, or None."""
    if query.device.type != "cuda":
        return f"linked score mods run on CUDA tensors, got {query.device}"
    major, minor = torch.cuda.get_device_capability(query.device)
    if major < 8:
        return f"the CUDA kernels need compute capability 8.0 or newer; {query.device} has {major}.{minor}"
    if backend == SM90 and major != 9:
        return f"backend SM90 needs a Hopper GPU (compute capability 9.x); {query.device} has {major}.{minor}"
    if query.dtype not in _DTYPE_NAMES:
        return f"linked score mods take bfloat16 or float16 query / key / value, got {query.dtype}"
    path = kernel_path(query.dtype, query.shape[-1], _FORWARD_PASS,
                       family((major, minor), backend, _FORWARD_PASS, query.shape[-1]))
    if not os.path.exists(path):
        return f"this build has no LTO-IR of the linked kernel for this call ({path} is missing)"
    return link.available()


def linked_score_mod(generated: Generated, query: torch.Tensor, backend: int = 0) -> LinkedScoreMod:
    """The loaded forward kernel of `generated` for query's dtype, head dim and GPU, on the family
    `backend` takes (unavailable() gave None)."""
    capability = torch.cuda.get_device_capability(query.device)
    dtype, head_dim = query.dtype, query.shape[-1]
    fam = family(capability, backend, _FORWARD_PASS, head_dim)
    handle, from_cache = _load(generated, _FORWARD_PASS, fam, target(capability, fam), dtype, head_dim)
    return LinkedScoreMod(generated, handle, from_cache, dtype, head_dim, capability, backend)


def _load(generated: Generated, pass_: int, family_: int, arch: str, dtype: torch.dtype,
          head_dim: int) -> Tuple[int, bool]:
    """(kernel handle, whether the cubin was linked before) of one pass and family, linked for
    `arch` and loaded once per process."""
    key = (generated.source, pass_, family_, arch, dtype, head_dim)
    handle = _HANDLES.get(key)
    if handle is not None:
        return handle, True
    path = kernel_path(dtype, head_dim, pass_, family_)
    if not os.path.exists(path):
        raise NotImplementedError(f"score_mod: this build has no LTO-IR of the linked kernel ({path} is missing)")
    log: List[str] = []
    cubin, from_cache = link.linked_hook(generated.source, arch, [(os.path.basename(path), _kernel_image(path))],
                                         log)
    spilled = sum(int(n) for n in re.findall(r"(\d+) bytes spill stores", "".join(log)))
    if spilled:  # said once, when linked: the cached cubin is the same kernel
        warnings.warn(f"score_mod: the linked {_FAMILY_NAMES[family_]} {'backward' if pass_ else 'forward'} kernel "
                      f"({dtype}, head_dim {head_dim}) spills {spilled} bytes of registers with this mod; expect it "
                      f"slower than a built-in mod of the same arithmetic", RuntimeWarning, stacklevel=2)
    handle = _C.load_linked_kernel(cubin, pass_, DTYPE_CODES[dtype], head_dim, family_)
    _HANDLES[key] = handle
    return handle, from_cache


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
