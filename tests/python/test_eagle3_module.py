"""flashflex.eagle3_module.Eagle3Attention (float32, flashflex's ttt_attention over per-step
lists) against the reference module of examples/python/eagle3_ttt_train.py (the same module
with the upstream attention: concatenated K/V, the customers' generate_eagle3_mask, SDPA) in
float64 with the same weights: outputs of every TTT step and all parameter / input gradients
over a 3-step unroll; the example's main with tiny sizes; bad inputs."""

from __future__ import annotations

import copy
import importlib.util
import pathlib

import pytest
import torch

from flashflex.eagle3_module import Eagle3Attention
from helpers import assert_close

_EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "python" / "eagle3_ttt_train.py"


def load_example():
    spec = importlib.util.spec_from_file_location("eagle3_ttt_train", _EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# float32 module vs float64 reference through projections, RoPE, 3 chained attention steps and
# o_proj: relative to max|ref|, float32 accumulation over K <= 2H terms dominates.
MODULE_TOL = 2e-5


def unroll(attn, embeds, hidden, position_ids, seq_lengths, steps):
    """The trainers' TTT unroll: step s feeds cat(embeds_s, hidden_s), hidden_{s+1} = hidden_s + out."""
    cache_keys, cache_values, outs = [], [], []
    for s in range(steps):
        out = attn(torch.cat([embeds[s], hidden], dim=-1), cache_keys, cache_values, position_ids, seq_lengths)
        assert len(cache_keys) == len(cache_values) == s + 1
        outs.append(out)
        hidden = hidden + out
    return outs, hidden


@pytest.mark.parametrize("seq_len", [130, 77])
def test_module_matches_reference(gen, seq_len):
    example = load_example()
    batch, hidden_size, heads, kv_heads, head_dim, steps = 2, 96, 8, 2, 64, 3
    torch.manual_seed(int(torch.randint(1 << 30, (1,), generator=gen)))
    attn = Eagle3Attention(hidden_size, heads, kv_heads, head_dim, rope_theta=10000.0, max_position_embeddings=512)
    ref = example.ReferenceEagle3Attention(hidden_size, heads, kv_heads, head_dim, max_position_embeddings=512)
    ref.load_state_dict(copy.deepcopy(attn.state_dict()))
    ref.double()

    seq_lengths = torch.tensor([seq_len, seq_len - 40], dtype=torch.int64)  # unequal
    embeds = [torch.randn(batch, seq_len, hidden_size, generator=gen) for _ in range(steps)]
    hidden = torch.randn(batch, seq_len, hidden_size, generator=gen)
    position_ids = torch.arange(seq_len)[None, :].expand(batch, seq_len)
    leaves = [t.clone().requires_grad_() for t in (*embeds, hidden)]
    ref_leaves = [t.double().requires_grad_() for t in (*embeds, hidden)]

    outs, final = unroll(attn, leaves[:steps], leaves[steps], position_ids, seq_lengths, steps)
    ref_outs, ref_final = unroll(ref, ref_leaves[:steps], ref_leaves[steps], position_ids, seq_lengths, steps)
    for s, (out, ref_out) in enumerate(zip(outs, ref_outs)):
        assert_close(out, ref_out, MODULE_TOL, f"output of step {s}")
        # Rows past L_b - s see nothing: their attention output (hence o_proj output) is exactly 0.
        assert (out[1, seq_len - 40 - s:] == 0).all()

    dfinal = torch.randn(final.shape, generator=gen)
    (final.double() * dfinal.double()).sum().backward()
    (ref_final * dfinal.double()).sum().backward()
    for (name, p), (_, r) in zip(attn.named_parameters(), ref.named_parameters()):
        assert p.grad is not None, name
        assert_close(p.grad, r.grad, MODULE_TOL, f"grad of {name}")
    for i, (leaf, ref_leaf) in enumerate(zip(leaves, ref_leaves)):
        assert_close(leaf.grad, ref_leaf.grad, MODULE_TOL, f"grad of input {i}")


def test_position_ids_default_and_step_shift(gen):
    """None means 0..T-1; the module adds the step (upstream's position_ids + lck): step 1 with
    position_ids p equals the rotation of positions p + 1."""
    attn = Eagle3Attention(32, 2, 1, 64)
    x = torch.randn(1, 10, 64, generator=gen)
    keys_a, vals_a, keys_b, vals_b = [], [], [], []
    out_a = attn(x, keys_a, vals_a, None)
    out_b = attn(x, keys_b, vals_b, torch.arange(10)[None, :])
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)
    attn(x, keys_a, vals_a, None)
    cos, sin = attn.rotary(torch.arange(1, 11)[None, :], torch.float32)
    k = attn.k_proj(x).view(1, 10, 1, 64).transpose(1, 2)
    from flashflex.eagle3_module import rotate_half
    torch.testing.assert_close(keys_a[1], k * cos[:, None] + rotate_half(k) * sin[:, None])


def test_example_main_agrees():
    example = load_example()
    result = example.main(["--steps", "2", "--ttt-length", "3", "--seq-len", "37", "--hidden", "64",
                           "--heads", "2", "--kv-heads", "1", "--vocab", "16"])
    assert result["ok"], result
    assert len(result["history"]) == 2
    assert result["max_rel_grad_diff"] <= 1e-4


def test_bad_inputs():
    attn = Eagle3Attention(32, 2, 1, 64)
    x = torch.randn(2, 10, 64)
    with pytest.raises(ValueError, match="hidden_states"):
        attn(torch.randn(2, 10, 32), [], [])
    with pytest.raises(ValueError, match="hidden_states"):
        attn(torch.randn(10, 64), [], [])
    keys, values = [], []
    attn(x, keys, values)
    with pytest.raises(ValueError, match="cache_values"):
        attn(x, keys, [])
    with pytest.raises(ValueError, match="cache_keys"):
        attn(x, tuple(keys), list(values))
    with pytest.raises(ValueError, match=r"cache_keys\[0\]"):
        attn(torch.randn(2, 11, 64), keys, values)  # T differs from the cached step
    with pytest.raises(ValueError, match="position_ids"):
        attn(x, keys, values, torch.arange(9)[None, :])
    assert len(keys) == len(values) == 1  # failed calls appended nothing
    with pytest.raises(ValueError, match="num_kv_heads"):
        Eagle3Attention(32, 3, 2, 64)
