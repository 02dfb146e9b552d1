"""Non-finite inputs and non-positive scales through flex_attention and ttt_attention, on the CPU
path and on the GPU (the cuda cases skip without a device): a NaN or infinite value reaches, as
NaN, the rows that see it (out and lse, and their gradients), as the dense computation gives, so a
diverging run shows up in its loss; rows that see nothing still give out 0, lse -inf and dq 0;
scale 0 (uniform attention over the visible keys) and a negative scale match the float64
reference. Only what every correct backend must give is asserted: a masked key's NaN may or may
not reach rows of its tile (a dense product gives 0 * NaN = NaN there, the CPU path skips it).

Tolerances: out as helpers.TOL of the dtype (relative to max|ref|), gradients twice that (the
dtype rounding of P and dS before their products), lse as helpers.assert_lse_close."""

from __future__ import annotations

import math

import pytest
import torch

import flashflex
from dense_reference import alibi_mod, dense_attention, dense_mask
from eagle3_reference import sdpa_reference, valid_rows
from helpers import TOL, assert_close, assert_lse_close, randn
from mask_cases import causal_mod, padding_mod

NAN, INF = float("nan"), float("inf")
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.cuda)]
# The CUDA kernels take 16-bit inputs; the CPU path is checked in float32.
DTYPE = {"cpu": torch.float32, "cuda": torch.float16}


@pytest.fixture(autouse=True, params=["default", "sm80"])
def kernel_family(request, monkeypatch):
    """Every CUDA case on both kernel families: the default (sm90 on compute capability 9.x) and
    the portable sm80 kernels (the process default FLASHFLEX_BACKEND would set, patched)."""
    if request.param == "sm80":
        if request.getfixturevalue("device") != "cuda":
            pytest.skip("the kernel family is a CUDA choice")
        from flashflex import _C, _kernel_options
        monkeypatch.setattr(_kernel_options, "_DEFAULT_BACKEND", _C.BACKENDS["SM80"])
    return request.param


def _tensors(gen, device, *shapes, requires_grad=False):
    out = []
    for shape in shapes:
        t = randn(gen, *shape, dtype=DTYPE[device]).to(device)
        out.append(t.requires_grad_(requires_grad))
    return out


def _causal(length, device, heads=None):
    return flashflex.create_block_mask(flashflex.masks.causal(), None, heads, length, length, device=device)


def _backward(out, q, k, v, gen):
    dout = randn(gen, *out.shape, dtype=out.dtype).to(out.device)
    return torch.autograd.grad(out, (q, k, v), dout)


# ---- NaN and inf reach the rows that see them ------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_nan_in_query_reaches_its_row(device, gen):
    q, k, v = _tensors(gen, device, (1, 2, 200, 64), (1, 2, 200, 64), (1, 2, 200, 64), requires_grad=True)
    with torch.no_grad():
        q[0, 1, 150, 5] = NAN
    out, lse = flashflex.flex_attention(q, k, v, block_mask=_causal(200, device), return_lse=True)
    assert torch.isnan(out[0, 1, 150]).all() and torch.isnan(lse[0, 1, 150]), "the NaN row must be NaN"
    others = torch.ones(2, 200, dtype=torch.bool)
    others[1, 150] = False
    assert torch.isfinite(out[0][others.to(device)]).all() and torch.isfinite(lse[0][others.to(device)]).all()
    dq, dk, dv = _backward(out, q, k, v, gen)
    assert torch.isnan(dq[0, 1, 150]).all(), "its gradient too"
    assert torch.isnan(dk[0, 1, :151]).any(dim=-1).all() and torch.isnan(dv[0, 1, :151]).any(dim=-1).all()


@pytest.mark.parametrize("device", DEVICES)
def test_minus_inf_query_row_is_nan(device, gen):
    # -inf times keys of both signs sums +inf and -inf: NaN scores, as in a dense product.
    q, k, v = _tensors(gen, device, (1, 1, 130, 64), (1, 1, 130, 64), (1, 1, 130, 64))
    q[0, 0, 7] = -INF
    out, lse = flashflex.flex_attention(q, k, v, return_lse=True)
    assert torch.isnan(out[0, 0, 7]).all() and torch.isnan(lse[0, 0, 7])
    assert torch.isfinite(out[0, 0, 8:]).all() and torch.isfinite(lse[0, 0, 8:]).all()


