"""flashflex.eagle3.ttt_attention on the GPU (src/cuda/eagle3.cu: the block-sparse causal kernels
over block 0 with the row-local keys folded in) against the float64 references of
eagle3_reference.py, on the very values the kernels received (inputs rounded to bf16 / fp16
first): the SDPA formulation for out, lse and every gradient, and torch's flex_attention with the
customers' mask over the concatenated blocks for the forward. Skipped without a GPU.

Tolerances: out as helpers.TOL (4 half-ulps of the dtype, relative to max|ref|); gradients twice
that, for the dtype rounding of P and dS before their products, which every FlashAttention-class
backward does. A masking, indexing or row-limit error moves values by O(1) of max|ref|."""

from __future__ import annotations

import math

import pytest
import torch

import flashflex
from flashflex import _C
from flashflex._tensor_ref import stream_of, tensor_ref
from eagle3_reference import flex_reference, sdpa_reference, valid_rows
from helpers import TOL, assert_close, assert_lse_close, randn
from mask_cases import randint

pytestmark = pytest.mark.cuda

DTYPES = (torch.bfloat16, torch.float16)
GRAD_TOL = {dtype: 2 * TOL[dtype] for dtype in DTYPES}


def make_inputs(gen, batch, hq, hkv, seq_len, head_dim, step, dtype, layout="bhsd"):
    """q, k_blocks, v_blocks (CUDA, `dtype`), dout, dlse; layout "bshd": [B, T, H, D] memory seen
    as [B, H, T, D]."""
    def tensor(heads):
        if layout == "bshd":
            return randn(gen, batch, seq_len, heads, head_dim, dtype=dtype).cuda().transpose(1, 2)
        return randn(gen, batch, heads, seq_len, head_dim, dtype=dtype).cuda()
    q = tensor(hq)
    k_blocks = [tensor(hkv) for _ in range(step + 1)]
    v_blocks = [tensor(hkv) for _ in range(step + 1)]
    dout = randn(gen, batch, hq, seq_len, head_dim, dtype=dtype).cuda()
    dlse = randn(gen, batch, hq, seq_len).cuda()
    return q, k_blocks, v_blocks, dout, dlse


def unequal_lengths(gen, seq_len: int, step: int) -> torch.Tensor:
    """B = 2 on the GPU: sample 0 a random length >= step + 1 (some valid rows), sample 1 a random
    length in [0, T] (often with no valid row at all)."""
    first = randint(gen, min(step + 1, seq_len), seq_len)
    return torch.tensor([first, randint(gen, 0, seq_len)], dtype=torch.int64).cuda()


def reference(q, k_blocks, v_blocks, dout, dlse, seq_lengths, scale=None):
    """float64 SDPA formulation on the CPU: (out, lse, [dq, dk_0.., dv_0..])."""
    leaves = [t.detach().cpu().double().requires_grad_() for t in (q, *k_blocks, *v_blocks)]
    n = len(k_blocks)
    lengths = None if seq_lengths is None else seq_lengths.cpu()
    out, lse = sdpa_reference(leaves[0], leaves[1:1 + n], leaves[1 + n:], lengths, scale)
    valid = torch.isfinite(lse)
    loss = (out * dout.cpu().double()).sum() + (torch.where(valid, lse, 0.0) * dlse.cpu().double()).sum()
    loss.backward()
    return out.detach(), lse.detach(), [t.grad for t in leaves]


def flashflex_run(q, k_blocks, v_blocks, dout, dlse, seq_lengths, scale=None):
    """ttt_attention forward and autograd backward: (out, lse, [dq, dk_0.., dv_0..])."""
    leaves = [t.detach().requires_grad_() for t in (q, *k_blocks, *v_blocks)]
    n = len(k_blocks)
    out, lse = flashflex.eagle3.ttt_attention(leaves[0], leaves[1:1 + n], leaves[1 + n:], seq_lengths=seq_lengths,
                                              scale=scale, return_lse=True)
    valid = torch.isfinite(lse)
    loss = (out.float() * dout.float()).sum() + (torch.where(valid, lse, 0.0) * dlse).sum()
    loss.backward()
    return out.detach(), lse.detach(), [t.grad for t in leaves]


