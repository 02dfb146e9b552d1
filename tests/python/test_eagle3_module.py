"""flashflex.eagle3_module.Eagle3Attention (float32, flashflex's ttt_attention over per-step
lists) against the reference module of examples/python/eagle3_ttt_train.py (the same module
with the upstream attention: concatenated K/V, the customers' generate_eagle3_mask, SDPA) in
float64 with the same weights: outputs of every TTT step and all parameter / input gradients
over a 3-step unroll; both cache conventions (SpecForge's cache_hidden, TorchSpec's functional
cache_keys / cache_values) with the caller's lists untouched and under torch.utils.checkpoint;
a bf16-cast module against its float32 original at T = 4096; the example's main; bad inputs.
RoPE scaling has its own tests (test_rope.py)."""

from __future__ import annotations

import copy
import importlib.util
import pathlib

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from flashflex.eagle3_module import Eagle3Attention, Eagle3Config, rotate_half
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


def config(hidden=96, heads=8, kv_heads=2, head_dim=64, **kwargs):
    return Eagle3Config(hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv_heads,
                        head_dim=head_dim, **kwargs)


def unroll(attn, embeds, hidden, position_ids, seq_lengths, steps):
    """The trainers' TTT unroll (SpecForge's cache_hidden): step s feeds cat(embeds_s, hidden_s),
    hidden_{s+1} = hidden_s + out."""
    cache_hidden, outs = [[], []], []
    for s in range(steps):
        out = attn(torch.cat([embeds[s], hidden], dim=-1), cache_hidden, position_ids=position_ids,
                   seq_lengths=seq_lengths)
        assert len(cache_hidden[0]) == len(cache_hidden[1]) == s + 1
        outs.append(out)
        hidden = hidden + out
    return outs, hidden


@pytest.mark.parametrize("seq_len", [130, 77])
def test_module_matches_reference(gen, seq_len):
    example = load_example()
    batch, hidden_size, steps = 2, 96, 3
    torch.manual_seed(int(torch.randint(1 << 30, (1,), generator=gen)))
    attn = Eagle3Attention(config(max_position_embeddings=512))
    ref = example.ReferenceEagle3Attention(config(max_position_embeddings=512))
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


def _three_steps(attn, x, mode, use_checkpoint, attention_mask):
    """Outputs of a 3-step unroll in one cache convention, optionally each step checkpointed."""
    def run(fn, *args, **kwargs):
        return checkpoint(fn, *args, use_reentrant=False, **kwargs) if use_checkpoint else fn(*args, **kwargs)

    outs, hidden = [], x
    if mode == "cache_hidden":
        cache_hidden = [[], []]
        for s in range(3):
            seen = [list(cache_hidden[0]), list(cache_hidden[1])]
            outs.append(run(attn, hidden, cache_hidden, attention_mask, ttt_step=s))
            assert [len(c) for c in cache_hidden] == [s + 1, s + 1]
            assert all(a is b for a, b in zip(seen[0], cache_hidden[0][:s])), "earlier entries replaced"
            hidden = hidden + outs[-1].repeat(1, 1, 2)
    else:
        keys = values = None
        for s in range(3):
            given = None if keys is None else (list(keys), list(values))
            out, new_keys, new_values = run(attn, hidden, attention_mask=attention_mask, cache_keys=keys,
                                            cache_values=values, use_cache=True)
            if given is not None:
                assert len(keys) == len(values) == s and keys == given[0], "the caller's lists were modified"
            assert len(new_keys) == len(new_values) == s + 1
            keys, values = new_keys, new_values
            outs.append(out)
            hidden = hidden + out.repeat(1, 1, 2)
    return outs


@pytest.mark.parametrize("mode", ["cache_hidden", "functional"])
def test_checkpointed_unroll_equals_plain_unroll(mode, gen):
    """torch.utils.checkpoint recomputes each step in the backward: the module must be a function
    of its inputs (no list it was given may have changed in between)."""
    torch.manual_seed(int(torch.randint(1 << 30, (1,), generator=gen)))
    attn = Eagle3Attention(config(hidden=32, heads=2, kv_heads=1))
    x = torch.randn(2, 70, 64, generator=gen)
    attention_mask = torch.ones(2, 70, dtype=torch.int64)
    attention_mask[1, 50:] = 0
    results = []
    for use_checkpoint in (False, True):
        attn.zero_grad(set_to_none=True)
        leaf = x.clone().requires_grad_()
        outs = _three_steps(attn, leaf, mode, use_checkpoint, attention_mask)
        sum((o * (i + 1)).sum() for i, o in enumerate(outs)).backward()
        results.append((outs, leaf.grad, [p.grad.clone() for p in attn.parameters()]))
    (plain, plain_dx, plain_grads), (ckpt, ckpt_dx, ckpt_grads) = results
    for s, (a, b) in enumerate(zip(plain, ckpt)):
        torch.testing.assert_close(b, a, msg=f"output of step {s}")
    torch.testing.assert_close(ckpt_dx, plain_dx)
    for a, b in zip(plain_grads, ckpt_grads):
        torch.testing.assert_close(b, a)


