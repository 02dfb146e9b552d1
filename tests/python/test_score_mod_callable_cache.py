"""Score_mod callables: bad mods raise clear errors; an unrecognised graph on a non-CPU device says
what is missing; the per-callable cache captures once and never serves a stale result when a
captured tensor is updated in place or a captured number is rebound; torch.compile runs the
recognised mods in one graph (fullgraph), forward and backward, and the others outside it."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend

import flashflex
import flashflex._score_mod_resolve as resolve
from flashflex._score_mod_resolve import resolve_callable
from helpers import TOL, assert_close, make_qkv, randn
from test_score_mod_callables import vmapped
from dense_reference import dense_attention

B, H, Q, KV, D = 1, 2, 33, 40, 64
SLOPES = torch.tensor([0.5, 0.25])


def _arity_2(s, b):
    return s


def _arity_6(s, b, h, q, kv, extra):
    return s


def _branch(s, b, h, q, kv):
    if s > 0:
        return s
    return -s


BAD = {
    "two arguments": (_arity_2, TypeError, "5 positional arguments"),
    "six required arguments": (_arity_6, TypeError, "5 positional arguments"),
    "reduction": (lambda s, b, h, q, kv: s.sum(), TypeError, "aten.sum.default"),
    "softmax": (lambda s, b, h, q, kv: torch.softmax(s, -1), TypeError, "aten._softmax"),
    "data-dependent branch": (_branch, ValueError, "data-dependent"),
    "item of the score": (lambda s, b, h, q, kv: s * s.item(), ValueError, "reads the value of the score"),
    "vector result": (lambda s, b, h, q, kv: s + SLOPES, TypeError, r"shape \(2,\) per element"),
    "two results": (lambda s, b, h, q, kv: (s, s), TypeError, "one tensor"),
    "in-place": (lambda s, b, h, q, kv: s.mul_(2), TypeError, "in-place"),
    "random": (lambda s, b, h, q, kv: s + torch.rand(()), TypeError, "random"),
    "integer result": (lambda s, b, h, q, kv: q - kv, TypeError, "floating-point"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_score_mod_raises_clearly(name, gen):
    fn, error, message = BAD[name]
    q, k, v = make_qkv(gen, B, H, H, Q, KV, D)
    with pytest.raises(error, match=message):
        flashflex.flex_attention(q, k, v, score_mod=fn)


def test_reading_a_learnable_tensor_into_python_is_refused(gen):
    w = torch.ones(2, requires_grad=True)
    q, k, v = make_qkv(gen, B, H, H, Q, KV, D)
    with pytest.raises(TypeError, match="gradient would be lost"):
        flashflex.flex_attention(q, k, v, score_mod=lambda s, b, h, qi, kv: s * w[0].item())


def test_not_callable_is_refused(gen):
    q, k, v = make_qkv(gen, B, H, H, Q, KV, D)
    with pytest.raises(TypeError, match="score_mod: expected None, a callable"):
        flashflex.flex_attention(q, k, v, score_mod=3.0)


def test_unrecognised_graph_off_cpu_names_its_operations():
    q, k, v = (torch.empty(B, H, n, D, device="meta") for n in (Q, KV, KV))
    with pytest.raises(NotImplementedError, match="aten.sigmoid.default.*cannot be linked into the kernels here: "
                                                  "linked score mods run on CUDA tensors, got meta"):
        flashflex.flex_attention(q, k, v, score_mod=lambda s, b, h, qi, kv: s * torch.sigmoid(s))
    # A recognised one resolves to the ahead-of-time kernels on any device.
    resolved = resolve_callable(lambda s, b, h, qi, kv: 5 * torch.tanh(s / 5), q, k)
    assert resolved.graph is None and resolved.builtin.name == "softcap"


def test_captured_tensor_on_another_device_is_refused(gen):
    q, k, v = make_qkv(gen, B, H, H, Q, KV, D)
    bias = torch.empty(B, H, Q, KV, device="meta")
    with pytest.raises(ValueError, match=r"captures a tensor of shape \(1, 2, 33, 40\) on meta; expected it on cpu"):
        flashflex.flex_attention(q, k, v, score_mod=lambda s, b, h, qi, kv: s + bias[b, h, qi, kv])


# ---- the cache ---------------------------------------------------------------------------------

def _reference(q, k, v, fn):
    out, _ = dense_attention(*(t.detach().double() for t in (q, k, v)), None, vmapped(fn))
    return out


def test_captured_once_per_callable(gen, monkeypatch):
    calls = []
    capture = resolve.capture
    monkeypatch.setattr(resolve, "capture", lambda fn: calls.append(fn) or capture(fn))
    table = randn(gen, Q + KV)
    fn = lambda s, b, h, qi, kv: s + table[qi - kv + KV]  # noqa: E731
    q, k, v = make_qkv(gen, B, H, H, Q, KV, D)
    for _ in range(3):
        flashflex.flex_attention(q, k, v, score_mod=fn)
    assert len(calls) == 1


@pytest.mark.parametrize("form", ["bias view", "materialised", "graph"])
def test_in_place_update_of_a_captured_tensor_is_seen(form, gen):
    q, k, v = make_qkv(gen, B, H, H, Q, KV, D)
    if form == "bias view":
        t = randn(gen, B, H, Q, KV)
        fn = lambda s, b, h, qi, kv: s + t[b, h, qi, kv]  # noqa: E731
    elif form == "materialised":
        t = randn(gen, Q + KV)
        fn = lambda s, b, h, qi, kv: s + t[qi - kv + KV]  # noqa: E731
    else:
        t = randn(gen, H)
        fn = lambda s, b, h, qi, kv: s * torch.sigmoid(s * t[h])  # noqa: E731
    first = flashflex.flex_attention(q, k, v, score_mod=fn)
    t.mul_(-2.0)
    second = flashflex.flex_attention(q, k, v, score_mod=fn)
    assert not torch.allclose(first, second)
    assert_close(second, _reference(q, k, v, fn), TOL[torch.float32], "out after the update")


def test_in_place_update_of_a_folded_number_is_seen(gen):
    q, k, v = make_qkv(gen, B, H, H, Q, KV, D)
    cap = torch.tensor(10.0)
    fn = lambda s, b, h, qi, kv: cap * torch.tanh(s / cap)  # noqa: E731
    assert resolve_callable(fn, q, k).builtin.cap == 10.0
    flashflex.flex_attention(q, k, v, score_mod=fn)
    cap.fill_(0.5)
    assert resolve_callable(fn, q, k).builtin.cap == 0.5
    assert_close(flashflex.flex_attention(q, k, v, score_mod=fn), _reference(q, k, v, fn), TOL[torch.float32], "out")


def test_value_read_at_trace_time_is_recaptured_after_an_update(gen):
    q, k, v = make_qkv(gen, B, H, H, Q, KV, D)
    w = torch.tensor([2.0])
    fn = lambda s, b, h, qi, kv: s * torch.sigmoid(s * w[0].item())  # noqa: E731
    flashflex.flex_attention(q, k, v, score_mod=fn)
    w.fill_(-3.0)
    assert_close(flashflex.flex_attention(q, k, v, score_mod=fn), _reference(q, k, v, fn), TOL[torch.float32], "out")


def test_rebinding_a_captured_number_is_seen(gen):
    q, k, v = make_qkv(gen, B, H, H, Q, KV, D)
    cap = 20.0

    def fn(s, b, h, qi, kv):
        return cap * torch.tanh(s / cap)

    assert resolve_callable(fn, q, k).builtin.cap == 20.0
    cap = 2.0
    assert resolve_callable(fn, q, k).builtin.cap == 2.0


# ---- torch.compile -----------------------------------------------------------------------------

@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("form", ["softcap", "alibi", "learnable bias"])
def test_recognised_mod_compiles_as_one_graph(form, gen, fresh_dynamo):
    bias = randn(gen, 1, H, Q, KV).requires_grad_()
    fn = {"softcap": lambda s, b, h, qi, kv: 4 * torch.tanh(s / 4),
          "alibi": lambda s, b, h, qi, kv: s + SLOPES[h] * (kv - qi),
          "learnable bias": lambda s, b, h, qi, kv: s + bias[0, h, qi, kv]}[form]
    q, k, v = (t.requires_grad_() for t in make_qkv(gen, B, H, H, Q, KV, D))
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(lambda q, k, v: flashflex.flex_attention(q, k, v, score_mod=fn), fullgraph=True,
                             backend=counter)
    out = compiled(q, k, v)
    out.sum().backward()
    assert counter.frame_count == 1
    grads = [t.grad.clone() for t in (q, k, v, bias) if t.grad is not None]
    for t in (q, k, v, bias):
        t.grad = None
    eager = flashflex.flex_attention(q, k, v, score_mod=fn)
    eager.sum().backward()
    assert_close(out, eager, 1e-6, "out")
    for got, t in zip(grads, [t for t in (q, k, v, bias) if t.grad is not None]):
        assert_close(got, t.grad, 1e-6, "grad")
    if form == "learnable bias":
        with torch.no_grad():
            bias.mul_(3.0)
        assert_close(compiled(q, k, v), flashflex.flex_attention(q, k, v, score_mod=fn), 1e-6, "out after update")


def test_unrecognised_mod_runs_outside_the_compiled_graph(gen, fresh_dynamo):
    fn = lambda s, b, h, qi, kv: s * torch.sigmoid(s)  # noqa: E731
    q, k, v = (t.requires_grad_() for t in make_qkv(gen, B, H, H, Q, KV, D))
    out = torch.compile(lambda q, k, v: flashflex.flex_attention(q, k, v, score_mod=fn), backend="aot_eager")(q, k, v)
    out.sum().backward()
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref, _ = dense_attention(q64, k64, v64, None, vmapped(fn))
    ref.sum().backward()
    assert_close(out, ref, TOL[torch.float32], "out")
    assert_close(q.grad, q64.grad, TOL[torch.float32], "dq")


# ---- folding into the softmax scale ----------------------------------------------------------

def test_factor_is_folded_into_an_explicit_scale(gen):
    q, k, v = make_qkv(gen, B, H, H, Q, KV, D)
    fn = lambda s, b, h, qi, kv: 3 * torch.tanh(1.5 * s / 3)  # noqa: E731
    resolved = resolve_callable(fn, q, k)
    assert resolved.graph is None and resolved.builtin.cap == 3 and resolved.scale_factor == 1.5
    out = flashflex.flex_attention(q, k, v, score_mod=fn, scale=0.3)
    ref, _ = dense_attention(*(t.double() for t in (q, k, v)), None, vmapped(fn), scale=0.3)
    assert_close(out, ref, TOL[torch.float32], "out")


def test_negative_factor_is_not_folded(gen):
    q, k, _ = make_qkv(gen, B, H, H, Q, KV, D)
    assert resolve_callable(lambda s, b, h, qi, kv: -0.5 * s, q, k).graph is not None


GLOBAL_BIAS = torch.zeros(B, H, Q, KV)


def _global_bias_mod(s, b, h, qi, kv):
    return s + GLOBAL_BIAS[b, h, qi, kv]


class _BiasHolder(torch.nn.Module):
    def __init__(self, bias):
        super().__init__()
        self.bias = torch.nn.Parameter(bias)

    def forward(self, s, b, h, qi, kv):
        return s + self.bias[b, h, qi, kv]


class _PlainBiasHolder:
    """Not a module: the score mod is a bound method of a plain object."""

    def __init__(self, bias):
        self.bias = bias

    def mod(self, s, b, h, qi, kv):
        return s + self.bias[b, h, qi, kv]


def _partial_bias_mod(s, b, h, qi, kv, bias):
    return s + bias[b, h, qi, kv]


@pytest.mark.parametrize("holder", ["closure", "global", "module attribute", "bound method", "partial keyword"])
def test_compiled_mod_sees_its_tensor_rebound(holder, gen, fresh_dynamo, monkeypatch):
    q, k, v = make_qkv(gen, B, H, H, Q, KV, D)
    first, second = randn(gen, B, H, Q, KV), randn(gen, B, H, Q, KV)
    if holder == "closure":
        bias = first
        fn = lambda s, b, h, qi, kv: s + bias[b, h, qi, kv]  # noqa: E731
    elif holder == "global":
        monkeypatch.setattr(__import__(__name__), "GLOBAL_BIAS", first)
        fn = _global_bias_mod
    elif holder == "module attribute":
        fn = _BiasHolder(first)
    elif holder == "bound method":
        owner = _PlainBiasHolder(first)
        fn = owner.mod
    else:
        import functools
        fn = functools.partial(_partial_bias_mod, bias=first)
    # A partial holding a tensor is no constant for dynamo: its plan is made outside the graph.
    compiled = torch.compile(lambda q, k, v: flashflex.flex_attention(q, k, v, score_mod=fn),
                             fullgraph=holder != "partial keyword", backend="aot_eager")
    compiled(q, k, v)
    if holder == "closure":
        bias = second  # noqa: F841 (read by fn)
    elif holder == "global":
        monkeypatch.setattr(__import__(__name__), "GLOBAL_BIAS", second)
    elif holder == "module attribute":
        fn.bias = torch.nn.Parameter(second)
    elif holder == "bound method":
        owner.bias = second
    else:
        fn.keywords["bias"] = second
    out = compiled(q, k, v)
    want = flashflex.flex_attention(q, k, v, score_mod=lambda s, b, h, qi, kv: s + second[b, h, qi, kv])
    assert_close(out, want, 1e-6, f"out after rebinding the {holder}")


class _TableModule(torch.nn.Module):
    def __init__(self, table, cap):
        super().__init__()
        self.table = table  # a plain tensor attribute, not a parameter
        self.cap = cap

    def forward(self, s, b, h, qi, kv):
        return self.cap * torch.tanh((s + self.table[qi - kv + KV]) / self.cap)


def test_rebinding_a_module_attribute_is_seen(gen):
    q, k, v = make_qkv(gen, B, H, H, Q, KV, D)
    module = _TableModule(randn(gen, Q + KV), 5.0)
    flashflex.flex_attention(q, k, v, score_mod=module)
    module.table, module.cap = randn(gen, Q + KV), 2.0
    assert_close(flashflex.flex_attention(q, k, v, score_mod=module), _reference(q, k, v, module), TOL[torch.float32],
                 "out after rebinding")
