"""Capture of a torch-flex score_mod callable, (score, b, h, q_idx, kv_idx) -> score, into a graph
of pointwise aten operations, and the exact float64 evaluation of that graph.

The callable is traced as torch flex traces it: make_fx on 0-d tensors (score float32, the four
indices int32), fake tensors so that no value is ever read, and `tensor[idx]` with tensor indices
turned into aten.index (as torch's TransformGetItemToIndex does) instead of a data-dependent
select. Tensors the callable captures (closures, module parameters, partial arguments) become the
graph's get_attr constants, kept as the very objects the callable holds: whether they require grad
and their in-place versions stay observable.

Every value computed from the five inputs must stay a 0-d tensor made by a pointwise operation or
by a gather (aten.index) from a captured tensor: then evaluating the graph once on broadcast index
grids [B,1,1,1], [1,H,1,1], ... equals evaluating it element by element (torch flex's vmap).
Values computed from captured tensors alone may use any deterministic operation."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import torch
import torch.utils._pytree as pytree
from torch._subclasses.fake_tensor import FakeTensor
from torch.overrides import TorchFunctionMode

__all__ = ["ScoreModGraph", "capture", "evaluate", "INPUT_NAMES"]

INPUT_NAMES = ("score", "b", "h", "q_idx", "kv_idx")
_aten = torch.ops.aten
# Operations a varying (input-dependent) value may go through besides torch's pointwise-tagged ones.
_EXTRA_ELEMENTWISE = {_aten.floor_divide.default, _aten._to_copy.default, _aten.alias.default,
                      _aten.detach.default, _aten.clone.default, _aten.scalar_tensor.default,
                      _aten.lift_fresh_copy.default, _aten.full_like.default, _aten.zeros_like.default,
                      _aten.ones_like.default}


@dataclass
class ScoreModGraph:
    """gm: the fx GraphModule (placeholders in INPUT_NAMES order, one 0-d output).
    tensors: the captured tensors by get_attr name (the callable's own objects).
    depends: the inputs (names from INPUT_NAMES) the output depends on.
    ops: the names of the operations on varying values, in graph order (for messages).
    folded: captured tensors whose values were read while tracing (baked in as constants): the
    graph is stale once one of them is updated in place."""
    gm: torch.fx.GraphModule
    tensors: Dict[str, torch.Tensor]
    depends: Tuple[str, ...]
    ops: Tuple[str, ...]
    folded: Tuple[torch.Tensor, ...] = ()

    @property
    def requires_grad(self) -> Dict[str, bool]:
        return {name: t.requires_grad for name, t in self.tensors.items()}


_VALUE_READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__float__,
                torch.Tensor.__int__, torch.Tensor.__index__, torch.Tensor.numpy}


class _TraceMode(TorchFunctionMode):
    """t[i, j] with tensor or int indices -> aten.index(t, [i, j]): a 0-d index tensor would
    otherwise be read as a Python int (a data-dependent select). Also notes whether the callable
    read a tensor's value into Python (w[0].item(): computed from captured tensors only, so it
    succeeds, and the number is baked into the graph), with the real tensors it touched."""

    def __init__(self, examples):
        super().__init__()
        self.examples = {id(x) for x in examples}
        self.touched = {}
        self.reads_value = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.__getitem__:
            base, indices = args[0], pytree.tree_leaves(args[1])
            if indices and all(isinstance(i, (torch.Tensor, int)) and not isinstance(i, bool) for i in indices):
                indices = [torch.tensor(i, dtype=torch.int64, device=base.device) if isinstance(i, int) else i
                           for i in indices]
                args, func = (base, indices), _aten.index.Tensor
        self.reads_value |= func in _VALUE_READS
        for x in pytree.tree_leaves((args, kwargs)):
            if isinstance(x, torch.Tensor) and not isinstance(x, FakeTensor) and id(x) not in self.examples \
                    and x.device.type != "meta":
                self.touched[id(x)] = x
        return func(*args, **(kwargs or {}))


def _describe_callable(fn) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


def _check_arity(fn) -> None:
    target = fn.forward if isinstance(fn, torch.nn.Module) else fn
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return  # builtins without a signature: the trace itself will tell
    try:
        signature.bind(*INPUT_NAMES)
    except TypeError:
        raise TypeError(f"score_mod: expected a callable (score, b, h, q_idx, kv_idx) -> score taking 5 positional "
                        f"arguments, got {_describe_callable(fn)}{signature}") from None


def capture(fn: Callable) -> ScoreModGraph:
    """Traces `fn` into a ScoreModGraph; TypeError / ValueError name what cannot be captured."""
    if not callable(fn):
        raise TypeError(f"score_mod: expected a callable (score, b, h, q_idx, kv_idx) -> score, got "
                        f"{type(fn).__name__}")
    _check_arity(fn)
    from torch.fx.experimental.proxy_tensor import make_fx
    examples = [torch.zeros((), dtype=torch.float32)] + [torch.zeros((), dtype=torch.int32) for _ in range(4)]

    def traced(score, b, h, q_idx, kv_idx):
        return fn(score, b, h, q_idx, kv_idx)

    mode = _TraceMode(examples)
    try:
        with mode:
            gm = make_fx(traced, tracing_mode="fake", _allow_non_fake_inputs=True)(*examples)
    except (TypeError, ValueError, NotImplementedError) as e:
        if str(e).startswith("score_mod:"):
            raise
        # An error of the callable itself (a class, a wrong signature the trace reveals): name the argument.
        raise type(e)(f"score_mod: calling {_describe_callable(fn)}(score, b, h, q_idx, kv_idx) raised "
                      f"{type(e).__name__}: {e}") from None
    except Exception as e:  # data-dependent guards come as several exception types
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "data-dependent" in str(e) or "data dependent" in str(e) or "_local_scalar_dense" in str(e):
            raise ValueError(f"score_mod: {_describe_callable(fn)} uses the value of a tensor in Python (data-dependent "
                             f"control flow such as `if score > 0`, or bool() / int() / .item()); express it with "
                             f"torch.where instead ({text})") from None
        raise ValueError(f"score_mod: could not trace {_describe_callable(fn)}: {type(e).__name__}: {text}") from None
    folded = tuple(mode.touched.values()) if mode.reads_value else ()
    learnable = [t for t in folded if t.requires_grad]
    if learnable:
        raise TypeError(f"score_mod: {_describe_callable(fn)} reads the value of a tensor into Python (.item(), "
                        f"float(), int() or bool()) while it captures a tensor that requires grad (shape "
                        f"{tuple(learnable[0].shape)}): that gradient would be lost; keep the computation in torch "
                        f"operations")
    return _checked_graph(gm, fn, folded)


def _op_name(node: torch.fx.Node) -> str:
    target = node.target
    return str(getattr(target, "__name__", target)) if not isinstance(target, torch._ops.OpOverload) else str(target)


def _checked_graph(gm: torch.fx.GraphModule, fn, folded: Tuple[torch.Tensor, ...]) -> ScoreModGraph:
    _merge_chained_indexing(gm)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    varying: Dict[torch.fx.Node, set] = {p: {name} for p, name in zip(placeholders, INPUT_NAMES)}
    tensors: Dict[str, torch.Tensor] = {}
    ops: List[str] = []
    where = _describe_callable(fn)
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            tensors[node.target] = getattr(gm, node.target)
        elif node.op == "call_function":
            deps = set().union(*(varying.get(a, set()) for a in node.all_input_nodes))
            if not isinstance(node.target, torch._ops.OpOverload):
                raise TypeError(f"score_mod: {where} calls {_op_name(node)}, which is not a torch operation")
            if node.target._schema.is_mutable:
                raise TypeError(f"score_mod: {where} uses the in-place operation {node.target}; use its out-of-place "
                                f"form")
            if torch.Tag.nondeterministic_seeded in node.target.tags:
                raise TypeError(f"score_mod: {where} uses the random operation {node.target}")
            if not deps:
                continue  # computed from captured tensors and constants alone: any operation will do
            _check_elementwise(node, varying, where)
            varying[node] = deps
            ops.append(str(node.target))
        elif node.op == "output":
            result = node.args[0]
            if isinstance(result, (tuple, list)):
                if len(result) != 1:
                    raise TypeError(f"score_mod: expected {where} to return one tensor, got {len(result)} values")
                result = result[0]
            value = result.meta.get("val") if isinstance(result, torch.fx.Node) else None
            if not isinstance(value, torch.Tensor) or value.dim() != 0:
                raise TypeError(f"score_mod: expected {where} to return one score (a 0-d tensor per element), got "
                                f"{_describe_value(value if value is not None else result)}")
            if not value.dtype.is_floating_point:
                raise TypeError(f"score_mod: expected {where} to return a floating-point score, got {value.dtype}")
            depends = tuple(n for n in INPUT_NAMES if n in varying.get(result, set()))
    return ScoreModGraph(gm, tensors, depends, tuple(ops), folded)


def _check_elementwise(node: torch.fx.Node, varying: Dict[torch.fx.Node, set], where: str) -> None:
    op = node.target
    value = node.meta.get("val")
    if op is _aten._local_scalar_dense.default:
        raise ValueError(f"score_mod: {where} reads the value of the score or an index into Python (.item(), "
                         f"float(), int()); express it with torch operations")
    if op is _aten.index.Tensor:
        if node.args[0] in varying:
            raise TypeError(f"score_mod: {where} indexes a value computed from the score or the indices; only "
                            f"captured tensors may be indexed")
    elif torch.Tag.pointwise not in op.tags and op not in _EXTRA_ELEMENTWISE:
        raise TypeError(f"score_mod: {where} applies {op} to the score or an index; a score_mod may only use "
                        f"elementwise (pointwise) operations and gathers tensor[index] from captured tensors")
    if not isinstance(value, torch.Tensor) or value.dim() != 0:
        raise TypeError(f"score_mod: {where}: {op} gives {_describe_value(value)} per element; every value computed "
                        f"from the score or the indices must be a scalar (index every dimension of a captured tensor)")


def _merge_chained_indexing(gm: torch.fx.GraphModule) -> None:
    """t[b][h][q] -> t[b, h, q] (equal for 0-d indices), so that no gather reads a varying base."""
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target is not _aten.index.Tensor:
            continue
        base, outer = node.args[0], node.args[1]
        if not (isinstance(base, torch.fx.Node) and base.op == "call_function" and base.target is _aten.index.Tensor
                and len(base.users) == 1):
            continue
        inner = base.args[1]
        if all(isinstance(i, torch.fx.Node) and getattr(i.meta.get("val"), "dim", lambda: -1)() == 0 for i in inner):
            node.args = (base.args[0], list(inner) + list(outer))
    gm.graph.eliminate_dead_code()
    gm.recompile()


def _describe_value(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return type(value).__name__


class _Float64Interpreter(torch.fx.Interpreter):
    """Runs the graph with every floating value in float64: captured tensors are converted
    (differentiably, so their gradients reach the originals), float dtypes of conversions and
    constants become float64, and integer operands of an operation with a floating result are
    converted first (int32 indices are exact in float64, where float32 would round)."""

    def __init__(self, gm: torch.fx.GraphModule, tensors: Dict[str, torch.Tensor]):
        super().__init__(gm)
        self.tensors = tensors
        self.node = None

    def run_node(self, n):
        self.node = n
        return super().run_node(n)

    def get_attr(self, target, args, kwargs):
        t = self.tensors[target]
        return t.to(torch.float64) if t.is_floating_point() else t

    def call_function(self, target, args, kwargs):
        kwargs = {k: torch.float64 if isinstance(v, torch.dtype) and v.is_floating_point else v
                  for k, v in kwargs.items()}
        value = self.node.meta.get("val")
        if (isinstance(target, torch._ops.OpOverload) and torch.Tag.pointwise in target.tags
                and isinstance(value, torch.Tensor) and value.dtype.is_floating_point):
            args = tuple(a.to(torch.float64) if isinstance(a, torch.Tensor) and not a.is_floating_point()
                         and a.dtype != torch.bool else a for a in args)
        return target(*args, **kwargs)


def evaluate(graph: ScoreModGraph, score: torch.Tensor, b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor,
             kv_idx: torch.Tensor) -> torch.Tensor:
    """The graph over broadcast inputs (score float64 [B, H, Q, KV] or broadcastable, indices int
    grids [B,1,1,1], [1,H,1,1], [1,1,Q,1], [1,1,1,KV]), in float64, differentiable in the score
    and in the captured tensors; the result broadcasts to the inputs' shape."""
    out = _Float64Interpreter(graph.gm, graph.tensors).run(score, b, h, q_idx, kv_idx)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.to(torch.float64)
