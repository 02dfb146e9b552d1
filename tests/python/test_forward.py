"""Forward pass of flashflex.flex_attention against torch's flex_attention in float64 on the same
(rounded) inputs: GQA ratios, head dims, ragged and unequal lengths, score mods, return_lse,
half precision, strided layouts. Tolerances: helpers.TOL."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask as torch_create_block_mask

import flashflex
from dense_reference import alibi_mod, bias_mod, dense_attention, dense_mask, softcap_mod
from helpers import TOL, assert_close, assert_lse_close, make_qkv, randn, torch_flex_reference
from mask_cases import causal_mod, sliding_window_mod

F32 = torch.float32


def _check(q, k, v, mask_mod=None, ff_score_mod=None, ref_score_mod=None, scale=None, block_mask="auto"):
    """flashflex on (q, k, v) against torch flex in float64; returns flashflex's (out, lse)."""
    if block_mask == "auto":
        block_mask = None if mask_mod is None else torch_create_block_mask(
            mask_mod, None, None, q.shape[2], k.shape[2], device="cpu")
    out, lse = flashflex.flex_attention(q, k, v, score_mod=ff_score_mod, block_mask=block_mask, scale=scale,
                                        enable_gqa=q.shape[1] != k.shape[1], return_lse=True)
    ref_out, ref_lse = torch_flex_reference(q, k, v, mask_mod, ref_score_mod, scale)
    assert out.dtype == q.dtype
    assert out.shape == q.shape[:3] + v.shape[3:]
    assert lse.shape == q.shape[:3]
    assert_close(out, ref_out, TOL[q.dtype], "out")
    assert_lse_close(lse, ref_lse)
    return out, lse


def test_supported_head_dims():
    assert list(flashflex.supported_head_dims()) == [64, 128, 256]


@pytest.mark.parametrize("ratio", [1, 4, 5, 7])
def test_gqa_ratio(ratio, gen):
    hkv = 2 if ratio <= 4 else 1
    q, k, v = make_qkv(gen, 2, hkv * ratio, hkv, 257, 257, 64)
    _check(q, k, v, causal_mod())


@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_head_dim(head_dim, gen):
    q, k, v = make_qkv(gen, 1, 4, 2, 300, 300, head_dim)
    _check(q, k, v, sliding_window_mod(100, 20))


@pytest.mark.parametrize("q_len,kv_len", [(1, 1), (17, 17), (130, 130), (257, 257), (300, 300), (1, 600),
                                          (17, 300), (300, 17), (600, 130), (128, 256)])
@pytest.mark.parametrize("masked", [False, True], ids=["full", "causal_bottom_right"])
def test_lengths(q_len, kv_len, masked, gen):
    # Bottom-right causal: with Q_LEN > KV_LEN the first Q_LEN - KV_LEN rows see nothing.
    q, k, v = make_qkv(gen, 2, 2, 2, q_len, kv_len, 64)
    _check(q, k, v, causal_mod(kv_len - q_len) if masked else None)


def test_no_mask_is_full_attention(gen):
    q, k, v = make_qkv(gen, 2, 4, 4, 130, 257, 128)
    out, lse = flashflex.flex_attention(q, k, v, return_lse=True)
    ref_out, ref_lse = dense_attention(q.double(), k.double(), v.double())
    assert_close(out, ref_out, TOL[F32], "out")
    assert_lse_close(lse, ref_lse)


def test_return_lse_false_returns_only_the_output(gen):
    q, k, v = make_qkv(gen, 1, 2, 2, 17, 17, 64)
    out = flashflex.flex_attention(q, k, v)
    assert isinstance(out, torch.Tensor)
    out_with_lse, _ = flashflex.flex_attention(q, k, v, return_lse=True)
    assert torch.equal(out, out_with_lse)


def test_scale_argument(gen):
    q, k, v = make_qkv(gen, 1, 2, 2, 130, 130, 64)
    _check(q, k, v, causal_mod(), scale=0.37)


