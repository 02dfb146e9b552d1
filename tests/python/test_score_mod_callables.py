"""Python score_mod callables as torch flex takes them: a zoo of 30 written as FlexAttention users
write them, plus compositions drawn at test time, forward and backward (query, key, value and every
captured tensor that requires grad) against float64 dense attention whose score_mod is the same
callable over float64 copies of its tensors, evaluated element by element with torch.vmap (torch
flex's eager semantics). The recognisable ones must resolve to a built-in mod (the kind is
asserted, so nothing is evaluated as a graph). Bad mods, the cache and torch.compile:
test_score_mod_callable_cache.py; the zoo on CUDA: test_score_mod_callables_cuda.py."""

from __future__ import annotations

import functools
import random
from typing import Callable, Dict, NamedTuple, Optional

import pytest
import torch
from torch._dynamo._trace_wrapped_higher_order_op import TransformGetItemToIndex
from torch.nn.attention.flex_attention import _identity

import flashflex
from flashflex._score_mod_resolve import resolve_callable
from dense_reference import dense_attention, dense_mask
from helpers import TOL, assert_close, assert_lse_close, make_qkv, randn

BATCH, HQ, HKV, Q_LEN, KV_LEN, HEAD_DIM = 2, 4, 2, 37, 70, 64
# Rows 0..2 see no key: the masked-row numerics (out 0, lse -inf, zero gradients) are exercised too.
MASK = flashflex.masks.causal(offset=-3)


def vmapped(fn: Callable) -> Callable:
    """fn applied to every element (torch flex eager: vmap, tensor[idx] as an index op)."""
    def score_mod(scores, b, h, q_idx, kv_idx):
        shape = scores.shape
        flat = [x.expand(shape).reshape(-1) for x in (b, h, q_idx, kv_idx)]
        with TransformGetItemToIndex():
            return torch.vmap(fn)(scores.reshape(-1), *flat).reshape(shape)
    return score_mod


# ---- the zoo --------------------------------------------------------------------------------
# Each case: tensors it captures {name: (shape, requires_grad)}, a builder from those tensors to
# the callable, and the built-in kind it must resolve to (None: the CPU graph path).

class Case(NamedTuple):
    tensors: Dict[str, tuple]
    build: Callable
    kind: Optional[str]


def _softcap(score, b, h, q_idx, kv_idx, cap):
    return cap * torch.tanh(score / cap)


class BiasModule(torch.nn.Module):
    def __init__(self, bias):
        super().__init__()
        self.bias = bias  # an nn.Parameter on the flashflex side: registered as the module's parameter

    def forward(self, score, b, h, q_idx, kv_idx):
        return score + self.bias[h, q_idx, kv_idx]


class SoftcapModule(torch.nn.Module):
    def __init__(self, cap: float):
        super().__init__()
        self.cap = cap

    def forward(self, score, b, h, q_idx, kv_idx):
        return self.cap * torch.tanh(score / self.cap)


def _gated_softcap(T):
    def mod(s, b, h, q, kv):
        gate = torch.sigmoid(T["gate"][h])
        return gate * (20 * torch.tanh(s / 20)) + (1 - gate) * s
    return mod