def test_conventions_and_attention_mask_agree(gen):
    attn = Eagle3Attention(config(hidden=32, heads=2, kv_heads=1))
    x = torch.randn(2, 40, 64, generator=gen)
    attention_mask = (torch.arange(40)[None, :] < torch.tensor([[40], [29]])).to(torch.int64)
    cache_hidden = [[], []]
    a0 = attn(x, cache_hidden, attention_mask)
    a1 = attn(x, cache_hidden, attention_mask)
    b0, keys, values = attn(x, attention_mask=attention_mask, cache_keys=None, cache_values=None, use_cache=True)
    b1, keys, values = attn(x, seq_lengths=[40, 29], cache_keys=keys, cache_values=values)
    torch.testing.assert_close(a0, b0, rtol=0, atol=0)
    torch.testing.assert_close(a1, b1, rtol=0, atol=0)
    assert all(torch.equal(k, c) for k, c in zip(keys, cache_hidden[0]))


def test_position_ids_default_and_step_shift(gen):
    """None means 0..T-1; the module adds the step (upstream's position_ids + lck): step 1 with
    position_ids p equals the rotation of positions p + 1."""
    attn = Eagle3Attention(config(hidden=32, heads=2, kv_heads=1))
    x = torch.randn(1, 10, 64, generator=gen)
    cache_a, cache_b = [[], []], [[], []]
    out_a = attn(x, cache_a)
    out_b = attn(x, cache_b, position_ids=torch.arange(10)[None, :])
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)
    attn(x, cache_a)
    cos, sin = attn.rotary(torch.arange(1, 11)[None, :])
    k = attn.k_proj(x).view(1, 10, 1, 64).transpose(1, 2)
    torch.testing.assert_close(cache_a[0][1], k * cos[:, None] + rotate_half(k) * sin[:, None])


def test_bf16_module_keeps_float32_rope_and_matches_float32_at_4096(gen):
    """model.to(torch.bfloat16), as trainers do, must not round the RoPE frequencies (bf16 at
    position 4096 is off by radians): the tables equal the float32 module's exactly, and the
    outputs and parameter gradients of 2 TTT steps at T = 4096 stay within bf16 rounding of the
    float32 module's (a few roundings of 2^-8 through the projections and the attention; a wrong
    rotation moves them by O(1))."""
    torch.manual_seed(int(torch.randint(1 << 30, (1,), generator=gen)))
    attn = Eagle3Attention(config(hidden=32, heads=2, kv_heads=1, max_position_embeddings=8192))
    ref = copy.deepcopy(attn)
    attn.to(torch.bfloat16)
    positions = torch.arange(4096)[None, :]
    for got, want in zip(attn.rotary(positions), ref.rotary(positions)):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=0, atol=0)

    x = torch.randn(1, 4096, 64, generator=gen)
    cache, ref_cache = [[], []], [[], []]
    for step in range(2):
        out, ref_out = attn(x.to(torch.bfloat16), cache), ref(x, ref_cache)
        assert_close(out.float(), ref_out, 3e-2, f"output of step {step}")
    dout = torch.randn(out.shape, generator=gen)
    (out.float() * dout).sum().backward()
    (ref_out * dout).sum().backward()
    for (name, p), (_, r) in zip(attn.named_parameters(), ref.named_parameters()):
        assert_close(p.grad.float(), r.grad, 3e-2, f"grad of {name}")


def test_example_main_agrees():
    example = load_example()
    result = example.main(["--steps", "2", "--ttt-length", "3", "--seq-len", "37", "--hidden", "64",
                           "--heads", "2", "--kv-heads", "1", "--vocab", "16"])
    assert result["ok"], result
    assert len(result["history"]) == 2
    assert result["max_rel_grad_diff"] <= 1e-4


def test_bad_inputs():
    attn = Eagle3Attention(config(hidden=32, heads=2, kv_heads=1))
    x = torch.randn(2, 10, 64)
    with pytest.raises(ValueError, match="hidden_states"):
        attn(torch.randn(2, 10, 32))
    with pytest.raises(ValueError, match="hidden_states"):
        attn(torch.randn(10, 64))
    cache_hidden = [[], []]
    attn(x, cache_hidden)
    with pytest.raises(ValueError, match="cache values: expected 1 entries"):
        attn(x, [cache_hidden[0], []])
    with pytest.raises(ValueError, match=r"cache_hidden: expected a list \[keys, values\]"):
        attn(x, [cache_hidden[0]])
    with pytest.raises(ValueError, match=r"cache keys\[0\]"):
        attn(torch.randn(2, 11, 64), cache_hidden)  # T differs from the cached step
    with pytest.raises(ValueError, match="position_ids"):
        attn(x, cache_hidden, position_ids=torch.arange(9)[None, :])
    with pytest.raises(ValueError, match=r"ttt_step: expected an int in \[0, 1\]"):
        attn(x, cache_hidden, ttt_step=2)
    with pytest.raises(ValueError, match="cache_keys: expected a list of the earlier steps' tensors"):
        attn(x, cache_keys=torch.zeros(2, 1, 10, 64), cache_values=None)
    with pytest.raises(ValueError, match="attention_mask: expected the data loader's padding mask"):
        attn(x, cache_hidden, torch.ones(2, 1, 10, 10))
    with pytest.raises(ValueError, match="either attention_mask or seq_lengths"):
        attn(x, cache_hidden, torch.ones(2, 10), seq_lengths=[10, 10])
    with pytest.raises(ValueError, match="past_key_values: expected None"):
        attn(x, cache_hidden, past_key_values=object())
    assert [len(c) for c in cache_hidden] == [1, 1]  # failed calls changed nothing
    with pytest.raises(ValueError, match="num_key_value_heads"):
        Eagle3Attention(config(hidden=32, heads=3, kv_heads=2))
