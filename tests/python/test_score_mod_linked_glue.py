"""The Python glue of linked score mods (_score_mod_linked.py) on the CPU, with the native calls
stubbed: what reaches the binding (the mod tuple: kind, kernel handles, the hook's tensor
descriptors, each gather's gradient buffer) and how autograd routes the gradients the backward
kernel adds into those buffers back to the captured tensors (through .contiguous() and computed
constants), and which calls take the forward alone. The kernels themselves run in
test_score_mod_linked_cuda.py."""

from __future__ import annotations

import ctypes

import pytest
import torch

from flashflex import _C
from flashflex import _score_mod_linked as linked
from flashflex._score_mod_codegen import generate
from flashflex._score_mod_graph import capture

FWD, BWD = 11, 22  # stand-in kernel handles


class _Native:
    """Stubs of run_forward / run_backward: record the mod tuples; the backward adds `grad_value`
    to element 0 of every gather buffer, as the kernel's atomics would."""

    def __init__(self, grad_value=0.5):
        self.forward_mods, self.backward_mods, self.grad_value = [], [], grad_value

    def run_forward(self, q, k, v, mask_tensors, scale, mod, backend):
        self.forward_mods.append(mod)
        return q * 2.0, q.new_zeros(q.shape[:-1], dtype=torch.float32)

    def run_backward(self, dout, dlse, q, k, v, out, lse, mask_tensors, scale, mod, dbias, deterministic, backend):
        self.backward_mods.append(mod)
        for ptr in mod[6]:
            if ptr:
                ctypes.c_float.from_address(ptr).value += self.grad_value
        return dout * 2.0, torch.zeros_like(k), torch.zeros_like(v)


@pytest.fixture
def native(monkeypatch):
    stub = _Native()
    monkeypatch.setattr(linked, "run_forward", stub.run_forward)
    monkeypatch.setattr(linked, "run_backward", stub.run_backward)
    return stub


def _mod(fn):
    mod = linked.LinkedScoreMod(generate(capture(fn)), FWD, False, torch.bfloat16, 64)
    mod._backward_handle = BWD
    return mod


def _qkv():
    return (torch.randn(1, 4, 8, 64) for _ in range(3))


def test_the_forward_alone_without_gradients(native):
    gate = torch.randn(4)
    mod = _mod(lambda s, b, h, q, kv: s * torch.sigmoid(gate[h]))
    q, k, v = _qkv()
    out, _ = mod.attend(q, k, v, [], 0.125, False, 0)
    assert torch.equal(out, q * 2.0) and not out.requires_grad
    kind, _, _, _, handle, hooks, grads = native.forward_mods[0]
    assert kind == _C.SCORE_MOD_KINDS["linked"] and handle == FWD and grads == []
    assert len(hooks) == 1 and hooks[0][0] == gate.data_ptr() and hooks[0][3] == 0  # float32 code


def test_gradients_reach_a_learnable_tensor_and_a_computed_constant(native):
    gate = torch.randn(4, requires_grad=True)
    w = torch.randn(4, requires_grad=True)
    mod = _mod(lambda s, b, h, q, kv: s * torch.sigmoid(gate[h]) + torch.softmax(w, 0)[h])
    q, k, v = _qkv()
    q.requires_grad_()
    out, lse = mod.attend(q, k, v, [], 0.125, False, 0)
    out.sum().backward()
    mod_tuple = native.backward_mods[0]
    assert mod_tuple[4] == BWD and len(mod_tuple[6]) == len(mod.generated.gathers) == 2
    assert all(mod_tuple[6])  # both gathered tensors want their gradient
    assert torch.equal(q.grad, torch.full_like(q, 2.0))
    # element 0 of each buffer got 0.5: gate directly; w through softmax's Jacobian
    assert torch.equal(gate.grad, torch.tensor([0.5, 0.0, 0.0, 0.0]))
    sm = torch.softmax(w.detach(), 0)
    want = 0.5 * sm[0] * ((torch.arange(4) == 0).float() - sm)
    assert torch.allclose(w.grad, want)