SLOPES = {"slopes": ((HQ,), False)}
BIAS = {"bias": ((BATCH, HQ, Q_LEN, KV_LEN), False)}
REL = KV_LEN + Q_LEN
ZOO = {
    "softcap_div": Case({}, lambda T: lambda s, b, h, q, kv: 30 * torch.tanh(s / 30), "softcap"),
    "softcap_tanh_times_cap": Case({}, lambda T: lambda s, b, h, q, kv: torch.tanh(s / 20) * 20, "softcap"),
    "softcap_method_reciprocal": Case({}, lambda T: lambda s, b, h, q, kv: 15.0 * (s * (1 / 15.0)).tanh(),
                                      "softcap"),
    "softcap_partial": Case({}, lambda T: functools.partial(_softcap, cap=12.5), "softcap"),
    "softcap_tensor_cap": Case({"cap": ((), False)}, lambda T: lambda s, b, h, q, kv: (
        T["cap"].abs() + 5) * torch.tanh(s / (T["cap"].abs() + 5)), "softcap"),
    "softcap_module": Case({}, lambda T: SoftcapModule(8.0), "softcap"),
    "softcap_of_scaled": Case({}, lambda T: lambda s, b, h, q, kv: 20 * torch.tanh(2 * s / 20), "softcap"),
    "alibi": Case(SLOPES, lambda T: lambda s, b, h, q, kv: s + T["slopes"][h] * (kv - q), "alibi"),
    "alibi_minus_q_minus_kv": Case(SLOPES, lambda T: lambda s, b, h, q, kv: s - T["slopes"][h] * (q - kv),
                                   "alibi"),
    "alibi_q_minus_kv": Case(SLOPES, lambda T: lambda s, b, h, q, kv: s + (q - kv) * T["slopes"][h], "alibi"),
    "alibi_constant_slope": Case({}, lambda T: lambda s, b, h, q, kv: s + 0.25 * (kv - q), "alibi"),
    "alibi_learnable": Case({"slopes": ((HQ,), True)},
                            lambda T: lambda s, b, h, q, kv: s + T["slopes"][h] * (kv - q), "bias"),
    "bias_full": Case(BIAS, lambda T: lambda s, b, h, q, kv: s + T["bias"][b, h, q, kv], "bias"),
    "bias_learnable": Case({"bias": ((BATCH, HQ, Q_LEN, KV_LEN), True)},
                           lambda T: lambda s, b, h, q, kv: s + T["bias"][b, h, q, kv], "bias"),
    "bias_batch_broadcast": Case({"bias": ((1, HQ, Q_LEN, KV_LEN), True)},
                                 lambda T: lambda s, b, h, q, kv: s + T["bias"][0, h, q, kv], "bias"),
    "bias_2d": Case({"bias": ((Q_LEN, KV_LEN), False)},
                    lambda T: lambda s, b, h, q, kv: T["bias"][q, kv] + s, "bias"),
    "bias_chained_indexing": Case(BIAS, lambda T: lambda s, b, h, q, kv: s + T["bias"][b][h][q][kv], "bias"),
    "bias_module_parameter": Case({"bias": ((HQ, Q_LEN, KV_LEN), "parameter")},
                                  lambda T: BiasModule(T["bias"]), "bias"),
    "relative_bias": Case({"table": ((REL,), False)},
                          lambda T: lambda s, b, h, q, kv: s + T["table"][q - kv + KV_LEN], "bias"),
    "relative_bias_per_head_learnable": Case({"table": ((HQ, REL), True)}, lambda T: lambda s, b, h, q, kv: (
        s + T["table"][h, q - kv + KV_LEN]), "bias"),
    "relative_bias_clamped_buckets": Case({"table": ((17,), True)}, lambda T: lambda s, b, h, q, kv: (
        s + T["table"][torch.clamp(q - kv, -8, 8) + 8]), "bias"),
    "alibi_plus_bias": Case({**SLOPES, **BIAS}, lambda T: lambda s, b, h, q, kv: (
        s + T["slopes"][h] * (kv - q) + T["bias"][b, h, q, kv]), "bias"),
    "scale_constant": Case({}, lambda T: lambda s, b, h, q, kv: s * 0.5, "none"),
    "identity": Case({}, lambda T: _identity, "none"),
    "scale_per_head": Case({"scale": ((HQ,), True)}, lambda T: lambda s, b, h, q, kv: s * T["scale"][h], None),
    "scale_per_batch": Case({}, lambda T: lambda s, b, h, q, kv: s * (1.0 + 0.5 * b), None),
    "silu_score": Case({}, lambda T: lambda s, b, h, q, kv: s * torch.sigmoid(s), None),
    "gated_softcap": Case({"gate": ((HQ,), True)}, _gated_softcap, None),
    "softcap_of_biased_score": Case({"bias": ((BATCH, HQ, Q_LEN, KV_LEN), True)}, lambda T: lambda s, b, h, q, kv: (
        10 * torch.tanh((s + T["bias"][b, h, q, kv]) / 10)), None),
    "causal_where_minus_inf": Case({}, lambda T: lambda s, b, h, q, kv: torch.where(
        q - kv <= 20, s, torch.full_like(s, float("-inf"))), None),
}
assert len(ZOO) == 30


def _tensors(spec, gen):
    """({name: flashflex-side tensor}, {name: float64 reference copy}) from {name: (shape, grad)}."""
    ff, ref = {}, {}
    for name, (shape, grad) in spec.items():
        t = randn(gen, *shape, std=0.5) if shape else randn(gen, 1, std=0.5)[0]
        ff[name] = torch.nn.Parameter(t) if grad == "parameter" else t.requires_grad_(bool(grad))
        ref[name] = t.detach().double().requires_grad_(bool(grad))
    return ff, ref


