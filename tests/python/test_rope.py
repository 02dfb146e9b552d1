"""flashflex.rope: the rotary tables of Llama-style configs (rope_scaling / rope_parameters with
rope_type default, linear, dynamic, llama3, yarn) against float64 formulas written here from
their published definitions (transformers' modeling_rope_utils), and the errors."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from flashflex.eagle3_module import Eagle3Attention, Eagle3Config
from flashflex.rope import RotaryEmbedding

DIM, THETA, MAX_POS = 128, 500000.0, 2048
# float32 tables against float64 formulas: the angle position * inv_freq at position <= 10^4 has
# float32 rounding ~10^4 * 2^-24 = 6e-4 rad; inverse frequencies themselves to 2^-23 relative.
ANGLE_TOL, FREQ_TOL = 2e-3, 1e-6


def _config(rope_scaling=None, **kwargs):
    return SimpleNamespace(rope_theta=THETA, rope_scaling=rope_scaling, max_position_embeddings=MAX_POS, **kwargs)


def _base_inv_freq(theta=THETA):
    return 1.0 / theta ** (torch.arange(0, DIM, 2, dtype=torch.float64) / DIM)


def _check_freqs(rope, seq_len, want, factor=1.0):
    got, attention_factor = rope.inv_freq("cpu", seq_len)
    torch.testing.assert_close(got.double(), want, rtol=FREQ_TOL, atol=0)
    assert attention_factor == pytest.approx(factor)
    positions = torch.tensor([[0, 1, 777, 4095, 9999]])
    cos, sin = rope(positions, seq_len)
    angles = positions.double()[..., None] * want
    angles = torch.cat([angles, angles], -1)
    torch.testing.assert_close(cos.double(), factor * angles.cos(), rtol=0, atol=ANGLE_TOL * factor)
    torch.testing.assert_close(sin.double(), factor * angles.sin(), rtol=0, atol=ANGLE_TOL * factor)


def test_default_and_v5_rope_parameters():
    _check_freqs(RotaryEmbedding(DIM, _config()), 100, _base_inv_freq())
    v5 = SimpleNamespace(rope_parameters={"rope_type": "default", "rope_theta": 1000.0}, max_position_embeddings=64)
    _check_freqs(RotaryEmbedding(DIM, v5), 100, _base_inv_freq(1000.0))


def test_linear_divides_the_frequencies():
    _check_freqs(RotaryEmbedding(DIM, _config({"type": "linear", "factor": 4.0})), 100, _base_inv_freq() / 4.0)


def test_dynamic_rescales_the_base_past_max_positions():
    rope = RotaryEmbedding(DIM, _config({"rope_type": "dynamic", "factor": 2.0}))
    _check_freqs(rope, MAX_POS, _base_inv_freq())  # not longer than max_position_embeddings: unchanged
    seq_len = 3 * MAX_POS
    base = THETA * ((2.0 * seq_len / MAX_POS) - 1.0) ** (DIM / (DIM - 2))
    _check_freqs(rope, seq_len, _base_inv_freq(base))


def test_llama3_keeps_high_frequencies_divides_low_ones_and_blends_between():
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    inv = _base_inv_freq()
    wavelen = 2 * math.pi / inv
    smooth = (8192 / wavelen - 1.0) / (4.0 - 1.0)
    want = torch.where(wavelen < 8192 / 4.0, inv,
                       torch.where(wavelen > 8192 / 1.0, inv / 8.0, (1 - smooth) * inv / 8.0 + smooth * inv))
    assert (want == inv).any() and (want == inv / 8.0).any() and ((want != inv) & (want != inv / 8.0)).any()
    _check_freqs(RotaryEmbedding(DIM, _config(scaling)), 100, want)


@pytest.mark.parametrize("mscales", [None, (1.0, 1.0), (0.707, 0.707)])
def test_yarn_blends_by_a_ramp_and_scales_cos_sin(mscales):
    scaling = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096}
    if mscales is not None:
        scaling.update(mscale=mscales[0], mscale_all_dim=mscales[1])
    inv = _base_inv_freq()

    def correction_dim(rotations):
        return DIM * math.log(4096 / (rotations * 2 * math.pi)) / (2 * math.log(THETA))

    low, high = max(math.floor(correction_dim(32)), 0), min(math.ceil(correction_dim(1)), DIM - 1)
    ramp = ((torch.arange(DIM // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    want = inv / 4.0 * ramp + inv * (1 - ramp)
    factor = 1.0 if mscales is not None else 0.1 * math.log(4.0) + 1.0  # equal mscales cancel
    _check_freqs(RotaryEmbedding(DIM, _config(scaling)), 100, want, factor)


def test_module_reads_rope_scaling_from_its_config():
    plain = Eagle3Attention(Eagle3Config(hidden_size=64, num_attention_heads=1, head_dim=64))
    linear = Eagle3Attention(Eagle3Config(hidden_size=64, num_attention_heads=1, head_dim=64,
                                          rope_scaling={"rope_type": "linear", "factor": 2.0}))
    positions = torch.arange(0, 200, 2)[None, :]
    for got, want in zip(linear.rotary(positions), plain.rotary(positions // 2)):
        torch.testing.assert_close(got, want)


def test_unknown_type_and_missing_factor_are_refused():
    with pytest.raises(ValueError, match=r"rope_scaling: expected rope_type in .*'yarn'.*got 'mrope'"):
        RotaryEmbedding(DIM, _config({"rope_type": "mrope"}))
    with pytest.raises(ValueError, match="rope_type 'linear' needs 'factor'"):
        RotaryEmbedding(DIM, _config({"rope_type": "linear"}))
    with pytest.raises(ValueError, match="head_dim: expected an even size"):
        RotaryEmbedding(63, _config())