def assert_matches(got, want, dtype, num_blocks):
    out, lse, grads = got
    ref_out, ref_lse, ref_grads = want
    assert out.dtype == dtype
    assert_close(out, ref_out, TOL[dtype], "out")
    assert_lse_close(lse, ref_lse)
    names = ["dq"] + [f"dk_blocks[{j}]" for j in range(num_blocks)] + [f"dv_blocks[{j}]" for j in range(num_blocks)]
    for name, g, ref_g in zip(names, grads, ref_grads):
        assert g is not None and g.dtype == dtype, f"{name}: {None if g is None else g.dtype}"
        assert_close(g, ref_g, GRAD_TOL[dtype], name)


def assert_invalid_rows_exact(got, seq_lengths, step):
    """Rows past L_b - step: out 0, lse -inf, dq 0; their row-local keys: dk_j, dv_j 0 (j >= 1)."""
    out, lse, grads = got
    batch, hq, seq_len, _ = out.shape
    lengths = None if seq_lengths is None else seq_lengths.cpu()
    valid = valid_rows(lengths, batch, seq_len, step).cuda()
    invalid_q = ~valid[:, None, :].expand(batch, hq, seq_len)
    assert torch.all(out[invalid_q] == 0), "out: non-zero on invalid rows"
    assert torch.all(torch.isneginf(lse[invalid_q])), "lse: not -inf on invalid rows"
    assert torch.all(grads[0][invalid_q] == 0), "dq: non-zero on invalid rows"
    n = step + 1
    for j in range(1, n):
        dk, dv = grads[1 + j], grads[1 + n + j]
        invalid_kv = ~valid[:, None, :].expand(batch, dk.shape[1], seq_len)
        assert torch.all(dk[invalid_kv] == 0) and torch.all(dv[invalid_kv] == 0), f"block {j}: invalid rows"


# ---- every TTT step and odd lengths ------------------------------------------------------------

@pytest.mark.parametrize("step", [0, 1, 3, 6])
@pytest.mark.parametrize("seq_len", [1, 17, 130, 257, 700])
def test_steps_and_lengths(step, seq_len, gen):
    dtype = torch.bfloat16
    q, k_blocks, v_blocks, dout, dlse = make_inputs(gen, 2, 4, 1, seq_len, 128, step, dtype)
    lengths = unequal_lengths(gen, seq_len, step)
    got = flashflex_run(q, k_blocks, v_blocks, dout, dlse, lengths)
    assert_matches(got, reference(q, k_blocks, v_blocks, dout, dlse, lengths), dtype, step + 1)
    assert_invalid_rows_exact(got, lengths, step)


# ---- GQA ratios, head dims, dtypes, layouts -----------------------------------------------------

@pytest.mark.parametrize("heads", [(3, 3), (4, 1), (5, 1), (7, 1), (8, 2)], ids=lambda h: f"hq{h[0]}_hkv{h[1]}")
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
def test_gqa_head_dims_dtypes_layouts(heads, head_dim, dtype, layout, gen):
    step, seq_len = 6, 193
    q, k_blocks, v_blocks, dout, dlse = make_inputs(gen, 2, *heads, seq_len, head_dim, step, dtype, layout)
    lengths = unequal_lengths(gen, seq_len, step).to(torch.int32)
    got = flashflex_run(q, k_blocks, v_blocks, dout, dlse, lengths)
    assert out_layout_kept(got[0], q)
    assert_matches(got, reference(q, k_blocks, v_blocks, dout, dlse, lengths), dtype, step + 1)
    assert_invalid_rows_exact(got, lengths, step)