def test_default_scale_is_inverse_sqrt_head_dim(gen):
    q, k, v = make_qkv(gen, 1, 2, 2, 130, 130, 128)
    default = flashflex.flex_attention(q, k, v)
    explicit = flashflex.flex_attention(q, k, v, scale=1.0 / math.sqrt(128))
    assert_close(default, explicit, TOL[F32], "out")
    other = flashflex.flex_attention(q, k, v, scale=1.0)
    assert (default - other).abs().max() > 1e-2


def _slopes(hq):
    return torch.tensor([2.0 ** (-8.0 * (i + 1) / hq) for i in range(hq)], dtype=torch.float32)


SCORE_MODS = ["softcap", "alibi", "bias_full", "bias_batch_broadcast", "bias_head_broadcast", "bias_both_broadcast"]


def _score_mods(name, gen, batch, hq, q_len, kv_len):
    """(flashflex score mod, reference score mod on float64 data)."""
    if name == "softcap":
        return flashflex.score_mods.softcap(2.5), softcap_mod(2.5)
    if name == "alibi":
        slopes = _slopes(hq)
        return flashflex.score_mods.alibi(slopes), alibi_mod(slopes.double())
    shape = {"bias_full": (batch, hq), "bias_batch_broadcast": (1, hq), "bias_head_broadcast": (batch, 1),
             "bias_both_broadcast": (1, 1)}[name] + (q_len, kv_len)
    bias = randn(gen, *shape)
    return flashflex.score_mods.bias(bias), bias_mod(bias.double())


@pytest.mark.parametrize("mod_name", SCORE_MODS)
def test_score_mod(mod_name, gen):
    batch, hq, hkv, q_len, kv_len = 2, 4, 2, 130, 300
    q, k, v = make_qkv(gen, batch, hq, hkv, q_len, kv_len, 64)
    ff_mod, ref_mod = _score_mods(mod_name, gen, batch, hq, q_len, kv_len)
    out, _ = _check(q, k, v, causal_mod(kv_len - q_len), ff_mod, ref_mod)
    # The mod must matter: the same call without it differs.
    plain = flashflex.flex_attention(q, k, v, block_mask=torch_create_block_mask(
        causal_mod(kv_len - q_len), None, None, q_len, kv_len, device="cpu"), enable_gqa=True)
    assert (out - plain).abs().max() > 1e-3


def test_score_mod_without_mask(gen):
    q, k, v = make_qkv(gen, 1, 2, 2, 257, 257, 64)
    _check(q, k, v, None, flashflex.score_mods.softcap(1.5), softcap_mod(1.5))


@pytest.mark.parametrize("mod_name", ["softcap", "alibi", "bias_full"])
def test_score_mod_attribute_is_the_torch_score_mod(mod_name, gen):
    # `.score_mod` used with torch's flex_attention equals the formula of the API description.
    batch, hq, q_len, kv_len = 2, 4, 130, 257
    q, k, v = make_qkv(gen, batch, hq, hq, q_len, kv_len, 64, dtype=torch.float64)
    ff_mod, ref_mod = _score_mods(mod_name, gen, batch, hq, q_len, kv_len)
    assert callable(ff_mod.score_mod)
    got, _ = torch_flex_reference(q, k, v, causal_mod(), ff_mod.score_mod)
    want, _ = torch_flex_reference(q, k, v, causal_mod(), ref_mod)
    # ff_mod holds float32 data (slopes, bias), the reference float64 copies of the same values.
    assert_close(got, want, 1e-6, "out")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("mod_name", [None, "softcap", "bias_full"])
