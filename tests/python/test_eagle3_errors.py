"""Bad inputs of flashflex.eagle3.ttt_attention, one test each: wrong types and dtypes are
TypeError, wrong shapes, counts, devices and values are ValueError, each naming the argument (a
block by its list position); CUDA tensors are NotImplementedError until the EAGLE3 kernel exists."""

from __future__ import annotations

import pytest
import torch

import flashflex
from helpers import randn

B, HQ, HKV, T, D, STEP = 2, 4, 2, 17, 64, 2


def _inputs(gen, dtype=torch.float32):
    q = randn(gen, B, HQ, T, D, dtype=dtype)
    k_blocks = [randn(gen, B, HKV, T, D, dtype=dtype) for _ in range(STEP + 1)]
    v_blocks = [randn(gen, B, HKV, T, D, dtype=dtype) for _ in range(STEP + 1)]
    return q, k_blocks, v_blocks


def _expect(error, match, q, k_blocks, v_blocks, **kwargs):
    with pytest.raises(error, match=match):
        flashflex.eagle3.ttt_attention(q, k_blocks, v_blocks, **kwargs)


def test_query_not_a_tensor(gen):
    _, k, v = _inputs(gen)
    _expect(TypeError, r"^q: expected a torch.Tensor, got list", [[0.0]], k, v)


def test_query_float64(gen):
    q, k, v = _inputs(gen)
    _expect(TypeError, r"^q: expected dtype float32, float16 or bfloat16, got torch.float64", q.double(), k, v)


def test_query_int32(gen):
    q, k, v = _inputs(gen)
    _expect(TypeError, r"^q: expected dtype .* got torch.int32", q.to(torch.int32), k, v)


def test_query_three_dims(gen):
    q, k, v = _inputs(gen)
    _expect(ValueError, r"^q: expected 4 dimensions", q[0], k, v)


def test_query_unsupported_head_dim(gen):
    q, k, v = _inputs(gen)
    _expect(ValueError, r"^q: expected head dim in \(64, 128, 256\), got 32", q[..., :32], k, v)


def test_key_blocks_as_one_concatenated_tensor(gen):
    q, k, v = _inputs(gen)
    _expect(TypeError, r"^k_blocks: expected a list of tensors .* got Tensor", q, torch.cat(k, dim=2), v)


def test_key_blocks_empty(gen):
    q, _, _ = _inputs(gen)
    _expect(ValueError, r"^k_blocks: expected at least one block", q, [], [])


def test_key_block_not_a_tensor(gen):
    q, k, v = _inputs(gen)
    k[1] = 3
    _expect(TypeError, r"^k_blocks\[1\]: expected a torch.Tensor, got int", q, k, v)


def test_value_block_count_differs(gen):
    q, k, v = _inputs(gen)
    _expect(ValueError, r"^v_blocks: expected 3 blocks \(as k_blocks\), got 2", q, k, v[:2])


def test_value_block_dtype_differs(gen):
    q, k, v = _inputs(gen)
    v[2] = v[2].to(torch.bfloat16)
    _expect(TypeError, r"^v_blocks\[2\]: expected dtype torch.float32 \(as q\), got torch.bfloat16", q, k, v)


def test_key_block_device_differs(gen):
    q, k, v = _inputs(gen)
    k[1] = torch.empty(B, HKV, T, D, device="meta")
    _expect(ValueError, r"^k_blocks\[1\]: expected device cpu \(as q\), got meta", q, k, v)


def test_key_block_three_dims(gen):
    q, k, v = _inputs(gen)
    k[2] = k[2][0]
    _expect(ValueError, r"^k_blocks\[2\]: expected 4 dimensions", q, k, v)


def test_first_key_block_length_differs_from_query(gen):
    q, k, v = _inputs(gen)
    k[0] = k[0][:, :, :T - 1]
    _expect(ValueError, r"^k_blocks\[0\]: expected shape \[2, Hkv, 17, 64\] .* got \(2, 2, 16, 64\)", q, k, v)


def test_later_key_block_shape_differs(gen):
    q, k, v = _inputs(gen)
    k[2] = k[2][:, :, :T - 1]
    _expect(ValueError, r"^k_blocks\[2\]: expected shape \(2, 2, 17, 64\) \(as k_blocks\[0\]\), got \(2, 2, 16, 64\)",
            q, k, v)


def test_value_block_heads_differ(gen):
    q, k, v = _inputs(gen)
    v[1] = v[1][:, :1]
    _expect(ValueError, r"^v_blocks\[1\]: expected shape \(2, 2, 17, 64\) \(as k_blocks\[0\]\), got \(2, 1, 17, 64\)",
            q, k, v)


def test_heads_not_dividing(gen):
    q, k, v = _inputs(gen)
    k = [randn(gen, B, 3, T, D) for _ in k]
    v = [randn(gen, B, 3, T, D) for _ in v]
    _expect(ValueError, r"^k_blocks\[0\]: expected a number of heads dividing q's 4 heads, got 3", q, k, v)


def test_seq_lengths_float_tensor(gen):
    _expect(TypeError, r"^seq_lengths: expected an int32 or int64 tensor, got dtype torch.float32", *_inputs(gen),
            seq_lengths=torch.tensor([17.0, 3.0]))


def test_seq_lengths_wrong_shape(gen):
    _expect(ValueError, r"^seq_lengths: expected shape \(2,\)", *_inputs(gen),
            seq_lengths=torch.tensor([[17, 3]]))


def test_seq_lengths_wrong_device(gen):
    _expect(ValueError, r"^seq_lengths: expected device cpu \(as q\), got meta", *_inputs(gen),
            seq_lengths=torch.empty(2, dtype=torch.int64, device="meta"))


def test_seq_lengths_tensor_value_above_seq_len(gen):
    # Checked by the native core (the CPU path reads the values): the C++ message, as ValueError.
    _expect(ValueError, r"^seq_lengths\[1\]: expected a length in \[0, 17\], got 18", *_inputs(gen),
            seq_lengths=torch.tensor([17, 18], dtype=torch.int32))


def test_seq_lengths_tensor_value_negative(gen):
    _expect(ValueError, r"^seq_lengths\[0\]: expected a length in \[0, 17\], got -1", *_inputs(gen),
            seq_lengths=torch.tensor([-1, 3]))


def test_seq_lengths_list_value_out_of_range(gen):
    _expect(ValueError, r"^seq_lengths\[1\]: expected a length in \[0, 17\], got 20", *_inputs(gen),
            seq_lengths=[17, 20])


def test_seq_lengths_list_wrong_count(gen):
    _expect(ValueError, r"^seq_lengths: expected 2 lengths", *_inputs(gen), seq_lengths=[17])


def test_seq_lengths_list_of_floats(gen):
    _expect(TypeError, r"^seq_lengths\[0\]: expected an int, got float", *_inputs(gen), seq_lengths=[17.0, 3.0])


def test_seq_lengths_wrong_type(gen):
    _expect(TypeError, r"^seq_lengths: expected None, an int32 / int64 tensor or a list of ints, got str",
            *_inputs(gen), seq_lengths="17")


def test_scale_not_finite(gen):
    _expect(ValueError, r"^scale: expected a finite number or None, got nan", *_inputs(gen), scale=float("nan"))


@pytest.mark.cuda
def test_float32_cuda_tensors_are_refused_by_name(gen):
    q, k, v = (t.cuda() if isinstance(t, torch.Tensor) else [x.cuda() for x in t] for t in _inputs(gen))
    _expect(NotImplementedError, r"^q: the CUDA EAGLE3 forward supports bfloat16 and float16, got float32", q, k, v)
