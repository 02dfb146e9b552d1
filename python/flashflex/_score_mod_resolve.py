"""A score_mod callable, resolved for one flex_attention call: captured (_score_mod_graph.py) and
recognised (_score_mod_recognize.py) once per callable and cached, then bound to the call's shapes:
a built-in ScoreMod with a factor for the softmax scale; or, on CPU tensors, the graph itself
(evaluated exactly in float64 by _score_mod_cpu.py); or, on CUDA tensors, the graph's generated
code linked into the kernels (_score_mod_linked.py). Where none of these
applies, NotImplementedError says why.

The cache is keyed by the callable's identity (a weak reference guards against id reuse) and a
fingerprint of what its graph was traced from (code, closure cells, defaults, the globals it
names, partial arguments, module attributes), and checks the captured tensors' shapes and dtypes
and, for those whose values the graph or the recognition read (0-d constants, trace-time
computations), their in-place versions: an update in place is never served stale."""

from __future__ import annotations

import functools
import types
import weakref
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import torch

from . import _score_mod_linked as linked
from . import score_mods
from ._score_mod_cpu import graph_attention_outside_trace
from ._score_mod_graph import ScoreModGraph, capture, evaluate
from ._score_mod_recognize import MAX_MATERIALISED, Pattern, recognise
from ._tensor_ref import SUPPORTED_DTYPES

__all__ = ["CallableScoreMod", "resolve_callable"]


class CallableScoreMod:
    """What a callable becomes for one call: `builtin` (a ScoreMod, or None for no mod) with
    `scale_factor` to fold into the softmax scale; or `graph` (builtin unused) for the CPU path;
    or `linked` (a _score_mod_linked.LinkedScoreMod) for the CUDA one."""

    def __init__(self, builtin=None, scale_factor: float = 1.0, graph: Optional[ScoreModGraph] = None,
                 linked=None):
        self.builtin = builtin
        self.scale_factor = scale_factor
        self.graph = graph
        self.linked = linked

    def attend_cpu(self, query, key, value, block_mask, scale: float):
        return graph_attention_outside_trace(self.graph, query, key, value, block_mask, scale)


class _Entry:
    def __init__(self, ref, fingerprint, graph: ScoreModGraph, pattern: Optional[Pattern]):
        self.ref = ref
        self.fingerprint = fingerprint
        self.graph = graph
        self.pattern = pattern
        reads = pattern.reads if pattern is not None else ()
        watched = [graph.tensors[name] for name in reads] + list(graph.folded)
        self.watched = tuple(watched)
        self.versions = _versions(watched)
        self.metadata = _metadata(graph.tensors.values())
        self.materialised: Optional[Tuple[tuple, torch.Tensor]] = None  # (key, bias) when no grad is needed
        self.generated = None  # (Generated or None, why not): the linked path's code, made once

    def valid(self, owner, fingerprint) -> bool:
        return (self.ref is not None and self.ref() is owner and self.fingerprint == fingerprint
                and self.versions == _versions(self.watched) and self.metadata == _metadata(self.graph.tensors.values()))


_CACHE: Dict[object, _Entry] = {}


def _versions(tensors) -> tuple:
    return tuple(t._version for t in tensors)


def _metadata(tensors) -> tuple:
    return tuple((t.shape, t.dtype, t.device, t.requires_grad) for t in tensors)


def _entry(fn: Callable) -> _Entry:
    fingerprint = _fingerprint(fn)
    # A bound method is made afresh at each attribute access: its object is what lives.
    owner = fn.__self__ if isinstance(fn, types.MethodType) else fn
    key = (id(owner), id(fn.__func__)) if owner is not fn else id(fn)
    hit = _CACHE.get(key)
    if hit is not None and hit.valid(owner, fingerprint):
        return hit
    graph = capture(fn)
    try:
        ref = weakref.ref(owner, lambda _: _CACHE.pop(key, None))
    except TypeError:  # not weak-referenceable: captured again at every call
        ref = None
    entry = _Entry(ref, fingerprint, graph, recognise(graph))
    if ref is not None:
        _CACHE[key] = entry
    return entry


