"""Linked score mods on the GPU (_score_mod_linked.py): callables no built-in expresses run on the
kernels with their generated hook linked in, on both kernel families (backend AUTO: the sm90
kernels on Hopper; SM80: the sm80 kernels, on any GPU), against the float64 reference with the
callable evaluated on every element, over odd lengths, GQA, both layouts, a block mask with
partial tiles and rows that see no key, both dtypes and every head dim; the backward (dq, dk, dv,
the captured tensors' gradients, through lse too) at every head dim (256 on the sm80 kernels),
the deterministic mode bit for bit; what cannot run (an sm90 backward at head dim 256,
atomically added gradients in deterministic mode, backend SM90 off Hopper) is refused with its
reason; a loaded kernel replays under CUDA-graph capture; the disk cache serves a fresh process.

Tolerance, as in test_score_mod_callables_cuda.py: 2 x the error of a low-precision dense
attention against the same float64 reference, plus 2 ulps."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import flashflex
from flashflex import _C
from flashflex._score_mod_resolve import resolve_callable
from dense_reference import dense_attention, dense_mask
from helpers import make_qkv
from test_cuda_backward import ULP, lowp_attention, rel_err
from test_score_mod_callables import vmapped

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 8,
                                 reason="the CUDA kernels need compute capability 8.0 or newer")]
HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9
needs_hopper = pytest.mark.skipif(not HOPPER, reason="the sm90 kernels run on Hopper")
# AUTO: the sm90 family on Hopper (the sm80 one elsewhere); SM80: the sm80 family everywhere
BACKENDS = pytest.mark.parametrize("backend", ["AUTO", "SM80"])


def _mask(b, h, q, kv):  # partial tiles on the diagonal; rows 0..39 see no key
    return (kv <= q + 5) & (q >= 40)


def _tensors(device, dtype=torch.float32):
    g = torch.Generator().manual_seed(7)
    return {"gate": torch.randn(8, generator=g).to(device, dtype),
            "table": torch.randn(2, 33, generator=g).to(device, dtype)}


# name: builder from the captured tensors to the callable (none of them a built-in mod)
MODS = {
    "silu": lambda T: lambda s, b, h, q, kv: s * torch.sigmoid(s),
    "gated_softcap": lambda T: lambda s, b, h, q, kv: 30 * torch.tanh(s / 30) * torch.sigmoid(T["gate"][h]),
    # multiplicative, so no built-in (an additive table would run as a materialised bias)
    "scaled_relative_table": lambda T: lambda s, b, h, q, kv: s * (1 + 0.5 * torch.tanh(
        T["table"][b % 2, torch.clamp(q - kv, -16, 16) + 16])),
    "where_minus_inf": lambda T: lambda s, b, h, q, kv: torch.where(q - kv <= 20, s, torch.full_like(s, float("-inf"))),
}


def _mod(name):
    return MODS[name](_tensors("cuda"))


def _check(gen, mod_name, dtype, head_dim, backend, layout="bhtd", batch=2, hq=8, hkv=2, q_len=301, kv_len=517):
    mod = _mod(mod_name)
    q, k, v = (t.cuda() for t in make_qkv(gen, batch, hq, hkv, q_len, kv_len, head_dim, dtype=dtype))
    if layout == "bthd":  # [B, T, H, D] storage seen as [B, H, T, D]
        q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    block_mask = flashflex.create_block_mask(_mask, None, None, q_len, kv_len, device="cuda")
    resolved = resolve_callable(mod, q, k, _C.BACKENDS[backend])
    assert resolved.linked is not None, "expected the linked path"
    assert resolved.linked.family == (_C.BACKENDS["SM90"] if HOPPER and backend == "AUTO" else _C.BACKENDS["SM80"])
    with torch.no_grad():
        out, lse = flashflex.flex_attention(q, k, v, score_mod=mod, block_mask=block_mask, enable_gqa=True,
                                            return_lse=True, kernel_options={"BACKEND": backend})
    mask = dense_mask(_mask, batch, hq, q_len, kv_len)
    ref_mod = MODS[mod_name](_tensors("cpu", torch.float64))
    want, want_lse = dense_attention(*(t.cpu().double() for t in (q, k, v)), mask, vmapped(ref_mod))
    base, _ = lowp_attention(q, k, v, mask.cuda(), vmapped(mod), head_dim ** -0.5)
    err, base_err = rel_err(out.cpu(), want), rel_err(base.cpu(), want)
    tol = 2 * base_err + 2 * ULP[dtype]
    assert err <= tol, f"{mod_name} out: error {err:.3e} > {tol:.3e} (2 x low-precision {base_err:.3e} + 2 ulp)"
    seen = torch.isfinite(want_lse)
    assert torch.equal(torch.isfinite(lse.cpu()), seen), f"{mod_name}: rows that see nothing differ"
    assert (out.cpu()[~seen] == 0).all(), f"{mod_name}: a row that sees nothing is not 0"
    lse_err = (lse.cpu().double()[seen] - want_lse[seen]).abs().max().item()
    assert lse_err <= 16 * ULP[dtype], f"{mod_name} lse: error {lse_err:.3e}"


@BACKENDS
@pytest.mark.parametrize("mod_name", ["silu", "gated_softcap", "scaled_relative_table", "where_minus_inf"])
def test_linked_mods_bf16_hdim128(mod_name, backend, gen):
    _check(gen, mod_name, torch.bfloat16, 128, backend)


@BACKENDS
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_every_kernel(dtype, head_dim, backend, gen):
    _check(gen, "scaled_relative_table", dtype, head_dim, backend)


@BACKENDS
@pytest.mark.parametrize("hq,hkv", [(5, 1), (7, 7), (12, 4)])
def test_gqa_and_the_other_layout(hq, hkv, backend, gen):
    _check(gen, "gated_softcap" if hq <= 8 else "silu", torch.bfloat16, 64, backend, layout="bthd", batch=1, hq=hq,
           hkv=hkv, q_len=130, kv_len=129)


def _grads(attend, q, k, v, leaves, dout, dlse):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out, lse = attend(q, k, v)
    torch.autograd.backward([out.to(dout.dtype), lse.masked_fill(~torch.isfinite(lse), 0).to(dlse.dtype)], [dout, dlse])
    grads = [t.grad for t in (q, k, v, *leaves)]
    for t in leaves:
        t.grad = None
    return [out] + grads


def _check_backward(gen, mod_name, dtype, head_dim, backend, deterministic=False, batch=2, hq=8, hkv=2, q_len=203,
                    kv_len=333):
    """out, dq, dk, dv and the captured tensors' gradients (through lse too) against float64."""
    tensors = {n: t.requires_grad_() for n, t in _tensors("cuda").items()}
    ref_tensors = {n: t.requires_grad_() for n, t in _tensors("cpu", torch.float64).items()}
    low_tensors = {n: t.detach().clone().requires_grad_() for n, t in tensors.items()}
    mod, ref_mod, low_mod = MODS[mod_name](tensors), MODS[mod_name](ref_tensors), MODS[mod_name](low_tensors)
    q, k, v = (t.cuda() for t in make_qkv(gen, batch, hq, hkv, q_len, kv_len, head_dim, dtype=dtype))
    dout = torch.randn(batch, hq, q_len, head_dim, generator=gen).cuda()
    dlse = torch.randn(batch, hq, q_len, generator=gen).cuda()
    block_mask = flashflex.create_block_mask(_mask, None, None, q_len, kv_len, device="cuda")
    mask = dense_mask(_mask, batch, hq, q_len, kv_len)
    options = {"deterministic": deterministic, "BACKEND": backend}
    used = [n for n in tensors if n in _USES[mod_name]]
    got = _grads(lambda q, k, v: flashflex.flex_attention(q, k, v, score_mod=mod, block_mask=block_mask,
                                                          enable_gqa=True, return_lse=True, kernel_options=options),
                 q, k, v, [tensors[n] for n in used], dout, dlse)
    want = _grads(lambda q, k, v: dense_attention(q, k, v, mask, vmapped(ref_mod)),
                  *(t.cpu().double() for t in (q, k, v)), [ref_tensors[n] for n in used], dout.cpu().double(),
                  dlse.cpu().double())
    base = _grads(lambda q, k, v: lowp_attention(q, k, v, mask.cuda(), vmapped(low_mod), head_dim ** -0.5),
                  q, k, v, [low_tensors[n] for n in used], dout, dlse)
    floor = 0.01 * max(w.abs().max().item() for w in want[1:4])
    for what, g, w, b in zip(["out", "dq", "dk", "dv"] + [f"d{n}" for n in used], got, want, base):
        err, base_err = rel_err(g.cpu(), w, floor), rel_err(b.cpu(), w, floor)
        tol = 2 * base_err + 2 * ULP[dtype]
        assert err <= tol, f"{mod_name} {what}: error {err:.3e} > {tol:.3e} (2 x low-precision {base_err:.3e} + 2 ulp)"
    return got


