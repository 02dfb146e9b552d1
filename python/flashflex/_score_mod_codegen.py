"""A captured score_mod graph (_score_mod_graph.ScoreModGraph) as C++ source for a kernel's
score-mod hook: one function that gives the modified score, its derivative with respect to the
score, and, for every gather from a captured floating tensor, the partial derivative with respect
to the gathered element and that element's offset (what a kernel needs to accumulate the
gradients of learnable tensors). The derivatives are carried forward: every floating value holds
its derivative with respect to the score and to each gathered element.

Values computed from captured tensors and constants alone (no score, no index) are not compiled:
`Generated.inputs` evaluates them in torch (differentiably) and the function reads them as
captured tensors, like the graph's own. Arithmetic is float32 (the kernels' and torch flex's);
integers are int64; a gather whose index is out of range, or an integer division by zero, makes
the result NaN (no fault, nothing silent).

The source is plain C++ with FLASHFLEX_MOD_FN before each function (define it as __device__ for
NVRTC; empty for a host compiler): expf, tanhf, ... exist in both.
tests/python/test_score_mod_codegen.py compiles it with the host's compiler and checks it against
the float64 graph and torch autograd; _score_mod_link.py compiles it with NVRTC and links it by
name (FLASHFLEX_MOD_LINKAGE extern "C") into a caller's LTO-IR: the sm90 kernels'
(_score_mod_linked.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

from ._score_mod_graph import INPUT_NAMES, ScoreModGraph

__all__ = ["Generated", "generate", "tensor_descriptor", "FUNCTION_NAME", "MAX_DIMS", "MAX_GATHERS", "PRELUDE"]

FUNCTION_NAME = "flashflex_score_mod"
MAX_DIMS = 8  # dims of a captured tensor the function can index (kHookTensorDims, flashflex/mods.hpp)
MAX_GATHERS = 8  # floating gathers one function may make: the kernels' d_gathered arrays (kMaxHookGathers)
_aten = torch.ops.aten

_PRELUDE = """#if defined(__CUDACC_RTC__)
// NVRTC: no C library headers; the device math functions are built in.
typedef signed char int8_t;
typedef short int16_t;
typedef int int32_t;
typedef long long int64_t;
typedef unsigned char uint8_t;
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
#else
#include <cstdint>
#include <cmath>
#endif
#ifndef FLASHFLEX_MOD_FN
#define FLASHFLEX_MOD_FN
#endif
#ifndef FLASHFLEX_MOD_LINKAGE  // extern "C" where the hook is linked into kernels by name
#define FLASHFLEX_MOD_LINKAGE
#endif
#if defined(__CUDA_ARCH__)
#define FLEXMOD_NAN __int_as_float(0x7fc00000)
#define FLEXMOD_INF __int_as_float(0x7f800000)
#define FLEXMOD_BITS_TO_FLOAT(u) __uint_as_float(u)
#else
#define FLEXMOD_NAN __builtin_nanf("")
#define FLEXMOD_INF __builtin_huge_valf()
inline float flexmod_bits_to_float_host(uint32_t u) {
  float value;
  __builtin_memcpy(&value, &u, sizeof value);
  return value;
}
#define FLEXMOD_BITS_TO_FLOAT(u) flexmod_bits_to_float_host(u)
#endif
// A captured tensor: data, element strides and sizes (up to MAX_DIMS dims), element type code
// (0 float32, 1 float64, 2 bfloat16, 3 float16, 4 int32, 5 int64, 6 bool / uint8, 7 int16, 8 int8).
struct FlexModTensor {
  const void* data;
  int64_t stride[%(dims)d];
  int64_t size[%(dims)d];
  int32_t dtype;
};
FLASHFLEX_MOD_FN float flexmod_half_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ffu;
  float magnitude;
  if (exponent == 0) magnitude = ldexpf(static_cast<float>(mantissa), -24);
  else if (exponent == 31) magnitude = mantissa ? FLEXMOD_NAN : FLEXMOD_INF;
  else magnitude = ldexpf(static_cast<float>(mantissa | 0x400u), static_cast<int>(exponent) - 25);
  return sign ? -magnitude : magnitude;
}
FLASHFLEX_MOD_FN float flexmod_load_float(const FlexModTensor& t, int64_t offset) {
  switch (t.dtype) {
    case 0: return static_cast<const float*>(t.data)[offset];
    case 1: return static_cast<float>(static_cast<const double*>(t.data)[offset]);
    case 2: return FLEXMOD_BITS_TO_FLOAT(static_cast<uint32_t>(static_cast<const uint16_t*>(t.data)[offset]) << 16);
    case 3: return flexmod_half_to_float(static_cast<const uint16_t*>(t.data)[offset]);
    case 4: return static_cast<float>(static_cast<const int32_t*>(t.data)[offset]);
    case 5: return static_cast<float>(static_cast<const int64_t*>(t.data)[offset]);
    case 6: return static_cast<float>(static_cast<const uint8_t*>(t.data)[offset]);
    case 7: return static_cast<float>(static_cast<const int16_t*>(t.data)[offset]);
    default: return static_cast<float>(static_cast<const int8_t*>(t.data)[offset]);
  }
}
FLASHFLEX_MOD_FN int64_t flexmod_load_int(const FlexModTensor& t, int64_t offset) {
  switch (t.dtype) {
    case 4: return static_cast<const int32_t*>(t.data)[offset];
    case 5: return static_cast<const int64_t*>(t.data)[offset];
    case 6: return static_cast<const uint8_t*>(t.data)[offset];
    case 7: return static_cast<const int16_t*>(t.data)[offset];
    case 8: return static_cast<const int8_t*>(t.data)[offset];
    default: return static_cast<int64_t>(flexmod_load_float(t, offset));
  }
}
// An index as torch takes it (negative: from the end); -1 when out of range.
FLASHFLEX_MOD_FN int64_t flexmod_wrap(int64_t i, int64_t size) {
  if (i < 0) i += size;
  return i >= 0 && i < size ? i : -1;
}
FLASHFLEX_MOD_FN int64_t flexmod_floordiv(int64_t a, int64_t b) {
  if (b == 0) return 0;  // the caller marks the result bad (NaN)
  const int64_t q = a / b;
  return (a %% b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}
FLASHFLEX_MOD_FN int64_t flexmod_truncdiv(int64_t a, int64_t b) { return b == 0 ? 0 : a / b; }
FLASHFLEX_MOD_FN int64_t flexmod_mod(int64_t a, int64_t b) {
  if (b == 0) return 0;
  const int64_t r = a %% b;
  return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}
FLASHFLEX_MOD_FN float flexmod_fmod(float a, float b) {
  const float r = fmodf(a, b);
  return (r != 0.f && ((r < 0.f) != (b < 0.f))) ? r + b : r;
}
// torch's floor division of floats (div_floor_floating): through fmod, so that 1 // 0.1 is 9.
FLASHFLEX_MOD_FN float flexmod_floordiv_float(float a, float b) {
  if (b == 0.f) return a / b;
  const float mod = fmodf(a, b);
  float div = (a - mod) / b;
  if (mod != 0.f && ((b < 0.f) != (mod < 0.f))) div -= 1.f;
  if (div == 0.f) return copysignf(0.f, a / b);
  float floordiv = floorf(div);
  if (div - floordiv > 0.5f) floordiv += 1.f;
  return floordiv;
}
"""

PRELUDE = _PRELUDE % {"dims": MAX_DIMS}  # FlexModTensor and the helpers every generated function uses

_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3, torch.int32: 4,
                torch.int64: 5, torch.bool: 6, torch.uint8: 6, torch.int16: 7, torch.int8: 8}


@dataclass
class Gather:
    """One read of a captured floating tensor whose gradient the kernel may accumulate."""
    tensor: int          # index into Generated.inputs(...)
    requires_grad: bool


@dataclass
class Generated:
    """function: the C++ text of FUNCTION_NAME (after PRELUDE; `source` is both). gathers: the
    function's floating gathers in the order of its d_gathered / gathered_offset outputs:

        float flashflex_score_mod(float score, int32_t b, int32_t h, int32_t q_idx, int32_t kv_idx,
                                  const FlexModTensor* tensors, float* d_score, float* d_gathered,
                                  int64_t* gathered_offset)
    """
    function: str
    gathers: List[Gather]
    _inputs: List[Tuple[str, object]] = field(repr=False, default_factory=list)  # ("attr", name) / ("node", node)
    _graph: Optional[ScoreModGraph] = field(repr=False, default=None)

    @property
    def source(self) -> str:
        return PRELUDE + self.function

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    def inputs(self) -> List[torch.Tensor]:
        """The tensors the function reads, in `tensors[]` order: captured ones as they are, values
        computed from them evaluated now (differentiably)."""
        cache: Dict[torch.fx.Node, object] = {}
        return [self._graph.tensors[what] if kind == "attr" else _evaluate_constant(what, self._graph, cache)
                for kind, what in self._inputs]


def _evaluate_constant(node, graph: ScoreModGraph, cache):
    if not isinstance(node, torch.fx.Node):
        return node
    if node in cache:
        return cache[node]
    if node.op == "get_attr":
        value = graph.tensors[node.target]
    else:
        args = torch.fx.node.map_arg(node.args, lambda n: _evaluate_constant(n, graph, cache))
        kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: _evaluate_constant(n, graph, cache))
        value = node.target(*args, **kwargs)
    cache[node] = value
    return value


def _literal(x, kind: str) -> str:
    if isinstance(x, bool):
        return ("true" if x else "false") if kind == "bool" else str(int(x))
    if isinstance(x, int):
        return f"static_cast<float>({x}LL)" if kind == "float" else f"{x}LL"
    if isinstance(x, float):
        if math.isnan(x):
            return "FLEXMOD_NAN"
        if math.isinf(x):
            return "FLEXMOD_INF" if x > 0 else "(-FLEXMOD_INF)"
        return f"static_cast<float>({x.hex()})"
    raise TypeError(f"score_mod: cannot express the constant {x!r} in generated code")


class _Value:
    """A generated local: its C name, kind ("float", "int", "bool") and, for floats, the names of
    its nonzero derivatives by component (0: the score, 1 + k: gather k)."""

    def __init__(self, name: str, kind: str, deriv: Optional[Dict[int, str]] = None):
        self.name, self.kind, self.deriv = name, kind, deriv or {}


_NARROW_INTS = {torch.int32: "int32_t", torch.int16: "int16_t", torch.int8: "int8_t", torch.uint8: "uint8_t"}


def _kind_of(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    return "float" if dtype.is_floating_point else "int"


class _Emitter:
    def __init__(self, graph: ScoreModGraph):
        self.graph = graph
        self.lines: List[str] = []
        self.values: Dict[torch.fx.Node, _Value] = {}
        self.inputs: List[Tuple[str, object]] = []
        self.input_index: Dict[object, int] = {}
        self.gathers: List[Gather] = []
        self.gather_offsets: List[str] = []
        self.counter = 0
        self.varying: set = set()
        self.bad: List[str] = []  # conditions that make the result NaN (out-of-range gather, x / 0 in integers)

    def fresh(self, stem: str = "v") -> str:
        self.counter += 1
        return f"{stem}{self.counter}"

    def emit(self, line: str) -> None:
        self.lines.append("  " + line)

    def narrowed(self, node: torch.fx.Node, v: _Value) -> _Value:
        """An integer result in the width torch computed it in (int64 arithmetic otherwise): as
        torch wraps, and half the registers for the usual int32 index arithmetic (the kernels'
        register budget, bench/NOTES.md)."""
        meta = node.meta.get("val")
        ctype = _NARROW_INTS.get(meta.dtype) if v.kind == "int" and isinstance(meta, torch.Tensor) else None
        if ctype is None:
            return v
        name = self.fresh("n")
        self.emit(f"const {ctype} {name} = static_cast<{ctype}>({v.name});")
        return _Value(name, "int")

    def local(self, kind: str, expr: str, stem: str = "v") -> str:
        name = self.fresh(stem)
        ctype = {"float": "float", "int": "int64_t", "bool": "bool"}[kind]
        self.emit(f"const {ctype} {name} = {expr};")
        return name

    # ---- operands -----------------------------------------------------------------------------
    def tensor_input(self, node: torch.fx.Node) -> int:
        key = ("attr", node.target) if node.op == "get_attr" else ("node", node)
        if key not in self.input_index:
            self.input_index[key] = len(self.inputs)
            self.inputs.append(key)
        return self.input_index[key]

    def requires_grad(self, node: torch.fx.Node) -> bool:
        value = node.meta.get("val")
        if node.op == "get_attr":
            return bool(self.graph.tensors[node.target].requires_grad)
        return bool(getattr(value, "requires_grad", False)) or any(
            self.requires_grad(n) for n in node.all_input_nodes)

    def load(self, node: torch.fx.Node, indices: List[_Value]) -> _Value:
        """tensor[indices] (all dims indexed) of a constant tensor node."""
        t = self.tensor_input(node)
        value = node.meta.get("val")
        dims = value.dim() if isinstance(value, torch.Tensor) else len(indices)
        if dims > MAX_DIMS:
            raise TypeError(f"score_mod: a captured tensor has {dims} dims; generated code indexes at most {MAX_DIMS}")
        if len(indices) != dims:
            raise TypeError(f"score_mod: a captured tensor of {dims} dims is indexed with {len(indices)} indices; "
                            f"index every dimension")
        offset = self.fresh("off")
        self.emit(f"int64_t {offset} = 0;")
        for d, index in enumerate(indices):
            wrapped = self.local("int", f"flexmod_wrap({self.as_int(index)}, tensors[{t}].size[{d}])", "i")
            step = f"{offset} + {wrapped} * tensors[{t}].stride[{d}]"
            self.emit(f"{offset} = ({offset} < 0 || {wrapped} < 0) ? -1 : {step};")
        self.bad.append(f"{offset} < 0")
        dtype = value.dtype if isinstance(value, torch.Tensor) else torch.float32
        kind = _kind_of(dtype)
        if kind == "float":
            v = self.local("float", f"{offset} < 0 ? FLEXMOD_NAN : flexmod_load_float(tensors[{t}], {offset})")
            k = len(self.gathers)
            self.gathers.append(Gather(t, self.requires_grad(node)))
            self.gather_offsets.append(offset)
            return _Value(v, "float", {1 + k: "1.f"})
        expr = f"{offset} < 0 ? 0 : flexmod_load_int(tensors[{t}], {offset})"
        if kind == "bool":
            return _Value(self.local("bool", f"({expr}) != 0"), "bool")
        return _Value(self.local("int", expr), "int")

    def operand(self, x) -> _Value:
        if isinstance(x, torch.fx.Node):
            if x in self.values:
                return self.values[x]
            # a constant tensor (captured, or computed from captured ones): 0-d, read at offset 0
            return self.load(x, [])
        if isinstance(x, bool):
            return _Value(_literal(x, "bool"), "bool")
        if isinstance(x, int):
            return _Value(_literal(x, "int"), "int")
        if isinstance(x, float):
            return _Value(_literal(x, "float"), "float")
        raise TypeError(f"score_mod: cannot express the argument {x!r} in generated code")

    @staticmethod
    def as_float(v: _Value) -> str:
        return v.name if v.kind == "float" else f"static_cast<float>({v.name})"

    @staticmethod
    def as_int(v: _Value) -> str:
        return v.name if v.kind == "int" else f"static_cast<int64_t>({v.name})"

    # ---- derivatives ----------------------------------------------------------------------------
    def combine(self, terms: List[Tuple[str, _Value]]) -> Dict[int, str]:
        """sum of factor * d(value) over the terms, per component."""
        out: Dict[int, List[str]] = {}
        for factor, v in terms:
            for comp, d in v.deriv.items():
                out.setdefault(comp, []).append(f"({factor}) * {d}" if factor != "1.f" else d)
        return {comp: self.local("float", " + ".join(parts), "d") for comp, parts in out.items()}

    def scaled(self, factor: str, v: _Value) -> Dict[int, str]:
        return self.combine([(factor, v)]) if v.deriv else {}

    def select(self, cond: str, a: _Value, b: _Value) -> Dict[int, str]:
        comps = set(a.deriv) | set(b.deriv)
        return {c: self.local("float", f"{cond} ? {a.deriv.get(c, '0.f')} : {b.deriv.get(c, '0.f')}", "d")
                for c in comps}

    # ---- nodes ---------------------------------------------------------------------------------
    def node(self, node: torch.fx.Node) -> _Value:
        op = node.target
        value = node.meta.get("val")
        kind = _kind_of(value.dtype) if isinstance(value, torch.Tensor) else "float"
        args = node.args
        if op is _aten.index.Tensor:
            indices = [self.operand(i) for i in args[1]]
            return self.load(args[0], indices)
        a = [self.operand(x) for x in args if not isinstance(x, (list, tuple, torch.dtype))]
        name = str(op.overloadpacket.__name__) if hasattr(op, "overloadpacket") else str(op)
        if name in ("alias", "detach", "clone", "lift_fresh_copy"):
            return a[0]
        if name == "_to_copy":
            dtype = node.kwargs.get("dtype", value.dtype)
            src = a[0]
            if kind == "float":
                if dtype in (torch.bfloat16, torch.float16):
                    raise TypeError(f"score_mod: generated code computes in float32; a conversion to {dtype} "
                                    f"inside the mod is not supported")
                return _Value(self.local("float", self.as_float(src)), "float", src.deriv)
            if kind == "bool":
                return _Value(self.local("bool", f"({src.name}) != 0"), "bool")
            return _Value(self.local("int", f"static_cast<int64_t>({src.name})"), "int")
        if name in ("full_like", "scalar_tensor", "zeros_like", "ones_like"):
            fill = {"zeros_like": 0.0, "ones_like": 1.0}.get(name, args[1] if name == "full_like" else args[0])
            return self.operand(float(fill) if kind == "float" else fill)
        binary = {"add": "+", "sub": "-", "mul": "*", "rsub": "-"}
        if name in binary:
            x, y = (a[1], a[0]) if name == "rsub" else (a[0], a[1])
            name = "sub" if name == "rsub" else name
            alpha = node.kwargs.get("alpha", args[2] if len(args) > 2 and not isinstance(args[2], torch.fx.Node)
                                    else 1)
            if kind == "float":
                xs, ys = self.as_float(x), self.as_float(y)
                if alpha != 1:
                    ys = f"({_literal(float(alpha), 'float')} * {ys})"
                v = self.local("float", f"{xs} {binary[name]} {ys}")
                if name == "mul":
                    d = self.combine([(ys, x), (xs, y)])
                else:
                    sign = "1.f" if name == "add" else "-1.f"
                    factor = sign if alpha == 1 else f"{sign} * {_literal(float(alpha), 'float')}"
                    d = self.combine([("1.f", x), (factor, y)])
                return _Value(v, "float", d)
            ys = self.as_int(y) if alpha == 1 else f"({alpha}LL * {self.as_int(y)})"
            return _Value(self.local(kind, f"{self.as_int(x)} {binary[name]} {ys}"), kind)
        if name == "div":
            x, y = a[0], a[1]
            mode = node.kwargs.get("rounding_mode")
            if mode is None:
                xs, ys = self.as_float(x), self.as_float(y)
                v = self.local("float", f"{xs} / {ys}")
                d = self.combine([(f"1.f / {ys}", x), (f"-{v} / {ys}", y)])
                return _Value(v, "float", d)
            if kind == "int":
                self.bad.append(f"{self.as_int(y)} == 0")
                fn = "flexmod_floordiv" if mode == "floor" else "flexmod_truncdiv"
                return _Value(self.local("int", f"{fn}({self.as_int(x)}, {self.as_int(y)})"), "int")
            if mode == "floor":
                return _Value(self.local("float", f"flexmod_floordiv_float({self.as_float(x)}, {self.as_float(y)})"),
                              "float")
            return _Value(self.local("float", f"truncf({self.as_float(x)} / {self.as_float(y)})"), "float")
        if name == "floor_divide":
            if kind == "int":
                self.bad.append(f"{self.as_int(a[1])} == 0")
                return _Value(self.local("int", f"flexmod_floordiv({self.as_int(a[0])}, {self.as_int(a[1])})"), "int")
            return _Value(self.local("float", f"flexmod_floordiv_float({self.as_float(a[0])}, {self.as_float(a[1])})"),
                          "float")
        if name == "remainder":
            if kind == "int":
                self.bad.append(f"{self.as_int(a[1])} == 0")
                return _Value(self.local("int", f"flexmod_mod({self.as_int(a[0])}, {self.as_int(a[1])})"), "int")
            xs, ys = self.as_float(a[0]), self.as_float(a[1])
            v = self.local("float", f"flexmod_fmod({xs}, {ys})")
            # a - b * floor(a / b): d/da = 1, d/db = -floor(a / b)
            d = self.combine([("1.f", a[0]), (f"-flexmod_floordiv_float({xs}, {ys})", a[1])])
            return _Value(v, "float", d)
        unary = {
            "neg": ("-{x}", "-1.f"),
            "exp": ("expf({x})", "{v}"),
            "exp2": ("exp2f({x})", "0.6931471805599453f * {v}"),
            "log": ("logf({x})", "1.f / {x}"),
            "log2": ("log2f({x})", "1.4426950408889634f / {x}"),
            "tanh": ("tanhf({x})", "1.f - {v} * {v}"),
            "sigmoid": ("1.f / (1.f + expf(-{x}))", "{v} * (1.f - {v})"),
            "sqrt": ("sqrtf({x})", "0.5f / {v}"),
            "rsqrt": ("1.f / sqrtf({x})", "-0.5f * {v} * {v} * {v}"),
            "reciprocal": ("1.f / {x}", "-{v} * {v}"),
            "sin": ("sinf({x})", "cosf({x})"),
            "cos": ("cosf({x})", "-sinf({x})"),
            "erf": ("erff({x})", "1.1283791670955126f * expf(-{x} * {x})"),
            "abs": ("fabsf({x})", "({x} > 0.f ? 1.f : ({x} < 0.f ? -1.f : 0.f))"),
            "log1p": ("log1pf({x})", "1.f / (1.f + {x})"),
            "expm1": ("expm1f({x})", "{v} + 1.f"),
            "relu": ("({x} > 0.f ? {x} : 0.f)", "({x} > 0.f ? 1.f : 0.f)"),
            "floor": ("floorf({x})", "0.f"),
            "ceil": ("ceilf({x})", "0.f"),
            "round": ("rintf({x})", "0.f"),
            "trunc": ("truncf({x})", "0.f"),
            "sign": ("({x} > 0.f ? 1.f : ({x} < 0.f ? -1.f : 0.f))", "0.f"),
        }
        if name in unary and kind == "float":
            expr, deriv = unary[name]
            xs = self.as_float(a[0])
            v = self.local("float", expr.format(x=xs))
            return _Value(v, "float", self.scaled(deriv.format(x=xs, v=v), a[0]))
        if name == "abs":
            return _Value(self.local("int", f"({self.as_int(a[0])} < 0 ? -{self.as_int(a[0])} : {self.as_int(a[0])})"),
                          "int")
        if name == "neg":
            return _Value(self.local("int", f"-{self.as_int(a[0])}"), "int")
        if name == "pow":
            x, y = a[0], a[1]
            if kind != "float":
                raise TypeError("score_mod: generated code computes pow in floating point only (an integer pow)")
            xs, ys = self.as_float(x), self.as_float(y)
            v = self.local("float", f"powf({xs}, {ys})")
            # d/dx = y x^(y-1) (0 for y = 0, as torch); d/dy = x^y log x (0 where x^y is 0)
            d = self.combine([(f"({ys} == 0.f ? 0.f : {ys} * powf({xs}, {ys} - 1.f))", x),
                              (f"({v} == 0.f ? 0.f : {v} * logf({xs}))", y)])
            return _Value(v, "float", d)
        if name in ("minimum", "maximum", "clamp", "clamp_min", "clamp_max"):
            return self.min_max(name, node, a, kind)
        if name == "where":
            c, x, y = a
            cond = c.name if c.kind == "bool" else f"({c.name} != 0)"
            if kind == "float":
                v = self.local("float", f"{cond} ? {self.as_float(x)} : {self.as_float(y)}")
                return _Value(v, "float", self.select(cond, x, y))
            return _Value(self.local(kind, f"{cond} ? {x.name} : {y.name}"), kind)
        compare = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
        if name in compare:
            x, y = a[0], a[1]
            both_int = x.kind != "float" and y.kind != "float"
            xs, ys = (self.as_int(x), self.as_int(y)) if both_int else (self.as_float(x), self.as_float(y))
            return _Value(self.local("bool", f"{xs} {compare[name]} {ys}"), "bool")
        logical = {"logical_and": "&&", "logical_or": "||", "bitwise_and": "&", "bitwise_or": "|",
                   "logical_xor": "!=", "bitwise_xor": "^"}
        if name in logical:
            x, y = a[0], a[1]
            if kind == "bool":
                xs = x.name if x.kind == "bool" else f"({x.name} != 0)"
                ys = y.name if y.kind == "bool" else f"({y.name} != 0)"
                return _Value(self.local("bool", f"{xs} {logical[name]} {ys}"), "bool")
            return _Value(self.local("int", f"{self.as_int(x)} {logical[name]} {self.as_int(y)}"), "int")
        if name in ("logical_not", "bitwise_not") and kind == "bool":
            x = a[0]
            return _Value(self.local("bool", f"!({x.name})" if x.kind == "bool" else f"({x.name} == 0)"), "bool")
        raise TypeError(f"score_mod: generated code does not support {op} yet")

    def min_max(self, name: str, node: torch.fx.Node, a: List[_Value], kind: str) -> _Value:
        if name in ("minimum", "maximum"):
            x, y = a[0], a[1]
            if kind != "float":
                fn = "<" if name == "minimum" else ">"
                return _Value(self.local("int", f"{self.as_int(x)} {fn} {self.as_int(y)} ? {self.as_int(x)} : "
                                                f"{self.as_int(y)}"), "int")
            xs, ys = self.as_float(x), self.as_float(y)
            pick = "<" if name == "minimum" else ">"
            # NaN wins (torch); ties split the gradient evenly (torch's minimum / maximum backward)
            v = self.local("float", f"({xs} != {xs} || {ys} != {ys}) ? FLEXMOD_NAN : ({xs} {pick} {ys} ? {xs} : {ys})")
            comps = set(x.deriv) | set(y.deriv)
            d = {c: self.local("float", f"{xs} {pick} {ys} ? {x.deriv.get(c, '0.f')} : ({ys} {pick} {xs} ? "
                                        f"{y.deriv.get(c, '0.f')} : 0.5f * ({x.deriv.get(c, '0.f')} + "
                                        f"{y.deriv.get(c, '0.f')}))", "d") for c in comps}
            return _Value(v, "float", d)
        x = a[0]
        args = list(node.args[1:]) + [None] * 2
        low = node.kwargs.get("min", args[0] if name != "clamp_max" else None)
        high = node.kwargs.get("max", args[1] if name == "clamp" else (args[0] if name == "clamp_max" else None))
        if kind != "float":
            expr = self.as_int(x)
            if low is not None:
                lo = self.as_int(self.operand(low))
                expr = f"({expr} < {lo} ? {lo} : {expr})"
            if high is not None:
                hi = self.as_int(self.operand(high))
                expr = f"({expr} > {hi} ? {hi} : {expr})"
            return _Value(self.local("int", expr), "int")
        xs = self.as_float(x)
        expr, inside, bounds = xs, [], []
        if low is not None:
            lo_v = self.operand(low)
            lo = self.as_float(lo_v)
            expr, inside = f"fmaxf({expr}, {lo})", inside + [f"{xs} >= {lo}"]
            bounds.append((f"{xs} < {lo}", lo_v))
        if high is not None:
            hi_v = self.operand(high)
            hi = self.as_float(hi_v)
            expr, inside = f"fminf({expr}, {hi})", inside + [f"{xs} <= {hi}"]
            bounds.append((f"{xs} > {hi}", hi_v))
        v = self.local("float", f"{xs} != {xs} ? {xs} : {expr}")
        cond = " && ".join(inside) or "true"
        # The gradient goes to x inside the bounds, to the bound that clamps otherwise (torch).
        comps = set(x.deriv).union(*(b.deriv for _, b in bounds))
        d = {}
        for c in comps:
            term = f"({cond}) ? {x.deriv.get(c, '0.f')} : 0.f"
            for clamped, b in bounds:
                if c in b.deriv:
                    term = f"({clamped}) ? {b.deriv[c]} : ({term})"
            d[c] = self.local("float", term, "d")
        return _Value(v, "float", d)


def generate(graph: ScoreModGraph) -> Generated:
    """The C++ source of graph's score-mod hook; TypeError names an operation it cannot express."""
    e = _Emitter(graph)
    placeholders = [n for n in graph.gm.graph.nodes if n.op == "placeholder"]
    for p, name in zip(placeholders, INPUT_NAMES):
        e.varying.add(p)
        if name == "score":
            e.values[p] = _Value("score", "float", {0: "1.f"})
        else:
            e.values[p] = _Value(name, "int")  # int32, as torch flex's index tensors
    result = None
    for node in graph.gm.graph.nodes:
        if node.op == "call_function" and any(n in e.varying for n in node.all_input_nodes):
            e.varying.add(node)
            e.values[node] = e.narrowed(node, e.node(node))
        elif node.op == "output":
            out = node.args[0]
            result = out[0] if isinstance(out, (tuple, list)) else out
    value = e.operand(result)
    if len(e.gathers) > MAX_GATHERS:
        raise TypeError(f"score_mod: generated code makes at most {MAX_GATHERS} gathers from captured floating "
                        f"tensors, this graph makes {len(e.gathers)}")
    body = list(e.lines)
    tail = [f"  *d_score = {value.deriv.get(0, '0.f')};"]
    for k, offset in enumerate(e.gather_offsets):
        tail.append(f"  d_gathered[{k}] = {value.deriv.get(1 + k, '0.f')};")
        tail.append(f"  gathered_offset[{k}] = {offset};")
    if e.bad:
        tail.append(f"  if ({' || '.join(e.bad)}) return FLEXMOD_NAN;")
    tail.append(f"  return {e.as_float(value)};")
    unused = "  (void)b; (void)h; (void)q_idx; (void)kv_idx; (void)tensors; (void)d_gathered; (void)gathered_offset;"
    function = (
        f"FLASHFLEX_MOD_LINKAGE FLASHFLEX_MOD_FN float {FUNCTION_NAME}(\n"
        f"    float score, int32_t b, int32_t h, int32_t q_idx, int32_t kv_idx,\n"
        f"    const FlexModTensor* tensors, float* d_score, float* d_gathered, int64_t* gathered_offset) {{\n"
        + unused + "\n" + "\n".join(body + tail) + "\n}\n")
    # Its number of gathers, a constant once linked: the kernels' loops over them shrink to it.
    function += f"FLASHFLEX_MOD_LINKAGE FLASHFLEX_MOD_FN int {FUNCTION_NAME}_gathers() {{ return {len(e.gathers)}; }}\n"
    return Generated(function, e.gathers, e.inputs, graph)


def tensor_descriptor(t: torch.Tensor) -> Tuple[int, List[int], List[int], int]:
    """(data pointer, strides, sizes, dtype code) of a tensor for FlexModTensor."""
    if t.dim() > MAX_DIMS:
        raise TypeError(f"score_mod: a captured tensor has {t.dim()} dims; generated code indexes at most {MAX_DIMS}")
    if t.dtype not in _DTYPE_CODES:
        raise TypeError(f"score_mod: a captured tensor of dtype {t.dtype} cannot be read by generated code")
    pad = MAX_DIMS - t.dim()
    return t.data_ptr(), list(t.stride()) + [0] * pad, list(t.shape) + [1] * pad, _DTYPE_CODES[t.dtype]
