"""Score_mod callables under torch.compile. Capture (make_fx) cannot run inside dynamo's trace, so
the resolution is split: a plan of literals (_score_mod_resolve.Plan) is computed once, at trace
time, by a function dynamo treats as a constant (torch.compiler.assume_constant_result), and the
built-in ScoreMod is built from it in traced code, the captured tensor reached along the path the
callable holds it by (closure cell, global, module or object attribute, partial argument), so that it is a
graph input (live values, gradients) and dynamo guards on that path. What a plan of literals cannot express
safely (a materialised bias, a graph that read a tensor's value, the CPU graph path) runs outside
the trace (a graph break, so fullgraph=True raises for it).

In-place updates of captured tensors are seen (the tensor is a graph input), and rebinding what
holds it recompiles (a guard on the path). A tensor found on no path is reached through a registry:
rebinding its holder is then not seen until torch._dynamo.reset() (dynamo does not trace the
callable itself)."""

from __future__ import annotations

import ctypes
import functools
import types
from typing import Dict, Optional

import torch

from ._score_mod_resolve import CallableScoreMod, Plan, _build, _entry, _plan, resolve_callable

__all__ = ["resolve_score_mod"]

# Captured tensors that compiled graphs read, by id (a compiled graph's guards refer to the entry);
# kept for the process's life, one per captured tensor of a compiled recognised mod.
_LIVE: Dict[int, torch.Tensor] = {}
_ERRORS = {"TypeError": TypeError, "ValueError": ValueError}


def resolve_score_mod(fn, query: torch.Tensor, key: torch.Tensor, backend: int = 0) -> CallableScoreMod:
    """flex_attention's entry point for a callable score_mod, eager or compiled; `backend` (a
    _C.BACKENDS code) picks the kernels a linked mod is linked from."""
    if not torch.compiler.is_compiling():
        return resolve_callable(fn, query, key, backend)
    if isinstance(fn, functools.partial):
        # A partial holding tensors is no constant for dynamo: its plan is made outside the graph.
        return _resolve_outside_trace(fn, query, key, backend)
    sizes = (query.shape[0], query.shape[1], query.shape[2], key.shape[2])
    if isinstance(fn, types.MethodType):  # its object by id, as below; its function is a constant
        plan = _trace_time_plan_of_method(fn.__func__, id(fn.__self__), sizes, str(query.device))
    elif isinstance(fn, types.FunctionType):
        plan = _trace_time_plan(fn, sizes, str(query.device))
    else:
        # An object (an nn.Module, a class with __call__): newer dynamo hands it to a constant
        # function as it is, torch 2.11's raises; its id is a constant to every release (and
        # guarded on).
        plan = _trace_time_plan_of_object(id(fn), sizes, str(query.device))
    if plan is None:
        return _resolve_outside_trace(fn, query, key, backend)
    if plan[0] == "error":  # raised here: dynamo would wrap an error raised in the constant function
        raise _ERRORS[plan[1]](plan[2])
    *fields, path, slot = plan
    tensor = None
    if path is not None:
        tensor = _follow(fn, path)
    elif slot is not None:
        tensor = _LIVE[slot]
    return _build(Plan(*fields), tensor, sizes[1], query.device)


@torch.compiler.assume_constant_result
def _trace_time_plan(fn, sizes, device: str) -> Optional[tuple]:
    return _plan_at_trace_time(fn, sizes, device)


@torch.compiler.assume_constant_result
def _trace_time_plan_of_object(obj_id: int, sizes, device: str) -> Optional[tuple]:
    # The object is alive: the frame being traced holds it.
    return _plan_at_trace_time(ctypes.cast(obj_id, ctypes.py_object).value, sizes, device)


@torch.compiler.assume_constant_result
def _trace_time_plan_of_method(func, self_id: int, sizes, device: str) -> Optional[tuple]:
    method = types.MethodType(func, ctypes.cast(self_id, ctypes.py_object).value)
    return _plan_at_trace_time(method, sizes, device)


