"""Recognition of a captured score_mod graph (_score_mod_graph.py) as one of the kernels' built-in
mods (score_mods.py; the closed set of src/cuda/common/score_mod.cuh), so that it runs on the
ahead-of-time kernels with nothing compiled.

The graph becomes a sum of products (coefficient x factors, constants folded, products expanded)
in the score s and the indices. With c a constant and R any expression free of s:
    c * s                         -> no mod, softmax scale * c        (c > 0 here and below)
    A * tanh(B * s)               -> softcap(|A|), scale * A * B      (c * tanh(s / c) and spellings)
    c * s + a * t[h] * (kv - q)   -> alibi(a * t), scale * c          (also (q - kv), a constant slope)
    c * s + a * t[b, h, q, kv]    -> bias(a * t) over a view of t     (any order, b / h or ints, or absent)
    c * s + R                     -> bias(R evaluated on the [B|1, H|1, Q, KV] grid), when small enough
Folding c into the softmax scale is exact up to rounding: every built-in mod sees (scale * c) * q.k. The
materialised bias (relative position tables t[q - kv], learnable ALiBi slopes, sums of terms) is
R itself, rounded once to float32 (the kernels add biases in float32), and carries R's gradient to
the captured tensors through the kernels' dbias."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from ._score_mod_graph import INPUT_NAMES, ScoreModGraph

__all__ = ["Pattern", "recognise", "MAX_MATERIALISED"]

_aten = torch.ops.aten
# Most elements of a materialised bias: 2^25 float32 (128 MiB), a few percent of the attention's own
# traffic at the sizes where it would be reached.
MAX_MATERIALISED = 1 << 25
_MAX_TERMS = 64  # expansion of products of sums stops here (the expression stays opaque)
_TRANSPARENT = {_aten.lift_fresh_copy.default, _aten.alias.default, _aten.clone.default, _aten.detach.default}


@dataclass(frozen=True)
class Pattern:
    """A graph's built-in form. kind: "none", "softcap", "alibi", "bias" (a view of a captured
    tensor) or "materialise" (R evaluated). scale: the factor folded into the softmax scale.
    cap: softcap's c. tensor: the get_attr name of slopes / bias. coef: its multiplier.
    layout: for "bias", t's index per dimension ("b", "h", "q_idx", "kv_idx" or an int).
    depends: for "materialise", the indices R depends on.
    reads: captured tensors whose values were folded into the numbers above."""
    kind: str
    scale: float = 1.0
    cap: float = 0.0
    tensor: Optional[str] = None
    coef: float = 1.0
    layout: Tuple = ()
    depends: Tuple[str, ...] = ()
    reads: Tuple[str, ...] = ()


# ---- the graph as expressions ---------------------------------------------------------------
# ("in", name) | ("const", number) | ("tensor", name) | ("add", a, b) | ("mul", a, b) | ("div", a, b)
# | ("tanh", a) | ("index", base, (indices...)) | ("op", name, args...): hashable, compared by value.

def _expressions(graph: ScoreModGraph):
    """The output as an expression; 0-d values computed from captured tensors that need no grad
    (torch.tensor(30.), cap.abs() + 5) are folded into numbers."""
    names = iter(INPUT_NAMES)
    env: Dict[torch.fx.Node, tuple] = {}
    real: Dict[torch.fx.Node, torch.Tensor] = {}  # values of constant nodes
    roots: Dict[torch.fx.Node, frozenset] = {}    # the captured tensors each constant is computed from
    reads = set()                                 # those whose values a folded number depends on
    out = None

    def arg(a):
        if isinstance(a, torch.fx.Node):
            return env[a]
        if isinstance(a, (bool, int, float)):
            return ("const", a)
        if isinstance(a, (list, tuple)):
            return ("list",) + tuple(arg(x) for x in a)
        return ("lit", repr(a))

    def number(node, t):
        if t.dim() == 0 and not t.requires_grad:
            reads.update(roots[node])
            return ("const", t.item())
        return None

    for node in graph.gm.graph.nodes:
        if node.op == "placeholder":
            env[node] = ("in", next(names))
        elif node.op == "get_attr":
            t = graph.tensors[node.target]
            real[node], roots[node] = t, frozenset([node.target])
            literal = all(u.target is _aten.lift_fresh_copy.default for u in node.users)
            env[node] = (None if literal else number(node, t)) or ("tensor", node.target)
        elif node.op == "call_function":
            if all(a in real for a in node.all_input_nodes) and node.target is not _aten.index.Tensor:
                value = node.target(*_real_args(node.args, real), **_real_args(node.kwargs, real))
                if isinstance(value, torch.Tensor):
                    real[node] = value
                    # lift_fresh_copy marks a literal of the callable (torch.tensor(2.)), made afresh
                    # by every trace: no captured tensor whose updates matter.
                    roots[node] = frozenset() if node.target is _aten.lift_fresh_copy.default else \
                        frozenset().union(*(roots[a] for a in node.all_input_nodes))
                    folded = number(node, value)
                    if folded is not None:
                        env[node] = folded
                        continue
            env[node] = _expression(node, arg)
        elif node.op == "output":
            result = node.args[0]
            out = env[result[0] if isinstance(result, (tuple, list)) else result]
    return out, tuple(sorted(reads))


def _real_args(args, real):
    return torch.fx.node.map_arg(args, lambda n: real[n])


def _expression(node: torch.fx.Node, arg) -> tuple:
    op, args, kwargs = node.target, [arg(a) for a in node.args], node.kwargs
    if op in _TRANSPARENT:
        return args[0]
    if op is _aten._to_copy.default and set(kwargs) <= {"dtype"} and kwargs.get("dtype") in (torch.float32,
                                                                                         torch.float64):
        return args[0]  # to float32 / float64: the value is kept (the kernels compute in float32)
    if op is _aten.scalar_tensor.default:
        return args[0]
    if op in (_aten.add.Tensor, _aten.add.Scalar, _aten.sub.Tensor, _aten.sub.Scalar):
        alpha = kwargs.get("alpha", 1)
        if op in (_aten.sub.Tensor, _aten.sub.Scalar):
            alpha = -alpha
        other = args[1] if alpha == 1 else ("mul", ("const", alpha), args[1])
        return ("add", args[0], other)
    if op in (_aten.mul.Tensor, _aten.mul.Scalar):
        return ("mul", args[0], args[1])
    if op in (_aten.div.Tensor, _aten.div.Scalar) and kwargs.get("rounding_mode") is None:
        return ("div", args[0], args[1])
    if op is _aten.neg.default:
        return ("mul", ("const", -1), args[0])
    if op is _aten.tanh.default:
        return ("tanh", args[0])
    if op is _aten.index.Tensor:
        return ("index", args[0], args[1][1:])
    return ("op", str(op)) + tuple(args) + tuple((k, arg(v)) for k, v in sorted(kwargs.items()))


# ---- sums of products ------------------------------------------------------------------------

def _terms(e) -> Dict[tuple, float]:
    """e as {factors (sorted tuple of expressions): coefficient}; () holds the constant term."""
    kind = e[0]
    if kind == "const" and isinstance(e[1], (int, float)) and not isinstance(e[1], bool):
        return {(): float(e[1])} if e[1] != 0 else {}
    if kind == "add":
        out = dict(_terms(e[1]))
        for f, c in _terms(e[2]).items():
            out[f] = out.get(f, 0.0) + c
        return {f: c for f, c in out.items() if c != 0}
    if kind == "mul":
        a, b = _terms(e[1]), _terms(e[2])
        if len(a) * len(b) <= _MAX_TERMS:
            out: Dict[tuple, float] = {}
            for fa, ca in a.items():
                for fb, cb in b.items():
                    f = tuple(sorted(fa + fb, key=repr))
                    out[f] = out.get(f, 0.0) + ca * cb
            return {f: c for f, c in out.items() if c != 0}
    if kind == "div":
        d = _terms(e[2])
        if list(d) == [()]:
            return {f: c / d[()] for f, c in _terms(e[1]).items()}
    return {(e,): 1.0}


def _uses(e, name: str) -> bool:
    if e == ("in", name):
        return True
    return isinstance(e, tuple) and any(isinstance(x, tuple) and _uses(x, name) for x in e)


def _free_of_score(terms: Dict[tuple, float]) -> bool:
    return not any(_uses(f, "score") for factors in terms for f in factors)


def recognise(graph: ScoreModGraph) -> Optional[Pattern]:
    """The graph's built-in form, or None. Shapes are checked later (Pattern binding); `reads`
    names the captured tensors whose values the form depends on (folded numbers)."""
    expr, reads = _expressions(graph)
    pattern = _match(_terms(expr), graph)
    return None if pattern is None else dataclasses.replace(pattern, reads=reads)


def _match(terms, graph: ScoreModGraph) -> Optional[Pattern]:
    score = ("in", "score")
    scaled = terms.pop((score,), None)
    if scaled is None:
        return _softcap(terms)
    # A factor > 0 only: kernels may take the row maximum before scaling (a negative factor
    # would turn it into the minimum).
    if not _free_of_score(terms) or not (math.isfinite(scaled) and scaled > 0):
        return None
    if not terms:
        return Pattern("none", scale=scaled)
    return _alibi(terms, graph, scaled) or _bias(terms, graph, scaled) or Pattern(
        "materialise", scale=scaled, depends=tuple(n for n in ("b", "h", "q_idx", "kv_idx")
                                                   if any(_uses(f, n) for fs in terms for f in fs)))


def _softcap(terms) -> Optional[Pattern]:
    if len(terms) != 1:
        return None
    (factors, outer), = terms.items()
    if len(factors) != 1 or factors[0][0] != "tanh":
        return None
    inner = _terms(factors[0][1])
    if list(inner) != [(("in", "score"),)]:
        return None
    product = outer * inner[(("in", "score"),)]
    if not (math.isfinite(product) and product > 0):
        return None
    return Pattern("softcap", scale=product, cap=abs(outer))


def _slope_of(factors, index: str):
    """(slopes tensor name or None, True) if factors are [t[h]] * index or [index]."""
    rest = [f for f in factors if f != ("in", index)]
    if len(rest) != len(factors) - 1:
        return None
    if not rest:
        return (None,)
    if len(rest) == 1 and rest[0][0] == "index" and rest[0][1][0] == "tensor" and rest[0][2] == (("in", "h"),):
        return (rest[0][1][1],)
    return None


def _alibi(terms, graph: ScoreModGraph, scaled: float) -> Optional[Pattern]:
    if len(terms) != 2:
        return None
    (fa, ca), (fb, cb) = terms.items()
    for (f_kv, c_kv), (f_q, c_q) in (((fa, ca), (fb, cb)), ((fb, cb), (fa, ca))):
        kv, q = _slope_of(f_kv, "kv_idx"), _slope_of(f_q, "q_idx")
        if kv is not None and q is not None and kv == q and c_kv == -c_q:
            name = kv[0]
            if name is not None and (graph.tensors[name].dim() != 1 or graph.tensors[name].requires_grad):
                return None  # a learnable slope: materialised, so that its gradient flows
            return Pattern("alibi", scale=scaled, tensor=name, coef=c_kv)
    return None


_INDEX_NAMES = {("in", n): n for n in ("b", "h", "q_idx", "kv_idx")}


def _bias(terms, graph: ScoreModGraph, scaled: float) -> Optional[Pattern]:
    if len(terms) != 1:
        return None
    (factors, coef), = terms.items()
    if len(factors) != 1 or factors[0][0] != "index" or factors[0][1][0] != "tensor":
        return None
    _, (_, name), indices = factors[0]
    t = graph.tensors[name]
    if len(indices) != t.dim():
        return None
    layout = []
    for i in indices:
        if i in _INDEX_NAMES:
            layout.append(_INDEX_NAMES[i])
        elif i[0] == "const" and isinstance(i[1], int) and not isinstance(i[1], bool):
            layout.append(i[1])
        else:
            return None
    named = [x for x in layout if isinstance(x, str)]
    if len(set(named)) != len(named) or "q_idx" not in named or "kv_idx" not in named:
        return None
    return Pattern("bias", scale=scaled, tensor=name, coef=coef, layout=tuple(layout))