def out_layout_kept(out, q) -> bool:
    return out.stride().index(1) == q.stride().index(1) and out.stride() == q.stride()


def test_without_lengths_and_explicit_scale(gen):
    step, seq_len, dtype = 2, 300, torch.float16
    q, k_blocks, v_blocks, dout, dlse = make_inputs(gen, 1, 4, 2, seq_len, 64, step, dtype)
    got = flashflex_run(q, k_blocks, v_blocks, dout, dlse, None, scale=0.2)
    assert_matches(got, reference(q, k_blocks, v_blocks, dout, dlse, None, scale=0.2), dtype, step + 1)
    assert int(torch.isneginf(got[1]).sum()) == 4 * step


def test_forward_matches_torch_flex_with_customers_mask(gen):
    step, seq_len, dtype = 5, 257, torch.bfloat16
    q, k_blocks, v_blocks, _, _ = make_inputs(gen, 2, 5, 1, seq_len, 128, step, dtype)
    lengths = unequal_lengths(gen, seq_len, step)
    out, lse = flashflex.eagle3.ttt_attention(q, k_blocks, v_blocks, seq_lengths=lengths, return_lse=True)
    ref_out, ref_lse = flex_reference(q.cpu(), [k.cpu() for k in k_blocks], [v.cpu() for v in v_blocks],
                                      lengths.cpu())
    assert_close(out, ref_out, TOL[dtype], "out")
    assert_lse_close(lse, ref_lse)


def test_long_sequence_many_full_tiles(gen):
    step, seq_len, dtype = 6, 2000, torch.bfloat16
    q, k_blocks, v_blocks, dout, dlse = make_inputs(gen, 1, 4, 1, seq_len, 128, step, dtype)
    lengths = torch.tensor([1537], device="cuda")
    got = flashflex_run(q, k_blocks, v_blocks, dout, dlse, lengths)
    assert_matches(got, reference(q, k_blocks, v_blocks, dout, dlse, lengths), dtype, step + 1)
    assert_invalid_rows_exact(got, lengths, step)


# ---- the native calls: every output element written, determinism, graphs -----------------------

class PoisonedWorkspace:
    """alloc_workspace of the native calls: 0xFF bytes, so that scratch the kernels forget to
    initialise shows."""

    def __init__(self, device):
        self.device, self.tensor = device, None

    def __call__(self, nbytes):
        self.tensor = torch.full((nbytes,), 255, dtype=torch.uint8, device=self.device)
        return self.tensor.data_ptr()


def native_forward(q, k_blocks, v_blocks, lengths, scale):
    out = torch.full_like(q, float("nan"))
    lse = torch.full(q.shape[:3], float("nan"), device=q.device)
    args = (tensor_ref(q), [tensor_ref(k) for k in k_blocks], [tensor_ref(v) for v in v_blocks],
            tensor_ref(lengths), tensor_ref(out), tensor_ref(lse), scale)
    # No prebuilt mask: the call builds block 0's mask into its (poisoned) workspace.
    _C.eagle3_forward(*args, _C.BACKENDS["AUTO"], None, PoisonedWorkspace(q.device), stream_of(q))
    return out, lse


def native_backward(q, k_blocks, v_blocks, lengths, out, dout, lse, dlse, scale, deterministic):
    dq = torch.full_like(q, float("nan"))
    dks = [torch.full_like(k, float("nan")) for k in k_blocks]
    dvs = [torch.full_like(v, float("nan")) for v in v_blocks]
    args = (tensor_ref(q), [tensor_ref(k) for k in k_blocks], [tensor_ref(v) for v in v_blocks],
            tensor_ref(lengths), tensor_ref(out), tensor_ref(dout), tensor_ref(lse), tensor_ref(dlse),
            tensor_ref(dq), [tensor_ref(t) for t in dks], [tensor_ref(t) for t in dvs], scale, deterministic)
    _C.eagle3_backward(*args, _C.BACKENDS["AUTO"], None, PoisonedWorkspace(q.device), stream_of(q))
    return [dq, *dks, *dvs]