def resolve_callable(fn: Callable, query: torch.Tensor, key: torch.Tensor, backend: int = 0) -> CallableScoreMod:
    entry = _entry(fn)
    for t in entry.graph.tensors.values():
        if t.dim() > 0 and t.device != query.device:  # 0-d tensors act as numbers on any device
            raise ValueError(f"score_mod: {_name(fn)} captures a tensor of shape {tuple(t.shape)} on {t.device}; "
                             f"expected it on {query.device} (as query)")
    bound = _bind(entry, query, key) if entry.pattern is not None else None
    if bound is not None:
        return bound
    if query.device.type == "cpu":
        return CallableScoreMod(graph=entry.graph)
    why = linked.unavailable(entry.graph, query, backend)
    if why is None:
        if entry.generated is None:
            entry.generated = linked.generated_or_reason(entry.graph)
        generated, why = entry.generated
        if generated is not None:
            try:
                return CallableScoreMod(linked=linked.linked_score_mod(generated, query, backend))
            except linked.LinkError as e:  # an NVRTC / nvJitLink too old for the kernels, ...
                why = f"the link failed: {e}"
    ops = ", ".join(dict.fromkeys(entry.graph.ops)) or "no operation"
    raise NotImplementedError(
        f"score_mod: {_name(fn)} is not one of the built-in score mods (its graph uses {ops}) and cannot be linked "
        f"into the kernels here: {why} (on CPU tensors it runs exactly). Recognised forms: c * s, "
        f"A * tanh(B * s), s + slopes[h] * (kv_idx - q_idx), s + bias[b, h, q_idx, kv_idx] and "
        f"s + f(b, h, q_idx, kv_idx) up to {MAX_MATERIALISED} bias elements")


def _name(fn) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


# ---- binding a pattern to the call's shapes ---------------------------------------------------

class Plan(NamedTuple):
    """A pattern bound to one call's sizes, in literals (torch.compile keeps it as a constant):
    kind, scale factor, softcap's cap, the coefficient of the tensor, the captured tensor's name
    (or None), the view ops that turn it into the kernels' operand, and for "materialise" the
    indices the bias depends on."""
    kind: str
    scale: float
    cap: float
    coef: float
    tensor: Optional[str]
    view: tuple
    depends: tuple


def _plan(entry: _Entry, sizes: Tuple[int, int, int, int], device: torch.device) -> Optional[Plan]:
    p, tensors = entry.pattern, entry.graph.tensors
    if p is None or any(t.device != device for t in tensors.values() if t.dim() > 0):
        return None
    if p.kind == "alibi" and p.tensor is not None and tuple(tensors[p.tensor].shape) != (sizes[1],):
        return None
    view = ()
    if p.kind == "bias":
        t = tensors[p.tensor]
        if t.dtype not in SUPPORTED_DTYPES:  # float64: exact as a graph on CPU, a float32 bias elsewhere
            if device.type == "cpu":
                return None
            return Plan("materialise", p.scale, 0.0, 1.0, None, (), tuple(x for x in p.layout if isinstance(x, str)))
        view = _view_ops(tuple(t.shape), p.layout, sizes)
        if view is None:
            return None
    return Plan(p.kind, p.scale, p.cap, p.coef, p.tensor, view, p.depends)


def _build(plan: Plan, tensor: Optional[torch.Tensor], heads: int, device) -> CallableScoreMod:
    """The built-in ScoreMod of a plan (not "materialise"); `tensor` is the plan's captured tensor."""
    if plan.kind == "none":
        return CallableScoreMod(None, plan.scale)
    if plan.kind == "softcap":
        return CallableScoreMod(score_mods.softcap(plan.cap), plan.scale)
    if plan.kind == "alibi":
        if tensor is None:
            slopes = torch.full((heads,), plan.coef, dtype=torch.float32, device=device)
        else:
            slopes = tensor.to(torch.float32)
            slopes = slopes if plan.coef == 1 else slopes * plan.coef
        return CallableScoreMod(score_mods.alibi(slopes), plan.scale)
    view = _apply_view(tensor, plan.view)
    return CallableScoreMod(score_mods.bias(view if plan.coef == 1 else view * plan.coef), plan.scale)


def _bind(entry: _Entry, query, key) -> Optional[CallableScoreMod]:
    sizes = (query.shape[0], query.shape[1], query.shape[2], key.shape[2])
    plan = _plan(entry, sizes, query.device)
    if plan is None:
        return None
    if plan.kind == "materialise":
        bias = _materialise(entry, query, sizes, plan.depends)
        return None if bias is None else CallableScoreMod(score_mods.bias(bias), plan.scale)
    tensor = entry.graph.tensors[plan.tensor] if plan.tensor is not None else None
    return _build(plan, tensor, sizes[1], query.device)


_ORDER = ("b", "h", "q_idx", "kv_idx")


