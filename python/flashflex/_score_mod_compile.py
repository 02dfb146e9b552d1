"""Score_mod callables under torch.compile. Capture (make_fx) cannot run inside dynamo's trace, so
the resolution is split: a plan of literals (_score_mod_resolve.Plan) is computed once, at trace
time, by a function dynamo treats as a constant (torch.compiler.assume_constant_result), and the
built-in ScoreMod is built from it in traced code, the captured tensor reached through a registry
so that it is a graph input (live values, gradients). What a plan of literals cannot express
safely (a materialised bias, a graph that read a tensor's value, the CPU graph path) runs outside
the trace (a graph break, so fullgraph=True raises for it).

In-place updates of captured tensors are seen (the tensor is a graph input). Rebinding the name a
callable reads to another tensor is not (dynamo does not trace the callable, so it guards only on
the callable's identity): pass a new callable, or call torch._dynamo.reset()."""

from __future__ import annotations

from typing import Dict, Optional

import torch

from ._score_mod_resolve import CallableScoreMod, Plan, _build, _entry, _plan, resolve_callable

__all__ = ["resolve_score_mod"]

# Captured tensors that compiled graphs read, by id (a compiled graph's guards refer to the entry);
# kept for the process's life, one per captured tensor of a compiled recognised mod.
_LIVE: Dict[int, torch.Tensor] = {}
_ERRORS = {"TypeError": TypeError, "ValueError": ValueError}


def resolve_score_mod(fn, query: torch.Tensor, key: torch.Tensor) -> CallableScoreMod:
    """flex_attention's entry point for a callable score_mod, eager or compiled."""
    if not torch.compiler.is_compiling():
        return resolve_callable(fn, query, key)
    sizes = (query.shape[0], query.shape[1], query.shape[2], key.shape[2])
    plan = _trace_time_plan(fn, sizes, str(query.device))
    if plan is None:
        return _resolve_outside_trace(fn, query, key)
    if plan[0] == "error":  # raised here: dynamo would wrap an error raised in the constant function
        raise _ERRORS[plan[1]](plan[2])
    *fields, slot = plan
    return _build(Plan(*fields), _LIVE[slot] if slot is not None else None, sizes[1], query.device)


@torch.compiler.assume_constant_result
def _trace_time_plan(fn, sizes, device: str) -> Optional[tuple]:
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
    slot = None
    if plan.tensor is not None:
        t = entry.graph.tensors[plan.tensor]
        slot = id(t)
        _LIVE[slot] = t
    return tuple(plan) + (slot,)


_resolve_outside_trace = torch._dynamo.disable(resolve_callable)
