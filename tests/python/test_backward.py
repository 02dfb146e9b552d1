"""Gradients of flashflex.flex_attention (query, key, value, the bias of score_mods.bias, and
through lse) against float64 autograd through dense_reference.dense_attention on the same
(rounded) inputs. torch's flex attention has no CPU backward, so the dense formulation, checked
against torch's forward and finite differences in test_dense_reference.py, is the oracle.
Tolerances: helpers.TOL, applied to each gradient relative to its own largest magnitude."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask as torch_create_block_mask

import flashflex
from dense_reference import alibi_mod, bias_mod, dense_attention, dense_mask, softcap_mod
from helpers import TOL, assert_close, assert_lse_close, make_qkv, randn
from mask_cases import build_case, causal_mod, sliding_window_mod


def _check_grads(q, k, v, mask_mod=None, block_mask="auto", ff_score_mod=None, ref_score_mod=None,
                 extra=(), through_lse=False, gen=None):
    """Backward of sum(out * dout) (+ sum(lse * dlse) over rows that see keys) in flashflex and in
    the float64 reference. `extra`: [(flashflex leaf, float64 reference leaf)] also compared."""
    batch, hq, q_len = q.shape[:3]
    kv_len = k.shape[2]
    if block_mask == "auto":
        block_mask = None if mask_mod is None else torch_create_block_mask(mask_mod, None, None, q_len, kv_len,
                                                                           device="cpu")
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    ref_leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    dout = randn(gen, *q.shape[:3], v.shape[3], dtype=q.dtype)
    dlse = randn(gen, batch, hq, q_len)

    out, lse = flashflex.flex_attention(*leaves, score_mod=ff_score_mod, block_mask=block_mask,
                                        enable_gqa=hq != k.shape[1], return_lse=True)
    mask = None if mask_mod is None else dense_mask(mask_mod, batch, hq, q_len, kv_len)
    ref_out, ref_lse = dense_attention(*ref_leaves, mask, ref_score_mod)
    assert_close(out, ref_out, TOL[q.dtype], "out")
    assert_lse_close(lse, ref_lse)

    loss = (out.float() * dout.float()).sum()
    ref_loss = (ref_out * dout.double()).sum()
    if through_lse:
        sees = torch.isfinite(ref_lse)
        loss = loss + (torch.where(sees, lse, torch.zeros_like(lse)) * dlse).sum()
        ref_loss = ref_loss + (torch.where(sees, ref_lse, torch.zeros_like(ref_lse)) * dlse.double()).sum()
    loss.backward()
    ref_loss.backward()

    pairs = list(zip(("dq", "dk", "dv"), leaves, ref_leaves)) + [
        (f"d(extra {i})", a, b) for i, (a, b) in enumerate(extra)]
    for name, leaf, ref_leaf in pairs:
        assert leaf.grad is not None, f"{name}: no gradient"
        assert leaf.grad.dtype == leaf.dtype, f"{name}: dtype {leaf.grad.dtype}, expected {leaf.dtype}"
        assert leaf.grad.shape == leaf.shape
        assert_close(leaf.grad, ref_leaf.grad, TOL[leaf.dtype], name)
    return leaves


@pytest.mark.parametrize("case_name", ["causal", "causal_negative_offset", "sliding_window_two_sided",
                                       "document_cross", "prefix_lm", "padding", "eagle3", "nested_combination"])
def test_grads_builtin_masks(case_name, gen):
    case = build_case(case_name, 2, gen)
    q, k, v = make_qkv(gen, 2, 2, 1, case.q_len, case.kv_len, 64)
    block_mask = flashflex.create_block_mask(case.builtin(flashflex.masks), 2, None, case.q_len, case.kv_len)
    _check_grads(q, k, v, case.torch_mask_mod, block_mask, gen=gen)


@pytest.mark.parametrize("case_name", ["random_table", "random_tiled_table", "random_sliding_window"])
def test_grads_random_mask_mods(case_name, gen):
    case = build_case(case_name, 2, gen, heads=2)
    q, k, v = make_qkv(gen, 2, 2, 2, case.q_len, case.kv_len, 64)
    block_mask = torch_create_block_mask(case.torch_mask_mod, 2, 2, case.q_len, case.kv_len, device="cpu")
    _check_grads(q, k, v, case.torch_mask_mod, block_mask, gen=gen)


@pytest.mark.parametrize("ratio", [1, 4, 5, 7])
def test_grads_gqa_ratio(ratio, gen):
    # dk, dv sum over the query heads of a group.
    hkv = 2 if ratio <= 4 else 1
    q, k, v = make_qkv(gen, 2, hkv * ratio, hkv, 257, 257, 64)
    _check_grads(q, k, v, causal_mod(), gen=gen)


@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_grads_head_dim(head_dim, gen):
    q, k, v = make_qkv(gen, 1, 2, 1, 257, 300, head_dim)
    _check_grads(q, k, v, sliding_window_mod(70, 10, 43), gen=gen)


@pytest.mark.parametrize("q_len,kv_len", [(1, 1), (17, 17), (1, 300), (300, 17), (130, 257), (257, 130)])
def test_grads_lengths(q_len, kv_len, gen):
    q, k, v = make_qkv(gen, 2, 2, 2, q_len, kv_len, 64)
    _check_grads(q, k, v, causal_mod(kv_len - q_len), gen=gen)


def test_grads_no_mask(gen):
    q, k, v = make_qkv(gen, 2, 4, 2, 130, 257, 64)
    _check_grads(q, k, v, gen=gen)


def test_grads_through_lse(gen):
    # loss = sum(out * dout) + sum(lse * dlse): the dlse term reaches q and k only.
    q, k, v = make_qkv(gen, 2, 4, 2, 257, 300, 64)
    _check_grads(q, k, v, causal_mod(43), through_lse=True, gen=gen)


def test_grads_through_lse_only(gen):
    q, k, v = (t.requires_grad_() for t in make_qkv(gen, 1, 2, 2, 130, 130, 64))
    _, lse = flashflex.flex_attention(q, k, v, return_lse=True)
    lse.sum().backward()
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    dense_attention(q64, k64, v64)[1].sum().backward()
    assert_close(q.grad, q64.grad, TOL[torch.float32], "dq")
    assert_close(k.grad, k64.grad, TOL[torch.float32], "dk")
    assert v.grad is None or torch.all(v.grad == 0), "lse does not depend on value"


@pytest.mark.parametrize("mod_name", ["softcap", "alibi"])
def test_grads_score_mods(mod_name, gen):
    hq = 4
    q, k, v = make_qkv(gen, 2, hq, 2, 257, 257, 64)
    if mod_name == "softcap":
        ff_mod, ref_mod = flashflex.score_mods.softcap(2.0), softcap_mod(2.0)
    else:
        slopes = torch.tensor([2.0 ** -(i + 1) for i in range(hq)])
        ff_mod, ref_mod = flashflex.score_mods.alibi(slopes), alibi_mod(slopes.double())
    _check_grads(q, k, v, causal_mod(), ff_score_mod=ff_mod, ref_score_mod=ref_mod, through_lse=True, gen=gen)


@pytest.mark.parametrize("bias_batch,bias_heads", [(2, 4), (1, 4), (2, 1), (1, 1)],
                         ids=["full", "batch_broadcast", "head_broadcast", "both_broadcast"])
def test_grads_bias_including_bias_grad(bias_batch, bias_heads, gen):
    # The bias gradient sums over the dims it is broadcast along.
    batch, hq, hkv, q_len, kv_len = 2, 4, 2, 130, 257
    q, k, v = make_qkv(gen, batch, hq, hkv, q_len, kv_len, 64)
    bias = randn(gen, bias_batch, bias_heads, q_len, kv_len).requires_grad_()
    ref_bias = bias.detach().double().requires_grad_()
    _check_grads(q, k, v, causal_mod(kv_len - q_len), ff_score_mod=flashflex.score_mods.bias(bias),
                 ref_score_mod=bias_mod(ref_bias), extra=[(bias, ref_bias)], through_lse=True, gen=gen)
    # Masked positions get no bias gradient.
    hidden = ~dense_mask(causal_mod(kv_len - q_len), 1, 1, q_len, kv_len)[0, 0]
    assert torch.all(bias.grad[..., hidden] == 0)


def test_bias_without_grad_gets_none(gen):
    q, k, v = (t.requires_grad_() for t in make_qkv(gen, 1, 2, 2, 130, 130, 64))
    bias = randn(gen, 1, 2, 130, 130)
    out = flashflex.flex_attention(q, k, v, score_mod=flashflex.score_mods.bias(bias))
    out.sum().backward()
    assert bias.grad is None
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_grads_fully_masked_rows_are_zero(gen):
    q_len, kv_len = 300, 257

    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx % 3 != 0) & (q_idx >= 140) & (kv_idx <= q_idx)

    q, k, v = make_qkv(gen, 2, 2, 2, q_len, kv_len, 64)
    block_mask = torch_create_block_mask(mask_mod, None, None, q_len, kv_len, device="cpu")
    q_leaf, k_leaf, v_leaf = _check_grads(q, k, v, mask_mod, block_mask, through_lse=True, gen=gen)
    empty = ~dense_mask(mask_mod, 2, 2, q_len, kv_len).any(-1)  # [B, H, Lq]
    assert int(empty.sum()) > 0
    assert torch.all(q_leaf.grad[empty] == 0)
    assert not any(torch.isnan(t.grad).any() for t in (q_leaf, k_leaf, v_leaf))


def test_grads_keys_nobody_sees_are_zero(gen):
    # Keys >= 200 are hidden from every row: their dk and dv must be exactly 0.
    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx < 200) & (kv_idx <= q_idx + 50)

    q, k, v = make_qkv(gen, 1, 2, 2, 257, 300, 64)
    block_mask = torch_create_block_mask(mask_mod, None, None, 257, 300, device="cpu")
    _, k_leaf, v_leaf = _check_grads(q, k, v, mask_mod, block_mask, gen=gen)
    assert torch.all(k_leaf.grad[:, :, 200:] == 0) and torch.all(v_leaf.grad[:, :, 200:] == 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_grads_half_precision(dtype, gen):
    # Reference on the rounded inputs; gradients come back in dtype (TOL[dtype]).
    q, k, v = make_qkv(gen, 2, 4, 1, 257, 300, 128, dtype=dtype)
    _check_grads(q, k, v, causal_mod(43), through_lse=True, gen=gen)


def test_grads_transposed_layout(gen):
    batch, hq, hkv, q_len, kv_len, d = 2, 4, 2, 257, 130, 64
    q = randn(gen, batch, q_len, hq, d).transpose(1, 2)
    k = randn(gen, batch, kv_len, hkv, d).transpose(1, 2)
    v = randn(gen, batch, kv_len, hkv, d).transpose(1, 2)
    _check_grads(q, k, v, sliding_window_mod(60, 60, -127), gen=gen)


def test_grads_are_deterministic(gen):
    q, k, v = make_qkv(gen, 1, 4, 1, 257, 257, 64)
    block_mask = flashflex.create_block_mask(flashflex.masks.causal(), None, None, 257, 257)
    grads = []
    for _ in range(2):
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        flashflex.flex_attention(*leaves, block_mask=block_mask, enable_gqa=True).square().sum().backward()
        grads.append([t.grad for t in leaves])
    assert all(torch.equal(a, b) for a, b in zip(*grads))