_USES = {"silu": (), "gated_softcap": ("gate",), "scaled_relative_table": ("table",), "where_minus_inf": ()}


@BACKENDS
@pytest.mark.parametrize("mod_name", list(MODS))
def test_backward_bf16_hdim128(mod_name, backend, gen):
    _check_backward(gen, mod_name, torch.bfloat16, 128, backend)


@BACKENDS
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_backward_hdim64_gqa_odd_lengths(dtype, backend, gen):
    _check_backward(gen, "scaled_relative_table", dtype, 64, backend, batch=1, hq=12, hkv=4, q_len=130, kv_len=129)


@BACKENDS
def test_backward_hdim256_runs_on_the_sm80_kernels(backend, gen):
    # the sm90 backward has no head dim 256: AUTO takes the sm80 one there, as for the built-in mods
    _check_backward(gen, "scaled_relative_table", torch.bfloat16, 256, backend, batch=1, hq=4, hkv=2, q_len=150,
                    kv_len=141)


@BACKENDS
def test_deterministic_backward_is_bit_identical(backend, gen):
    seed = gen.initial_seed()  # the same inputs twice
    first = _check_backward(torch.Generator().manual_seed(seed), "silu", torch.bfloat16, 128, backend,
                            deterministic=True)
    again = _check_backward(torch.Generator().manual_seed(seed), "silu", torch.bfloat16, 128, backend,
                            deterministic=True)
    for a, b in zip(first, again):
        assert torch.equal(a, b)