def _plan_at_trace_time(fn, sizes, device: str) -> Optional[tuple]:
    from torch._subclasses.fake_tensor import unset_fake_temporarily
    # dynamo's fake mode and tracing context are active here; the capture brings its own
    try:
        with unset_fake_temporarily(), torch._guards.tracing(None):
            entry = _entry(fn)
    except (TypeError, ValueError) as e:
        return ("error", type(e).__name__, str(e))
    plan = _plan(entry, tuple(int(s) for s in sizes), torch.device(device))
    if plan is None or plan.kind == "materialise" or entry.watched:
        return None
    path = slot = None
    if plan.tensor is not None:
        t = entry.graph.tensors[plan.tensor]
        path = _path_to(fn, t)
        if path is None:
            slot = id(t)
            _LIVE[slot] = t
    return tuple(plan) + (path, slot)


# ---- where a callable holds a tensor ---------------------------------------------------------

def _children(obj):
    """(step, child) pairs of what a callable's trace can read."""
    if isinstance(obj, types.FunctionType):
        for i, cell in enumerate(obj.__closure__ or ()):
            try:
                yield ("closure", i), cell.cell_contents
            except ValueError:  # an empty cell
                pass
        for name in obj.__code__.co_names:
            if name in obj.__globals__:
                yield ("global", name), obj.__globals__[name]
        for i, value in enumerate(obj.__defaults__ or ()):
            yield ("default", i), value
    elif isinstance(obj, functools.partial):
        yield ("func",), obj.func
        for i, value in enumerate(obj.args):
            yield ("arg", i), value
        for name, value in obj.keywords.items():
            yield ("keyword", name), value
    elif isinstance(obj, types.MethodType):
        yield ("self",), obj.__self__
        yield ("method",), obj.__func__
    elif isinstance(obj, torch.nn.Module):
        for name, value in list(obj._parameters.items()) + list(obj._buffers.items()) + list(obj._modules.items()):
            yield ("attr", name), value
        for name, value in vars(obj).items():
            if not name.startswith("_"):
                yield ("attr", name), value
    elif isinstance(obj, (tuple, list)):
        for i, value in enumerate(obj[:32]):
            yield ("item", i), value
    elif hasattr(obj, "__dict__") and not callable(getattr(obj, "__get__", None)):
        # any other object (a method's self, a class with __call__): its instance attributes
        for name, value in list(vars(obj).items())[:64]:
            if not name.startswith("_"):
                yield ("attr", name), value


def _path_to(fn, tensor, depth: int = 4) -> Optional[tuple]:
    """The steps from fn to `tensor` (breadth first, a few levels deep), or None."""
    frontier, seen = [((), fn)], {id(fn)}
    for _ in range(depth):
        next_frontier = []
        for path, obj in frontier:
            for step, child in _children(obj):
                if child is tensor:
                    return path + (step,)
                if id(child) not in seen and not isinstance(child, (torch.Tensor, types.ModuleType, type)):
                    seen.add(id(child))
                    next_frontier.append((path + (step,), child))
        frontier = next_frontier
    return None


def _follow(obj, path):
    """Walks a _path_to path in code dynamo traces (each step becomes a guarded source)."""
    for step in path:
        kind = step[0]
        if kind == "closure":
            obj = obj.__closure__[step[1]].cell_contents
        elif kind == "global":
            obj = obj.__globals__[step[1]]
        elif kind == "default":
            obj = obj.__defaults__[step[1]]
        elif kind == "func":
            obj = obj.func
        elif kind == "arg":
            obj = obj.args[step[1]]
        elif kind == "keyword":
            obj = obj.keywords[step[1]]
        elif kind == "self":
            obj = obj.__self__
        elif kind == "method":
            obj = obj.__func__
        elif kind == "attr":
            obj = getattr(obj, step[1])
        else:
            obj = obj[step[1]]
    return obj


_resolve_outside_trace = torch._dynamo.disable(resolve_callable)