@pytest.mark.parametrize("deterministic", [False, True])
def test_native_outputs_poisoned_then_fully_written(deterministic, gen):
    step, seq_len, dtype = 4, 257, torch.bfloat16
    q, k_blocks, v_blocks, dout, dlse = make_inputs(gen, 2, 4, 1, seq_len, 128, step, dtype)
    lengths = torch.tensor([seq_len, 3], device="cuda")  # sample 1: no valid row (3 < step + 1)
    scale = 1.0 / math.sqrt(128)
    out, lse = native_forward(q, k_blocks, v_blocks, lengths, scale)
    grads = native_backward(q, k_blocks, v_blocks, lengths, out, dout, lse, dlse, scale, deterministic)
    got = (out, lse, grads)
    for name, t in [("out", out), ("lse", lse)] + [(f"grad {i}", g) for i, g in enumerate(grads)]:
        assert not torch.isnan(t).any(), f"{name}: elements never written"
    # The native backward's dlse enters for every row; the reference adds it on valid rows only,
    # where it is the same thing (invalid rows have no gradient at all).
    assert_matches(got, reference(q, k_blocks, v_blocks, dout, dlse, lengths, scale), dtype, step + 1)
    assert_invalid_rows_exact(got, lengths, step)
    if deterministic:
        again = native_backward(q, k_blocks, v_blocks, lengths, out, dout, lse, dlse, scale, True)
        for a, b in zip(grads, again):
            assert torch.equal(a, b), "deterministic backward: bits differ between runs"


def test_cached_causal_mask_across_lengths_streams_and_evictions(gen):
    """ttt_attention reads block 0's mask from flashflex._eagle3_mask_cache; the native calls
    without one build it per call. Same kernels, so the same bits (deterministic backward), over
    more lengths than the cache holds (evictions), lengths seen again (hits after eviction too) and
    calls on a second stream (the wait for the build's event)."""
    from flashflex import _eagle3_mask_cache
    _eagle3_mask_cache.clear()
    step, scale = 2, 1.0 / math.sqrt(64)
    seq_lens = [129, 257, 385, 513, 641, 769, 897, 1025, 1153, 129, 257, 1153]  # 9 distinct, 8 cached
    side = torch.cuda.Stream()
    for i, seq_len in enumerate(seq_lens):
        q, k_blocks, v_blocks, dout, dlse = make_inputs(gen, 1, 4, 1, seq_len, 64, step, torch.bfloat16)
        stream = side if i % 2 else torch.cuda.current_stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            leaves = [t.detach().requires_grad_() for t in (q, *k_blocks, *v_blocks)]
            n = step + 1
            out, lse = flashflex.eagle3.ttt_attention(leaves[0], leaves[1:1 + n], leaves[1 + n:], return_lse=True,
                                                      kernel_options={"deterministic": True})
            torch.autograd.backward([out, lse], [dout, torch.where(torch.isfinite(lse), dlse, 0.0)])
            want_out, want_lse = native_forward(q, k_blocks, v_blocks, None, scale)
            want_grads = native_backward(q, k_blocks, v_blocks, None, want_out, dout, want_lse,
                                         torch.where(torch.isfinite(want_lse), dlse, 0.0), scale, True)
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        assert torch.equal(out, want_out), f"T={seq_len}: out"
        assert torch.equal(lse, want_lse), f"T={seq_len}: lse"
        for j, (leaf, want) in enumerate(zip(leaves, want_grads)):
            assert torch.equal(leaf.grad, want), f"T={seq_len}: gradient {j}"
    assert len(_eagle3_mask_cache._entries) == _eagle3_mask_cache._MAX_ENTRIES