@needs_hopper
def test_an_sm90_backward_at_head_dim_256_is_refused(gen):
    q, k, v = (t.cuda() for t in make_qkv(gen, 1, 4, 4, 64, 64, 256, dtype=torch.bfloat16))
    with pytest.raises(NotImplementedError, match=r"sm90 backward of a linked score mod is built for head dims"):
        flashflex.flex_attention(q.requires_grad_(), k, v, score_mod=_mod("silu"), kernel_options={"BACKEND": "SM90"})


@BACKENDS
def test_learnable_tensors_in_deterministic_mode_are_refused(backend, gen):
    q, k, v = (t.cuda() for t in make_qkv(gen, 1, 8, 8, 64, 64, 64, dtype=torch.bfloat16))
    gate = torch.randn(8, device="cuda", requires_grad=True)
    with pytest.raises(NotImplementedError, match="added atomically"):
        flashflex.flex_attention(q, k, v, score_mod=MODS["gated_softcap"]({"gate": gate}),
                                 kernel_options={"deterministic": True, "BACKEND": backend})


@BACKENDS
def test_cuda_graph_replays_a_loaded_kernel(backend, gen):
    mod = _mod("gated_softcap")
    options = {"BACKEND": backend}
    q, k, v = (t.cuda() for t in make_qkv(gen, 1, 8, 2, 257, 257, 128, dtype=torch.bfloat16))
    with torch.no_grad():
        flashflex.flex_attention(q, k, v, score_mod=mod, enable_gqa=True, kernel_options=options)  # loads outside
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = flashflex.flex_attention(q, k, v, score_mod=mod, enable_gqa=True, kernel_options=options)
        for _ in range(2):
            q.copy_(torch.randn_like(q))
            graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(out, flashflex.flex_attention(q, k, v, score_mod=mod, enable_gqa=True,
                                                             kernel_options=options))


@pytest.mark.skipif(HOPPER, reason="elsewhere: the refusal")
def test_off_hopper_backend_sm90_is_refused(gen):
    q, k, v = (t.cuda() for t in make_qkv(gen, 1, 4, 4, 64, 64, 64, dtype=torch.bfloat16))
    with pytest.raises(NotImplementedError, match="backend SM90 needs a Hopper GPU"):
        flashflex.flex_attention(q, k, v, score_mod=_mod("silu"), kernel_options={"BACKEND": "SM90"})


def test_the_disk_cache_serves_a_fresh_process(tmp_path):
    script = textwrap.dedent("""
        import torch, flashflex
        from flashflex._score_mod_resolve import resolve_callable
        q = torch.randn(1, 2, 64, 64, device="cuda", dtype=torch.bfloat16)
        mod = lambda s, b, h, q_idx, kv_idx: s * torch.sigmoid(s) + 0.125
        print(resolve_callable(mod, q, q).linked.from_cache)
    """)
    env = dict(os.environ, FLASHFLEX_CACHE_DIR=str(tmp_path))
    runs = [subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
            for _ in range(2)]
    assert [r.stdout.strip() for r in runs] == ["False", "True"], [r.stderr for r in runs]
