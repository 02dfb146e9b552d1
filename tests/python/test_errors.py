"""Bad inputs, one test each: dtype errors are TypeError naming the tensor; shape, head count,
head dim, device and block-mask size errors are ValueError naming the argument (and, where a
size is wrong, the value received); a score_mod that is neither a callable nor a built-in mod names the supported mods (callables:
test_score_mod_callables.py)."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask as torch_create_block_mask

import flashflex
from helpers import make_qkv, randn
from mask_cases import causal_mod


def _qkv(gen, batch=1, hq=2, hkv=2, q_len=130, kv_len=130, head_dim=64, dtype=torch.float32):
    return make_qkv(gen, batch, hq, hkv, q_len, kv_len, head_dim, dtype=dtype)


@pytest.mark.parametrize("position,name", [(0, "query"), (1, "key"), (2, "value")])
def test_float64_is_rejected(position, name, gen):
    args = list(_qkv(gen))
    args[position] = args[position].double()
    with pytest.raises(TypeError, match=name):
        flashflex.flex_attention(*args)


def test_all_float64_is_rejected(gen):
    with pytest.raises(TypeError, match="query"):
        flashflex.flex_attention(*(t.double() for t in _qkv(gen)))


def test_integer_query_is_rejected(gen):
    q, k, v = _qkv(gen)
    with pytest.raises(TypeError, match="query"):
        flashflex.flex_attention(q.to(torch.int32), k, v)


@pytest.mark.parametrize("position,name", [(1, "key"), (2, "value")])
def test_dtype_differing_from_query_is_rejected(position, name, gen):
    args = list(_qkv(gen))
    args[position] = args[position].to(torch.bfloat16)
    with pytest.raises(TypeError, match=name):
        flashflex.flex_attention(*args)


def test_query_with_three_dims(gen):
    q, k, v = _qkv(gen)
    with pytest.raises(ValueError, match="query"):
        flashflex.flex_attention(q[0], k, v)


def test_key_with_three_dims(gen):
    q, k, v = _qkv(gen)
    with pytest.raises(ValueError, match="key"):
        flashflex.flex_attention(q, k[0], v)


def test_key_batch_differs_from_query(gen):
    q, _, _ = _qkv(gen, batch=2)
    _, k, v = _qkv(gen, batch=1)
    with pytest.raises(ValueError, match="key"):
        flashflex.flex_attention(q, k, v)


def test_value_length_differs_from_key(gen):
    q, k, v = _qkv(gen)
    with pytest.raises(ValueError, match="value"):
        flashflex.flex_attention(q, k, v[:, :, :100])


def test_value_heads_differ_from_key(gen):
    q, k, _ = _qkv(gen, hq=4, hkv=2)
    v = randn(gen, 1, 4, 130, 64)
    with pytest.raises(ValueError, match="value"):
        flashflex.flex_attention(q, k, v, enable_gqa=True)


def test_key_head_dim_differs_from_query(gen):
    q, _, v = _qkv(gen)
    k = randn(gen, 1, 2, 130, 128)
    with pytest.raises(ValueError, match="key"):
        flashflex.flex_attention(q, k, v)


def test_value_head_dim_differs_from_query(gen):
    q, k, _ = _qkv(gen)
    v = randn(gen, 1, 2, 130, 128)
    with pytest.raises(ValueError, match="value"):
        flashflex.flex_attention(q, k, v)


def test_unequal_heads_without_enable_gqa(gen):
    q, k, v = _qkv(gen, hq=4, hkv=2)
    with pytest.raises(ValueError, match="key|enable_gqa"):
        flashflex.flex_attention(q, k, v)


def test_heads_not_divisible(gen):
    q, k, v = _qkv(gen, hq=6, hkv=4)
    with pytest.raises(ValueError, match="key"):
        flashflex.flex_attention(q, k, v, enable_gqa=True)


@pytest.mark.parametrize("head_dim", [32, 96, 512])
def test_unsupported_head_dim(head_dim, gen):
    q, k, v = _qkv(gen, head_dim=head_dim)
    with pytest.raises(ValueError, match="query") as info:
        flashflex.flex_attention(q, k, v)
    assert str(head_dim) in str(info.value), "the message gives the head dim received"


def test_key_on_another_device(gen):
    # Without a GPU, the meta device stands in for "not where the query is".
    q, k, v = _qkv(gen)
    other = "cuda" if torch.cuda.is_available() else "meta"
    with pytest.raises(ValueError, match="key"):
        flashflex.flex_attention(q, k.to(other), v)


def test_value_on_another_device(gen):
    q, k, v = _qkv(gen)
    other = "cuda" if torch.cuda.is_available() else "meta"
    with pytest.raises(ValueError, match="value"):
        flashflex.flex_attention(q, k, v.to(other))


def test_score_mod_neither_callable_nor_built_in_is_rejected_listing_supported_mods(gen):
    q, k, v = _qkv(gen)
    with pytest.raises(TypeError, match="score_mod: expected None, a callable") as info:
        flashflex.flex_attention(q, k, v, score_mod="softcap")
    for name in ("softcap", "alibi", "bias"):
        assert name in str(info.value), f"the message lists {name!r}: {info.value}"


def test_alibi_slopes_of_wrong_length(gen):
    q, k, v = _qkv(gen, hq=4, hkv=4)
    with pytest.raises(ValueError, match="alibi|slopes|score_mod"):
        flashflex.flex_attention(q, k, v, score_mod=flashflex.score_mods.alibi(torch.ones(3)))


def test_bias_of_wrong_length(gen):
    q, k, v = _qkv(gen, q_len=130, kv_len=257)
    bias = randn(gen, 1, 2, 130, 256)
    with pytest.raises(ValueError, match="bias|score_mod"):
        flashflex.flex_attention(q, k, v, score_mod=flashflex.score_mods.bias(bias))


def test_bias_of_wrong_heads(gen):
    q, k, v = _qkv(gen, hq=4, hkv=4)
    bias = randn(gen, 1, 3, 130, 130)
    with pytest.raises(ValueError, match="bias|score_mod"):
        flashflex.flex_attention(q, k, v, score_mod=flashflex.score_mods.bias(bias))


@pytest.mark.parametrize("kind", ["flashflex", "torch"])
def test_block_mask_of_wrong_q_len(kind, gen):
    q, k, v = _qkv(gen, q_len=130, kv_len=257)
    create = flashflex.create_block_mask if kind == "flashflex" else torch_create_block_mask
    block_mask = create(causal_mod(), None, None, 131, 257, device="cpu")
    with pytest.raises(ValueError, match="block_mask") as info:
        flashflex.flex_attention(q, k, v, block_mask=block_mask)
    assert "131" in str(info.value), "the message gives the mask's Q_LEN"


@pytest.mark.parametrize("kind", ["flashflex", "torch"])
def test_block_mask_of_wrong_kv_len(kind, gen):
    q, k, v = _qkv(gen, q_len=130, kv_len=257)
    create = flashflex.create_block_mask if kind == "flashflex" else torch_create_block_mask
    block_mask = create(causal_mod(), None, None, 130, 300, device="cpu")
    with pytest.raises(ValueError, match="block_mask") as info:
        flashflex.flex_attention(q, k, v, block_mask=block_mask)
    assert "300" in str(info.value), "the message gives the mask's KV_LEN"


def test_block_mask_of_wrong_batch(gen):
    q, k, v = _qkv(gen, batch=3)
    block_mask = torch_create_block_mask(causal_mod(), 2, None, 130, 130, device="cpu")
    with pytest.raises(ValueError, match="block_mask"):
        flashflex.flex_attention(q, k, v, block_mask=block_mask)


def test_block_mask_of_wrong_heads(gen):
    q, k, v = _qkv(gen, hq=4, hkv=4)
    block_mask = flashflex.create_block_mask(lambda b, h, q_idx, kv_idx: kv_idx <= q_idx + h, None, 3, 130, 130)
    with pytest.raises(ValueError, match="block_mask"):
        flashflex.flex_attention(q, k, v, block_mask=block_mask)


@pytest.mark.parametrize("block_size", [64, (128, 64), (64, 128)], ids=["64", "128x64", "64x128"])
def test_torch_block_mask_with_other_block_size(block_size, gen):
    q, k, v = _qkv(gen)
    block_mask = torch_create_block_mask(causal_mod(), None, None, 130, 130, device="cpu", BLOCK_SIZE=block_size)
    with pytest.raises(ValueError, match="block_mask") as info:
        flashflex.flex_attention(q, k, v, block_mask=block_mask)
    assert "64" in str(info.value), "the message gives the block size received"


def test_block_mask_of_wrong_type(gen):
    q, k, v = _qkv(gen)
    with pytest.raises((TypeError, ValueError), match="block_mask"):
        flashflex.flex_attention(q, k, v, block_mask=torch.ones(130, 130, dtype=torch.bool))