def test_half_precision(dtype, mod_name, gen):
    # Reference: float64 on the values rounded to dtype; only flashflex's rounding remains (TOL).
    batch, hq, hkv, q_len, kv_len = 2, 4, 1, 257, 300
    q, k, v = make_qkv(gen, batch, hq, hkv, q_len, kv_len, 128, dtype=dtype)
    ff_mod, ref_mod = (None, None) if mod_name is None else _score_mods(mod_name, gen, batch, hq, q_len, kv_len)
    _check(q, k, v, sliding_window_mod(64, 0, kv_len - q_len), ff_mod, ref_mod)


def test_half_precision_bias_tensor_in_half(gen):
    batch, hq, q_len, kv_len = 1, 2, 130, 130
    q, k, v = make_qkv(gen, batch, hq, hq, q_len, kv_len, 64, dtype=torch.bfloat16)
    bias = randn(gen, batch, hq, q_len, kv_len, dtype=torch.bfloat16)
    _check(q, k, v, causal_mod(), flashflex.score_mods.bias(bias), bias_mod(bias.double()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_transposed_layout(dtype, gen):
    # [B, T, H, D] tensors viewed as [B, H, T, D], as FlashAttention users hold them.
    batch, hq, hkv, q_len, kv_len, d = 2, 4, 2, 257, 300, 64
    q = randn(gen, batch, q_len, hq, d, dtype=dtype).transpose(1, 2)
    k = randn(gen, batch, kv_len, hkv, d, dtype=dtype).transpose(1, 2)
    v = randn(gen, batch, kv_len, hkv, d, dtype=dtype).transpose(1, 2)
    assert not q.is_contiguous()
    out, _ = _check(q, k, v, causal_mod(kv_len - q_len))
    contiguous = flashflex.flex_attention(q.contiguous(), k.contiguous(), v.contiguous(), enable_gqa=True,
                                          block_mask=torch_create_block_mask(causal_mod(kv_len - q_len), None, None,
                                                                             q_len, kv_len, device="cpu"))
    assert_close(out, contiguous, TOL[dtype], "transposed vs contiguous")


def test_other_strides(gen):
    # A query sliced from a wider buffer (inner stride 2), keys broadcast over the batch (stride 0).
    batch, h, q_len, kv_len, d = 2, 2, 130, 257, 64
    q = randn(gen, batch, h, q_len, 2 * d)[..., ::2]
    k = randn(gen, 1, h, kv_len, d).expand(batch, h, kv_len, d)
    v = randn(gen, batch, kv_len, h, d).permute(0, 2, 1, 3)
    assert q.stride(-1) == 2 and k.stride(0) == 0
    _check(q, k, v, causal_mod(kv_len - q_len))


def test_inputs_are_not_modified(gen):
    q, k, v = make_qkv(gen, 1, 2, 2, 130, 130, 64)
    copies = [t.clone() for t in (q, k, v)]
    flashflex.flex_attention(q, k, v, block_mask=flashflex.create_block_mask(flashflex.masks.causal(), None, None,
                                                                             130, 130), return_lse=True)
    assert all(torch.equal(a, b) for a, b in zip((q, k, v), copies))


def test_outputs_have_no_nan_with_large_scores(gen):
    # Scores of +-1e3: a kernel without the running max overflows exp().
    q, k, v = make_qkv(gen, 1, 2, 2, 257, 257, 64)
    q = q * 30
    out, lse = _check(q, k, v, causal_mod())
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()


def test_eager_torch_flex_and_flashflex_agree_on_dense_mask(gen):
    # Same inputs, the dense mask as a captured table (no structure for a builder to exploit).
    q_len, kv_len = 300, 257
    table = torch.rand(q_len, kv_len, generator=gen) < 0.5

    def mask_mod(b, h, q_idx, kv_idx):
        return table[q_idx, kv_idx]

    q, k, v = make_qkv(gen, 2, 2, 2, q_len, kv_len, 64)
    out, lse = _check(q, k, v, mask_mod)
    ref_out, ref_lse = dense_attention(q.double(), k.double(), v.double(), dense_mask(mask_mod, 2, 2, q_len, kv_len))
    assert_close(out, ref_out, TOL[F32], "out vs dense")