def test_cuda_graph_capture_and_replay(gen):
    step, seq_len, dtype = 6, 385, torch.bfloat16
    q, k_blocks, v_blocks, dout, dlse = make_inputs(gen, 2, 4, 1, seq_len, 64, step, dtype)
    lengths = unequal_lengths(gen, seq_len, step)
    leaves = [t.detach().requires_grad_() for t in (q, *k_blocks, *v_blocks)]
    n = step + 1

    def unroll():
        for t in leaves:
            t.grad = None
        out = flashflex.eagle3.ttt_attention(leaves[0], leaves[1:1 + n], leaves[1 + n:], seq_lengths=lengths)
        (out.float() * dout.float()).sum().backward()
        return out

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        eager_out = unroll().detach().clone()
        eager_grads = [t.grad.clone() for t in leaves]
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            graph_out = unroll()
    torch.cuda.current_stream().wait_stream(stream)
    for t in leaves:
        t.grad.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(graph_out, eager_out)
    for a, t in zip(eager_grads, leaves):
        assert torch.allclose(a.float(), t.grad.float(), atol=1e-2, rtol=1e-2)


def test_cuda_graph_whole_unroll(gen):
    """The trainer's shape of it: 7 steps, step k over K_0..K_k, one backward of all outputs,
    captured once and replayed on new input values (copied into the captured leaves)."""
    steps, seq_len, dtype = 7, 385, torch.bfloat16
    q, k_blocks, v_blocks, _, _ = make_inputs(gen, 2, 4, 1, seq_len, 64, steps - 1, dtype)
    q_steps = [q] + [randn(gen, *q.shape, dtype=dtype).cuda() for _ in range(steps - 1)]
    douts = [randn(gen, *q.shape, dtype=dtype).cuda() for _ in range(steps)]
    lengths = unequal_lengths(gen, seq_len, steps - 1)
    leaves = [t.detach().clone().requires_grad_() for t in (*q_steps, *k_blocks, *v_blocks)]
    qs, ks, vs = leaves[:steps], leaves[steps:2 * steps], leaves[2 * steps:]

    def unroll():
        outs = [flashflex.eagle3.ttt_attention(qs[s], ks[:s + 1], vs[:s + 1], seq_lengths=lengths)
                for s in range(steps)]
        torch.autograd.backward(outs, douts)
        return outs

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        unroll()  # warm-up outside the capture
        for t in leaves:
            t.grad = None
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            graph_outs = unroll()
    torch.cuda.current_stream().wait_stream(stream)

    new_values = [randn(gen, *t.shape, dtype=dtype).cuda() for t in leaves]
    with torch.no_grad():
        for t, value in zip(leaves, new_values):
            t.copy_(value)
    for t in leaves:
        t.grad.zero_()  # the replay must write them afresh: a stale value cannot pass
    graph.replay()
    torch.cuda.synchronize()
    replay_outs = [o.detach().clone() for o in graph_outs]
    replay_grads = [t.grad.detach().clone() for t in leaves]

    fresh = [value.clone().requires_grad_() for value in new_values]
    qs, ks, vs = fresh[:steps], fresh[steps:2 * steps], fresh[2 * steps:]
    eager_outs = unroll()
    for a, b in zip(replay_outs, eager_outs):
        assert torch.equal(a, b.detach())
    for a, t in zip(replay_grads, fresh):
        assert torch.allclose(a.float(), t.grad.float(), atol=1e-2, rtol=1e-2)


# ---- what the CUDA path refuses, by name ------------------------------------------------------

def test_too_many_blocks_is_refused_by_name(gen):
    q, k_blocks, v_blocks, _, _ = make_inputs(gen, 1, 2, 1, 33, 64, 16, torch.bfloat16)
    with pytest.raises(Exception, match="k_blocks: the CUDA EAGLE3 path takes at most 16 blocks"):
        flashflex.eagle3.ttt_attention(q, k_blocks, v_blocks)