def test_a_tensor_that_needs_no_gradient_gets_no_buffer(native):
    gate = torch.randn(4)
    mod = _mod(lambda s, b, h, q, kv: s * torch.sigmoid(gate[h]))
    q, k, v = _qkv()
    q.requires_grad_()
    out, _ = mod.attend(q, k, v, [], 0.125, False, 0)
    out.sum().backward()
    assert native.backward_mods[0][6] == [0]


def test_a_strided_learnable_tensor_is_read_densely(native):
    base = torch.randn(4, 2, requires_grad=True)
    mod = _mod(lambda s, b, h, q, kv: s * base[:, 0][h])  # a view with stride 2
    q, k, v = _qkv()
    out, _ = mod.attend(q, k, v, [], 0.125, False, 0)
    (_, _, _, _, _, hooks, _), = native.forward_mods
    assert hooks[0][1][0] == 1  # the contiguous copy's stride, matching the float32 buffer
    out.sum().backward()
    assert torch.equal(base.grad[:, 0], torch.tensor([0.5, 0.0, 0.0, 0.0])) and not base.grad[:, 1].any()


def test_deterministic_mode_refuses_atomically_added_gradients(native):
    gate = torch.randn(4, requires_grad=True)
    mod = _mod(lambda s, b, h, q, kv: s * torch.sigmoid(gate[h]))
    q, k, v = _qkv()
    with pytest.raises(NotImplementedError, match="added atomically"):
        mod.attend(q, k, v, [], 0.125, True, 0)
    with torch.no_grad():  # the forward alone is fine
        mod.attend(q, k, v, [], 0.125, True, 0)


def test_the_sm90_backward_at_head_dim_256_is_refused_before_any_work(native):
    mod = linked.LinkedScoreMod(generate(capture(lambda s, b, h, q, kv: s * torch.sigmoid(s))), FWD, False,
                                torch.bfloat16, 256, (9, 0), linked.SM90)
    q, k, v = (torch.randn(1, 4, 8, 256) for _ in range(3))
    with pytest.raises(NotImplementedError, match=r"sm90 backward of a linked score mod is built for head dims"):
        mod.attend(q.requires_grad_(), k, v, [], 0.125, False, linked.SM90)
    assert native.forward_mods == []


@pytest.mark.parametrize("capability,backend,head_dim,want", [
    ((9, 0), 0, 128, ("sm90", "sm_90a")),   # AUTO on Hopper: the sm90 kernels
    ((9, 0), 0, 256, ("sm80", "sm_90")),    # ... but the sm90 backward has no head dim 256
    ((9, 0), 1, 128, ("sm80", "sm_90")),    # SM80 on Hopper
    ((8, 6), 0, 64, ("sm80", "sm_86")),     # any other GPU: the sm80 kernels, linked for it
])
def test_the_backward_is_linked_from_the_family_its_backend_takes(native, monkeypatch, capability, backend,
                                                                   head_dim, want):
    loads = []
    monkeypatch.setattr(linked, "_load", lambda g, pass_, fam, arch, dtype, hd: loads.append((pass_, fam, arch))
                        or (BWD, False))
    mod = linked.LinkedScoreMod(generate(capture(lambda s, b, h, q, kv: s * torch.sigmoid(s))), FWD, False,
                                torch.bfloat16, head_dim, capability, backend)
    assert mod.backward_handle() == BWD
    names = {linked.SM80: "sm80", linked.SM90: "sm90"}
    assert [(p, names[f], a) for p, f, a in loads] == [(1, *want)]


def test_a_failed_link_of_the_backward_is_a_refusal_with_its_reason(native, monkeypatch):
    def fail(*args):
        raise linked.LinkError("nvJitLinkComplete failed (nvJitLinkResult 4): too old")
    monkeypatch.setattr(linked, "_load", fail)
    mod = linked.LinkedScoreMod(generate(capture(lambda s, b, h, q, kv: s * torch.sigmoid(s))), FWD, False,
                                torch.bfloat16, 64)
    q, k, v = _qkv()
    with pytest.raises(NotImplementedError, match="cannot be linked here: nvJitLinkComplete failed"):
        mod.attend(q.requires_grad_(), k, v, [], 0.125, False, 0)