@pytest.mark.parametrize("device", DEVICES)
def test_nan_in_value_reaches_the_rows_that_see_it(device, gen):
    q, k, v = _tensors(gen, device, (1, 1, 200, 64), (1, 1, 200, 64), (1, 1, 200, 64))
    v[0, 0, 40, 3] = NAN
    out, lse = flashflex.flex_attention(q, k, v, block_mask=_causal(200, device), return_lse=True)
    assert torch.isnan(out[0, 0, 40:, 3]).all(), "every row that sees key 40"
    assert torch.isfinite(out[0, 0, :, 4:]).all() and torch.isfinite(lse).all(), "nothing else"


@pytest.mark.parametrize("device", DEVICES)
def test_nan_alibi_slope_reaches_its_head(device, gen):
    q, k, v = _tensors(gen, device, (1, 2, 130, 64), (1, 2, 130, 64), (1, 2, 130, 64))
    slopes = torch.tensor([0.25, NAN], device=device)
    out, lse = flashflex.flex_attention(q, k, v, score_mod=flashflex.score_mods.alibi(slopes), return_lse=True)
    assert torch.isnan(out[0, 1]).all() and torch.isnan(lse[0, 1]).all()
    assert torch.isfinite(out[0, 0]).all() and torch.isfinite(lse[0, 0]).all()


@pytest.mark.parametrize("device", DEVICES)
def test_fully_masked_rows_ignore_their_nan(device, gen):
    # Rows >= 100 see nothing (padding); rows 128.. (a whole empty tile row) hold NaN.
    q, k, v = _tensors(gen, device, (1, 1, 256, 64), (1, 1, 256, 64), (1, 1, 256, 64), requires_grad=True)
    with torch.no_grad():
        q[0, 0, 128:] = NAN
    mask = flashflex.create_block_mask(flashflex.masks.padding(q_lengths=[100]), None, None, 256, 256, device=device)
    out, lse = flashflex.flex_attention(q, k, v, block_mask=mask, return_lse=True)
    assert torch.all(out[0, 0, 100:] == 0) and torch.all(torch.isneginf(lse[0, 0, 100:]))
    assert torch.isfinite(out[0, 0, :100]).all()
    dq, dk, dv = _backward(out, q, k, v, gen)
    assert torch.all(dq[0, 0, 100:] == 0)
    assert torch.isfinite(dq[0, 0, :100]).all() and torch.isfinite(dk).all() and torch.isfinite(dv).all()


# ---- scale 0 and negative scales -------------------------------------------------------------