def _kind(mod) -> Optional[str]:
    """The built-in kind the callable resolves to for these shapes, or None (CPU graph)."""
    q, k, _ = make_qkv(torch.Generator().manual_seed(0), BATCH, HQ, HKV, Q_LEN, KV_LEN, HEAD_DIM)
    resolved = resolve_callable(mod, q, k)
    if resolved.graph is not None:
        return None
    return "none" if resolved.builtin is None else resolved.builtin.name


def _check(mod, ref_mod, leaves, gen, mask=MASK):
    """Forward, lse and every gradient of flashflex against the float64 reference."""
    q, k, v = (t.requires_grad_() for t in make_qkv(gen, BATCH, HQ, HKV, Q_LEN, KV_LEN, HEAD_DIM))
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    block_mask = None if mask is None else flashflex.create_block_mask(mask, None, None, Q_LEN, KV_LEN)
    out, lse = flashflex.flex_attention(q, k, v, score_mod=mod, block_mask=block_mask, enable_gqa=True,
                                        return_lse=True)
    dense = None if mask is None else dense_mask(mask, BATCH, HQ, Q_LEN, KV_LEN)
    ref_out, ref_lse = dense_attention(q64, k64, v64, dense, vmapped(ref_mod))
    if mask is None:  # rows the mod itself empties (all -inf): out 0, lse -inf, as in the kernels
        empty = torch.isnan(ref_lse) | torch.isneginf(ref_lse)
        ref_out = torch.where(empty[..., None], torch.zeros_like(ref_out), ref_out)
    assert_close(out, ref_out, TOL[torch.float32], "out")
    assert_lse_close(lse, ref_lse)

    dout = randn(gen, BATCH, HQ, Q_LEN, HEAD_DIM)
    ((out * dout).sum()).backward()
    ((ref_out * dout.double()).sum()).backward()
    for name, got, want in [("dq", q, q64), ("dk", k, k64), ("dv", v, v64)] + leaves:
        assert got.grad is not None, f"{name}: no gradient"
        assert_close(got.grad, want.grad, TOL[torch.float32], name)


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_forward_backward_and_recognition(name, gen):
    case = ZOO[name]
    ff, ref = _tensors(case.tensors, gen)
    mod, ref_mod = case.build(ff), case.build(ref)
    assert _kind(mod) == case.kind, f"{name}: resolved to {_kind(mod)!r}, expected {case.kind!r}"
    leaves = [(f"d{n}", ff[n], ref[n]) for n in ff if ff[n].requires_grad]
    if name == "bias_module_parameter":
        leaves = [("dbias (parameter)", mod.bias, ref["bias"])]
    _check(mod, ref_mod, leaves, gen)


# ---- compositions drawn at test time ---------------------------------------------------------

def _primitives(T):
    return [
        ("scale", lambda s, b, h, q, kv: s * 0.75),
        ("softcap", lambda s, b, h, q, kv: 6 * torch.tanh(s / 6)),
        ("alibi", lambda s, b, h, q, kv: s + T["slopes"][h] * (kv - q)),
        ("bias", lambda s, b, h, q, kv: s + T["bias"][b, h, q, kv]),
        ("silu", lambda s, b, h, q, kv: s * torch.sigmoid(s)),
        ("relative", lambda s, b, h, q, kv: s + T["table"][q - kv + KV_LEN]),
        ("head_scale", lambda s, b, h, q, kv: s * (1 + T["slopes"][h])),
        ("window_penalty", lambda s, b, h, q, kv: torch.where(q - kv > 9, s - 2.0, s)),
    ]


def _compose(fns):
    def mod(s, b, h, q, kv):
        for f in fns:
            s = f(s, b, h, q, kv)
        return s
    return mod


@pytest.mark.parametrize("draw", range(6))
def test_random_composition(draw, gen):
    spec = {"slopes": ((HQ,), True), "bias": ((BATCH, HQ, Q_LEN, KV_LEN), True), "table": ((REL,), True)}
    ff, ref = _tensors(spec, gen)
    rng = random.Random(int(torch.randint(0, 2**31, (1,), generator=gen)))
    picks = rng.sample(range(len(_primitives(ff))), rng.randint(2, 4))
    mod = _compose([_primitives(ff)[i][1] for i in picks])
    ref_mod = _compose([_primitives(ref)[i][1] for i in picks])
    leaves = [(f"d{n}", ff[n], ref[n]) for n in ff]
    _check(mod, ref_mod, [(n, a, b) for n, a, b in leaves if _uses(mod, a)], gen, mask=None if draw % 2 else MASK)


def _uses(mod, tensor) -> bool:
    """Whether the traced graph captures `tensor` (a draw may not use every tensor)."""
    from flashflex._score_mod_graph import capture
    return any(t is tensor for t in capture(mod).tensors.values())
