"""Bad arguments of every public entry point, one test per case: a wrong type is TypeError, a
wrong value or a size past the index limits is ValueError, an unsupported input kind is
NotImplementedError, and each message names the argument. Sizes past the limits come as expanded
views (no memory): the check must run before any output is allocated."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask as torch_create_block_mask

import flashflex
from flashflex import masks, score_mods
from helpers import make_qkv, randn
from mask_cases import causal_mod

MAX_SEQ_LEN = 2**31 - 128


def _qkv(gen, q_len=130, kv_len=130):
    return make_qkv(gen, 1, 2, 2, q_len, kv_len, 64)


def _expanded(length: int, heads: int = 2) -> torch.Tensor:
    return torch.ones(1, 1, 1, 64).expand(1, heads, length, 64)


# ---- flex_attention: flags must be bools ------------------------------------------------------

def test_deterministic_option_not_a_bool(gen):
    with pytest.raises(TypeError, match=r'^kernel_options\["deterministic"\]: expected a bool, got str'):
        flashflex.flex_attention(*_qkv(gen), kernel_options={"deterministic": "no"})


def test_enable_gqa_not_a_bool(gen):
    with pytest.raises(TypeError, match=r"^enable_gqa: expected a bool, got str 'no'"):
        flashflex.flex_attention(*_qkv(gen), enable_gqa="no")


def test_return_lse_not_a_bool(gen):
    with pytest.raises(TypeError, match=r"^return_lse: expected a bool, got int 1"):
        flashflex.flex_attention(*_qkv(gen), return_lse=1)


def test_scale_not_a_number(gen):
    with pytest.raises(TypeError, match=r"^scale: expected a finite number or None, got str"):
        flashflex.flex_attention(*_qkv(gen), scale="0.1")


# ---- flex_attention: inputs ----------------------------------------------------------------

def test_nested_query(gen):
    nt = torch.nested.nested_tensor([torch.randn(2, 130, 64), torch.randn(2, 100, 64)], layout=torch.jagged)
    with pytest.raises(NotImplementedError, match=r"^query: nested \(jagged\) tensors are not supported"):
        flashflex.flex_attention(nt, nt, nt)


def test_sparse_key(gen):
    q, k, v = _qkv(gen)
    with pytest.raises(NotImplementedError, match=r"^key: expected a dense \(strided\) tensor, got layout"):
        flashflex.flex_attention(q, k.to_sparse(), v)


def test_query_length_past_the_index_limit(gen):
    _, k, v = _qkv(gen)
    with pytest.raises(ValueError, match=r"^query: expected Q_LEN <= 2147483520 .* got 2147483648$"):
        flashflex.flex_attention(_expanded(2**31), k, v)


def test_key_length_past_the_index_limit(gen):
    q, _, _ = _qkv(gen)
    with pytest.raises(ValueError, match=r"^key: expected KV_LEN <= 2147483520 .* got 2147483647$"):
        flashflex.flex_attention(q, _expanded(2**31 - 1), _expanded(2**31 - 1))


def test_query_batch_past_the_index_limit(gen):
    _, k, v = _qkv(gen)
    q = torch.ones(1, 1, 1, 64).expand(2**31, 2, 130, 64)
    with pytest.raises(ValueError, match=r"^query: expected sizes <= 2147483647 .* in dimension 0"):
        flashflex.flex_attention(q, k, v)


def test_custom_op_called_directly_checks_sizes_before_allocating(gen):
    _, k, v = _qkv(gen)
    with pytest.raises(ValueError, match=r"^q: expected Q_LEN <= 2147483520 .* got 2147483648$"):
        torch.ops.flashflex.fwd(_expanded(2**31), k, v, [], 0.125, 0, 0.0, None, False, 0)


# ---- flex_attention: torch BlockMask lists -------------------------------------------------

def _torch_causal(length=300):
    return torch_create_block_mask(causal_mod(), None, None, length, length, device="cpu")


def test_torch_block_mask_kv_indices_past_the_kv_tiles(gen):
    bm = _torch_causal()
    bm.kv_indices[0, 0, 0, 0] = 7
    q, k, v = _qkv(gen, 300, 300)
    with pytest.raises(ValueError, match=r"^block_mask\.kv_indices: expected entries in \[0, 3\) .* got 7 at"):
        flashflex.flex_attention(q, k, v, block_mask=bm)


def test_torch_block_mask_full_kv_indices_negative(gen):
    bm = _torch_causal()
    bm.full_kv_indices[0, 0, 1, 0] = -1
    q, k, v = _qkv(gen, 300, 300)
    with pytest.raises(ValueError, match=r"^block_mask\.full_kv_indices: expected entries in \[0, 3\) .* got -1"):
        flashflex.flex_attention(q, k, v, block_mask=bm)


def test_torch_block_mask_kv_num_blocks_past_the_kv_tiles(gen):
    bm = _torch_causal()
    bm.kv_num_blocks[0, 0, 2] = 4
    q, k, v = _qkv(gen, 300, 300)
    with pytest.raises(ValueError, match=r"^block_mask\.kv_num_blocks: expected counts in \[0, 3\] .* got 4"):
        flashflex.flex_attention(q, k, v, block_mask=bm)


def test_torch_block_mask_q_indices_past_the_q_tiles(gen):
    bm = _torch_causal()
    bm.q_indices[0, 0, 0, 0] = 5
    q, k, v = _qkv(gen, 300, 300)
    with pytest.raises(ValueError, match=r"^block_mask\.q_indices: expected entries in \[0, 3\) .* got 5"):
        flashflex.flex_attention(q, k, v, block_mask=bm)


# ---- ttt_attention -------------------------------------------------------------------------

def test_ttt_sequence_past_the_index_limit():
    q = _expanded(2**31 - 1)
    with pytest.raises(ValueError, match=r"^q: expected T <= 2147483520 .* got 2147483647$"):
        flashflex.eagle3.ttt_attention(q, [q], [q])


def test_ttt_nested_block(gen):
    q = randn(gen, 1, 2, 17, 64)
    nt = torch.nested.nested_tensor([torch.randn(2, 17, 64)], layout=torch.jagged)
    with pytest.raises(NotImplementedError, match=r"^k_blocks\[1\]: nested"):
        flashflex.eagle3.ttt_attention(q, [q, nt], [q, q])


def test_ttt_return_lse_not_a_bool(gen):
    q = randn(gen, 1, 2, 17, 64)
    with pytest.raises(TypeError, match=r"^return_lse: expected a bool"):
        flashflex.eagle3.ttt_attention(q, [q], [q], return_lse="yes")


# ---- create_block_mask ---------------------------------------------------------------------

def test_create_block_mask_length_past_the_index_limit():
    with pytest.raises(ValueError, match=r"^Q_LEN: expected Q_LEN <= 2147483520 .* got 2147483647$"):
        flashflex.create_block_mask(masks.causal(), None, None, 2**31 - 1, 2**31 - 1)


def test_create_block_mask_of_a_mask_mod_past_the_index_limit():
    with pytest.raises(ValueError, match=r"^KV_LEN: expected KV_LEN <= 2147483520 .* got 2147483647$"):
        flashflex.create_block_mask(causal_mod(), None, None, 128, 2**31 - 1)


def test_create_block_mask_with_too_many_tiles():
    with pytest.raises(ValueError, match=r"^build_block_mask: expected at most 2147483647 tiles .*\(q_len 1073741824"):
        flashflex.create_block_mask(masks.causal(), None, None, 2**30, 2**30)


def test_create_block_mask_of_a_mask_mod_with_too_many_tiles():
    with pytest.raises(ValueError, match=r"^B, H, Q_LEN, KV_LEN: expected at most 2147483647 tiles"):
        flashflex.create_block_mask(causal_mod(), 64, 64, 2**24, 2**24)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_create_block_mask_on_cuda_without_cuda():
    with pytest.raises(ValueError, match=r"^device: expected a device this process can use, got 'cuda'"):
        flashflex.create_block_mask(masks.causal(), None, None, 128, 128, device="cuda")


def test_create_block_mask_on_an_unknown_device():
    with pytest.raises(ValueError, match=r"^device: expected a torch device .* got 'gpu0'"):
        flashflex.create_block_mask(masks.causal(), None, None, 128, 128, device="gpu0")


def test_mask_mod_with_two_arguments():
    with pytest.raises(TypeError, match=r"^mask_mod: expected a callable of 4 positional arguments .* \(b, h\)"):
        flashflex.create_block_mask(lambda b, h: True, None, None, 128, 128)


def test_create_block_mask_batch_not_an_int():
    with pytest.raises(TypeError, match=r"^B: expected an int or None, got str '2'"):
        flashflex.create_block_mask(masks.causal(), "2", None, 128, 128)


def test_create_block_mask_length_not_an_int():
    with pytest.raises(TypeError, match=r"^Q_LEN: expected an int, got float 128.0"):
        flashflex.create_block_mask(masks.causal(), None, None, 128.0, 128)


def test_create_block_mask_length_zero():
    with pytest.raises(ValueError, match=r"^KV_LEN: expected KV_LEN >= 1, got 0"):
        flashflex.create_block_mask(masks.causal(), None, None, 128, 0)


def test_create_block_mask_batch_other_than_the_mask_data():
    with pytest.raises(ValueError, match=r"^B: expected 2 \(the samples the mask's data describe\), got 3"):
        flashflex.create_block_mask(masks.prefix_lm([81, 90]), 3, None, 130, 130)


# ---- masks ---------------------------------------------------------------------------------

def test_causal_offset_not_an_int():
    with pytest.raises(TypeError, match=r"^causal: expected offset as an int, got str 'abc'"):
        masks.causal("abc")


def test_causal_offset_past_int64():
    with pytest.raises(ValueError, match=r"^causal: expected offset in the int64 range .* got 9223372036854775808"):
        masks.causal(2**63)


def test_sliding_window_left_not_an_int():
    with pytest.raises(TypeError, match=r"^sliding_window: expected left as an int, got float 1.5"):
        masks.sliding_window(1.5)


def test_sliding_window_right_a_bool():
    with pytest.raises(TypeError, match=r"^sliding_window: expected right as an int, got bool"):
        masks.sliding_window(4, True)


def test_prefix_lm_length_not_an_int():
    with pytest.raises(TypeError, match=r"^prefix_lm: expected prefix_lengths\[1\] as an int, got str"):
        masks.prefix_lm([3, "4"])


def test_prefix_lm_length_past_int64():
    with pytest.raises(ValueError, match=r"^prefix_lm: expected prefix_lengths\[0\] in the int64 range"):
        masks.prefix_lm([2**63])


def test_padding_lengths_as_floats():
    with pytest.raises(TypeError, match=r"^padding: expected q_lengths as a 1-D integer tensor .* torch.float32"):
        masks.padding(torch.tensor([3.0, 4.0]))


def test_document_ids_as_a_list():
    with pytest.raises(TypeError, match=r"^document: expected doc_ids as an integer tensor .* got list"):
        masks.document([0, 0, 1])


def test_eagle3_length_past_block_len():
    with pytest.raises(ValueError, match=r"^eagle3: expected lengths\[0\] <= block_len 128, got 200"):
        masks.eagle3(1, 128, [200])


def test_eagle3_step_not_an_int():
    with pytest.raises(TypeError, match=r"^eagle3: expected step as an int, got str"):
        masks.eagle3("1", 128)


def test_one_sample_mask_as_torch_mask_mod_broadcasts(gen):
    # The one rule of both routes: one sample's data apply to every sample of the batch.
    mask = masks.prefix_lm([81])
    via_torch = flashflex.BlockMask.from_torch(torch_create_block_mask(mask, 2, None, 130, 130, device="cpu"))
    via_flashflex = flashflex.create_block_mask(mask, 2, None, 130, 130)
    dense = via_flashflex.to_dense_elements().expand(2, 1, 130, 130)
    assert torch.equal(via_torch.to_dense_elements(), dense)


def test_mask_data_of_other_batch_as_torch_mask_mod():
    with pytest.raises(ValueError, match=r"^prefix_lm: the mask's data describe 2 samples"):
        torch_create_block_mask(masks.prefix_lm([81, 90]), 3, None, 130, 130, device="cpu")


# ---- score_mods ----------------------------------------------------------------------------

def test_softcap_of_a_string():
    with pytest.raises(TypeError, match=r"^softcap: expected cap as a real number .* got str 'abc'"):
        score_mods.softcap("abc")


def test_softcap_of_none():
    with pytest.raises(TypeError, match=r"^softcap: expected cap as a real number .* got NoneType"):
        score_mods.softcap(None)


def test_softcap_of_a_bool():
    with pytest.raises(TypeError, match=r"^softcap: expected cap as a real number .* got bool"):
        score_mods.softcap(True)


def test_softcap_not_finite():
    with pytest.raises(ValueError, match=r"^softcap: expected a finite cap > 0, got nan"):
        score_mods.softcap(float("nan"))


def test_alibi_slopes_as_a_list():
    with pytest.raises(TypeError, match=r"^alibi: expected slopes as a 1-D float32 tensor \[Hq\], got list"):
        score_mods.alibi([0.5, 0.25])


def test_bias_as_a_list():
    with pytest.raises(TypeError, match=r"^bias: expected a 4-D tensor .* got list"):
        score_mods.bias([[0.0]])


def test_score_mod_codes_come_from_the_binding():
    kinds = flashflex._C.SCORE_MOD_KINDS
    assert kinds == {"none": 0, "softcap": 1, "alibi": 2, "bias": 3, "linked": 4}
    assert score_mods.softcap(2.0).kind == kinds["softcap"]