def _check_against_reference(q, k, v, mask_mod, score_mod, ref_mod, scale, block_mask, gen):
    out, lse = flashflex.flex_attention(q, k, v, block_mask=block_mask, score_mod=score_mod, scale=scale,
                                        return_lse=True, enable_gqa=q.shape[1] != k.shape[1])
    leaves = [t.detach().cpu().double().requires_grad_() for t in (q, k, v)]
    mask = None if mask_mod is None else dense_mask(mask_mod, q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    ref_out, ref_lse = dense_attention(*leaves, mask, ref_mod, scale)
    dtype = q.dtype
    assert_close(out, ref_out, TOL[dtype], "out")
    assert_lse_close(lse, ref_lse)
    dout = randn(gen, *out.shape, dtype=dtype)
    grads = torch.autograd.grad(out, (q, k, v), dout.to(out.device))
    ref_grads = torch.autograd.grad(ref_out, leaves, dout.double())
    for name, got, want in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert_close(got, want, 2 * TOL[dtype], name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale", [0.0, -0.125], ids=["zero", "negative"])
@pytest.mark.parametrize("mask_name", ["none", "causal", "padding"])
def test_scale_zero_and_negative(device, scale, mask_name, gen):
    # Causal and padding masks give partial tiles (masked scores inside visited tiles) and, for
    # padding, fully masked rows; GQA with two query heads per key head.
    q, k, v = _tensors(gen, device, (2, 4, 200, 64), (2, 2, 200, 64), (2, 2, 200, 64), requires_grad=True)
    mask_mod, block_mask = None, None
    if mask_name == "causal":
        mask_mod, block_mask = causal_mod(), _causal(200, device)
    elif mask_name == "padding":
        lengths = torch.tensor([200, 77])
        mask_mod = padding_mod(lengths, lengths)
        block_mask = flashflex.create_block_mask(flashflex.masks.padding(lengths, lengths), 2, None, 200, 200,
                                                 device=device)
    _check_against_reference(q, k, v, mask_mod, None, None, scale, block_mask, gen)


@pytest.mark.parametrize("device", DEVICES)
def test_scale_zero_with_a_score_mod(device, gen):
    q, k, v = _tensors(gen, device, (1, 2, 150, 64), (1, 2, 150, 64), (1, 2, 150, 64), requires_grad=True)
    slopes = torch.tensor([0.5, -0.25])
    _check_against_reference(q, k, v, causal_mod(), flashflex.score_mods.alibi(slopes.to(device)),
                             alibi_mod(slopes.double()), 0.0, _causal(150, device), gen)


# ---- ttt_attention ---------------------------------------------------------------------------

def _ttt_inputs(gen, device, step=2, t=150, requires_grad=False):
    q, *blocks = _tensors(gen, device, *([(2, 2, t, 64)] * (2 * step + 3)), requires_grad=requires_grad)
    return q, blocks[:step + 1], blocks[step + 1:]


@pytest.mark.parametrize("device", DEVICES)
def test_ttt_nan_in_query_reaches_its_row(device, gen):
    q, k_blocks, v_blocks = _ttt_inputs(gen, device)
    q[1, 0, 60, 0] = NAN
    out, lse = flashflex.eagle3.ttt_attention(q, k_blocks, v_blocks, return_lse=True)
    assert torch.isnan(out[1, 0, 60]).all() and torch.isnan(lse[1, 0, 60])
    assert torch.isfinite(out[0]).all() and torch.isfinite(out[1, 1]).all()


@pytest.mark.parametrize("device", DEVICES)
def test_ttt_invalid_rows_ignore_their_nan(device, gen):
    # Sample 1 has length 90: rows >= 90 - step are invalid (out 0, lse -inf, dq 0) whatever q holds.
    step = 2
    q, k_blocks, v_blocks = _ttt_inputs(gen, device, step, requires_grad=True)
    with torch.no_grad():
        q[1, :, 100:] = NAN
    lengths = [150, 90]
    out, lse = flashflex.eagle3.ttt_attention(q, k_blocks, v_blocks, seq_lengths=lengths, return_lse=True)
    assert torch.all(out[1, :, 88:] == 0) and torch.all(torch.isneginf(lse[1, :, 88:]))
    assert torch.isfinite(out[0]).all() and torch.isfinite(out[1, :, :88]).all()
    grads = torch.autograd.grad(out, [q], torch.ones_like(out))
    assert torch.all(grads[0][1, :, 88:] == 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale", [0.0, -0.125], ids=["zero", "negative"])
def test_ttt_scale_zero_and_negative(device, scale, gen):
    q, k_blocks, v_blocks = _ttt_inputs(gen, device, requires_grad=True)
    lengths = torch.tensor([150, 97])
    out, lse = flashflex.eagle3.ttt_attention(q, k_blocks, v_blocks, seq_lengths=lengths.to(device), scale=scale,
                                              return_lse=True)
    leaves = [t.detach().cpu().double().requires_grad_() for t in (q, *k_blocks, *v_blocks)]
    n = len(k_blocks)
    ref_out, ref_lse = sdpa_reference(leaves[0], leaves[1:1 + n], leaves[1 + n:], lengths, scale)
    dtype = q.dtype
    assert_close(out, ref_out, TOL[dtype], "out")
    assert_lse_close(lse, ref_lse)
    dout = randn(gen, *out.shape, dtype=dtype)
    grads = torch.autograd.grad(out, [q, *k_blocks, *v_blocks], dout.to(out.device))
    ref_grads = torch.autograd.grad(ref_out, leaves, dout.double())
    for i, (got, want) in enumerate(zip(grads, ref_grads)):
        assert_close(got, want, 2 * TOL[dtype], f"gradient {i}")
    assert valid_rows(lengths, 2, 150, n - 1)[1].sum() == 95