def _view_ops(shape, layout, sizes) -> Optional[tuple]:
    """The ops turning a tensor of `shape`, indexed by layout (per dimension "b", "h", "q_idx",
    "kv_idx" or an int), into the kernels' [B or 1, H or 1, Q, KV] view (a view: gradients and
    in-place updates reach the tensor); None when its sizes do not cover the call's."""
    ops, shape = [], list(shape)
    for dim in reversed(range(len(layout))):
        if isinstance(layout[dim], int):
            if not -shape[dim] <= layout[dim] < shape[dim]:
                return None
            ops.append(("select", dim, layout[dim]))
            del shape[dim]
    names = [x for x in layout if isinstance(x, str)]
    for name in _ORDER:
        if name not in names:
            ops.append(("unsqueeze", 0))
            names, shape = [name] + names, [1] + shape
    perm = tuple(names.index(n) for n in _ORDER)
    ops.append(("permute", perm))
    shape = [shape[i] for i in perm]
    for dim, (name, size) in enumerate(zip(_ORDER, sizes)):
        if shape[dim] == size or (shape[dim] == 1 and name not in layout):
            continue
        if shape[dim] < size:
            return None
        ops.append(("narrow", dim, 0, size))
    return tuple(ops)


def _apply_view(t: torch.Tensor, ops) -> torch.Tensor:
    for op, *args in ops:
        t = t.permute(args[0]) if op == "permute" else getattr(t, op)(*args)
    return t


def _materialise(entry: _Entry, query, sizes, depends) -> Optional[torch.Tensor]:
    """R = E(s = 0) on the [B|1, H|1, Q, KV] grid (E = c * s + R), float32; None when too large or
    not finite (an -inf bias leaves rows with no finite score, which the kernels treat as visible)."""
    shape = [size if name in depends or name in ("q_idx", "kv_idx") else 1
             for name, size in zip(("b", "h", "q_idx", "kv_idx"), sizes)]
    if shape[0] * shape[1] * shape[2] * shape[3] > MAX_MATERIALISED:
        return None
    tensors = entry.graph.tensors.values()
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    cache_key = (tuple(shape), query.device, _versions(tensors))
    if not needs_grad and entry.materialised is not None and entry.materialised[0] == cache_key:
        return entry.materialised[1]
    grids = [torch.arange(n, dtype=torch.int32, device=query.device).view([n if i == d else 1 for i in range(4)])
             for d, n in enumerate(shape)]
    zero = torch.zeros((), dtype=torch.float64, device=query.device)
    bias = evaluate(entry.graph, zero, *grids).expand(shape).to(torch.float32).contiguous()
    if not bool(torch.isfinite(bias.detach()).all()):
        return None
    if not needs_grad:
        entry.materialised = (cache_key, bias)
    return bias


# ---- fingerprints ------------------------------------------------------------------------------

_SCALARS = (bool, int, float, complex, str, bytes, type(None))


def _fingerprint(obj, depth: int = 0):
    """What a callable's trace depends on besides tensor values, cheaply comparable."""
    if isinstance(obj, _SCALARS):
        return (type(obj), obj)
    if isinstance(obj, torch.Tensor) or depth > 4:
        return ("id", id(obj))
    d = depth + 1
    if isinstance(obj, functools.partial):
        return ("partial", _fingerprint(obj.func, d), _fingerprint(obj.args, d), _fingerprint(obj.keywords, d))
    if isinstance(obj, types.MethodType):
        return ("method", _fingerprint(obj.__self__, d), _fingerprint(obj.__func__, d))
    if isinstance(obj, types.FunctionType):
        cells = []
        for cell in obj.__closure__ or ():
            try:
                cells.append(_fingerprint(cell.cell_contents, d))
            except ValueError:  # an empty cell
                cells.append(None)
        names = obj.__code__.co_names
        glob = tuple((n, _fingerprint(obj.__globals__[n], d)) for n in names if n in obj.__globals__)
        return ("function", id(obj), obj.__code__, tuple(cells), _fingerprint(obj.__defaults__, d),
                _fingerprint(obj.__kwdefaults__, d), glob)
    if isinstance(obj, (tuple, list)):
        return (type(obj),) + tuple(_fingerprint(x, d) for x in obj[:32])
    if isinstance(obj, dict):
        return ("dict",) + tuple((k, _fingerprint(v, d)) for k, v in list(obj.items())[:64])
    if isinstance(obj, torch.nn.Module):
        # Its own numbers and the identities of its tensors and submodules, not the submodules'
        # contents: a bound method of a whole model must stay cheap to fingerprint.
        own = tuple((k, _fingerprint(v, d)) for k, v in vars(obj).items() if isinstance(v, _SCALARS + (torch.Tensor,)))
        held = tuple((k, id(v)) for table in (obj._parameters, obj._buffers, obj._modules) for k, v in table.items())
        return ("module", id(obj), _fingerprint(type(obj).forward, d), own, held)
    return ("id", id(obj))
