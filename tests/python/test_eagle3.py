"""flashflex.eagle3.ttt_attention on the CPU against the two float64 formulations of
eagle3_reference.py: torch's own flex_attention with the customers' generate_eagle3_mask over the
concatenated blocks (forward), and the SDPA formulation with the diagonal logits folded into the
softmax (forward and, through float64 autograd, the gradients of q and of every block). Valid
rows are compared with helpers.TOL / LSE_TOL; invalid rows must give out 0, lse -inf and zero
gradients exactly. Bad inputs are in test_eagle3_errors.py."""

from __future__ import annotations

import time

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend

import flashflex
from eagle3_reference import flex_reference, sdpa_reference, valid_rows
from helpers import REF_TOL, TOL, assert_close, assert_lse_close, randn
from mask_cases import randint

SEQ_LENS = (1, 17, 130, 257)
GQA = ((1, 1), (4, 1), (5, 1), (4, 4), (8, 2))  # (Hq, Hkv): group sizes 1, 4, 5, 1, 4


def make_blocks(gen, batch, hq, hkv, seq_len, head_dim, step, dtype=torch.float32, seq_outer=False):
    """q [B, Hq, T, D] and step + 1 key and value blocks [B, Hkv, T, D]; seq_outer: stored as
    [B, T, H, D] and seen through strides."""
    def tensor(heads):
        if seq_outer:
            return randn(gen, batch, seq_len, heads, head_dim, dtype=dtype).transpose(1, 2)
        return randn(gen, batch, heads, seq_len, head_dim, dtype=dtype)
    q = tensor(hq)
    k_blocks = [tensor(hkv) for _ in range(step + 1)]
    v_blocks = [tensor(hkv) for _ in range(step + 1)]
    return q, k_blocks, v_blocks


def unequal_lengths(gen, seq_len: int) -> torch.Tensor:
    """B = 2: sample 0 full, sample 1 a random length in [0, T] (often shorter than step + 1)."""
    return torch.tensor([seq_len, randint(gen, 0, seq_len)], dtype=torch.int64)


def run_both(q, k_blocks, v_blocks, seq_lengths, gen, through_lse=True, scale=None):
    """ttt_attention and the SDPA reference on the same (rounded) inputs, loss
    sum(out * dout) (+ sum(lse * dlse) over valid rows); returns (flashflex, reference) pairs of
    (out, lse, [grad of q, of every k block, of every v block])."""
    leaves = [t.detach().requires_grad_() for t in (q, *k_blocks, *v_blocks)]
    ref_leaves = [t.detach().double().requires_grad_() for t in (q, *k_blocks, *v_blocks)]
    n = len(k_blocks)
    dout = randn(gen, *q.shape)
    dlse = randn(gen, *q.shape[:3])

    out, lse = flashflex.eagle3.ttt_attention(leaves[0], leaves[1:1 + n], leaves[1 + n:], seq_lengths=seq_lengths,
                                              scale=scale, return_lse=True)
    ref_out, ref_lse = sdpa_reference(ref_leaves[0], ref_leaves[1:1 + n], ref_leaves[1 + n:], seq_lengths, scale)
    loss = (out.double() * dout.double()).sum()
    ref_loss = (ref_out * dout.double()).sum()
    if through_lse:
        valid = torch.isfinite(ref_lse)
        loss = loss + (torch.where(valid, lse.double(), 0.0) * dlse.double()).sum()
        ref_loss = ref_loss + (torch.where(valid, ref_lse, 0.0) * dlse.double()).sum()
    loss.backward()
    ref_loss.backward()
    return (out, lse, [t.grad for t in leaves]), (ref_out, ref_lse, [t.grad for t in ref_leaves])


def grad_names(num_blocks: int):
    return ["dq"] + [f"dk_blocks[{j}]" for j in range(num_blocks)] + [f"dv_blocks[{j}]" for j in range(num_blocks)]


def assert_matches(got, want, dtype, num_blocks):
    out, lse, grads = got
    ref_out, ref_lse, ref_grads = want
    assert out.dtype == dtype and out.shape == ref_out.shape
    assert_close(out, ref_out, TOL[dtype], "out")
    assert_lse_close(lse, ref_lse)
    for name, g, ref_g in zip(grad_names(num_blocks), grads, ref_grads):
        assert g is not None, f"{name}: no gradient"
        assert g.dtype == dtype, f"{name}: dtype {g.dtype}, expected {dtype}"
        assert_close(g, ref_g, TOL[dtype], name)


def assert_invalid_rows_exact(got, seq_lengths, step):
    """Invalid rows: out 0, lse -inf, dq 0; key rows no valid row sees: dk, dv 0 (block 0: rows
    >= the last valid row + 1; blocks 1..k: the invalid rows themselves)."""
    out, lse, grads = got
    batch, _, seq_len, _ = out.shape
    valid = valid_rows(seq_lengths, batch, seq_len, step)  # [B, T]
    invalid_q = ~valid[:, None, :].expand(batch, out.shape[1], seq_len)
    assert torch.all(out[invalid_q] == 0), "out: non-zero on invalid rows"
    assert torch.all(torch.isneginf(lse[invalid_q])), "lse: not -inf on invalid rows"
    assert torch.all(grads[0][invalid_q] == 0), "dq: non-zero on invalid rows"
    n = step + 1
    for j, (dk, dv) in enumerate(zip(grads[1:1 + n], grads[1 + n:])):
        unseen = ~valid if j > 0 else valid.int().sum(1, keepdim=True) <= torch.arange(seq_len)[None, :]
        unseen = unseen[:, None, :].expand(batch, dk.shape[1], seq_len)
        assert torch.all(dk[unseen] == 0), f"dk_blocks[{j}]: non-zero on key rows no valid row sees"
        assert torch.all(dv[unseen] == 0), f"dv_blocks[{j}]: non-zero on key rows no valid row sees"
    return int(invalid_q.sum())


# ---- the two references agree (the oracle first) ---------------------------------------------

@pytest.mark.parametrize("step", [0, 1, 3, 6])
@pytest.mark.parametrize("seq_len", [17, 257])
def test_references_agree(step, seq_len, gen):
    q, k_blocks, v_blocks = make_blocks(gen, 2, 4, 1, seq_len, 64, step, dtype=torch.float64)
    lengths = unequal_lengths(gen, seq_len)
    out, lse = sdpa_reference(q, k_blocks, v_blocks, lengths)
    ref_out, ref_lse = flex_reference(q, k_blocks, v_blocks, lengths)
    assert_close(out, ref_out, REF_TOL, "out")
    empty = torch.isneginf(ref_lse)
    assert torch.equal(torch.isneginf(lse), empty)
    assert_close(lse[~empty], ref_lse[~empty], REF_TOL, "lse")


# ---- forward against torch's flex_attention with the customers' mask ------------------------

@pytest.mark.parametrize("step", range(7))
@pytest.mark.parametrize("seq_len", SEQ_LENS)
def test_forward_matches_torch_flex_with_customers_mask(step, seq_len, gen):
    hq, hkv = GQA[step % 3]
    head_dim = 128 if step % 2 else 64
    q, k_blocks, v_blocks = make_blocks(gen, 2, hq, hkv, seq_len, head_dim, step)
    lengths = unequal_lengths(gen, seq_len)
    out, lse = flashflex.eagle3.ttt_attention(q, k_blocks, v_blocks, seq_lengths=lengths, return_lse=True)
    ref_out, ref_lse = flex_reference(q, k_blocks, v_blocks, lengths)
    assert_close(out, ref_out, TOL[torch.float32], "out")
    assert_lse_close(lse, ref_lse)
    assert torch.all(out[torch.isneginf(ref_lse)] == 0)


def test_forward_without_lengths_matches_torch_flex(gen):
    # seq_lengths=None: L_b = T, so the last `step` rows are invalid, as with the customers' full lengths.
    step, seq_len = 3, 130
    q, k_blocks, v_blocks = make_blocks(gen, 1, 4, 1, seq_len, 64, step)
    out, lse = flashflex.eagle3.ttt_attention(q, k_blocks, v_blocks, return_lse=True)
    ref_out, ref_lse = flex_reference(q, k_blocks, v_blocks)
    assert_close(out, ref_out, TOL[torch.float32], "out")
    assert_lse_close(lse, ref_lse)
    assert int(torch.isneginf(lse).sum()) == 4 * step


# ---- gradients against the SDPA formulation ----------------------------------------------------

@pytest.mark.parametrize("step", range(7))
@pytest.mark.parametrize("seq_len", SEQ_LENS)
def test_grads_match_sdpa_formulation(step, seq_len, gen):
    hq, hkv = GQA[(step + SEQ_LENS.index(seq_len)) % len(GQA)]
    head_dim = 64 if (step + seq_len) % 3 else 128
    q, k_blocks, v_blocks = make_blocks(gen, 2, hq, hkv, seq_len, head_dim, step)
    lengths = unequal_lengths(gen, seq_len)
    got, want = run_both(q, k_blocks, v_blocks, lengths, gen)
    assert_matches(got, want, torch.float32, step + 1)
    assert_invalid_rows_exact(got, lengths, step)


def test_invalid_rows_exact_when_a_sample_is_shorter_than_the_step(gen):
    # Sample 1 has L = step: every row invalid; sample 0 has L = step + 1: only row 0 valid.
    step, seq_len = 4, 17
    q, k_blocks, v_blocks = make_blocks(gen, 2, 4, 2, seq_len, 64, step)
    lengths = torch.tensor([step + 1, step], dtype=torch.int32)
    got, want = run_both(q, k_blocks, v_blocks, lengths, gen)
    assert_matches(got, want, torch.float32, step + 1)
    assert assert_invalid_rows_exact(got, lengths, step) == 4 * (2 * seq_len - 1)
    assert torch.all(got[2][0][1] == 0), "dq of the sample with no valid row"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("step", [1, 6])
def test_low_precision_inputs(dtype, step, gen):
    q, k_blocks, v_blocks = make_blocks(gen, 2, 5, 1, 130, 128 if step == 6 else 64, step, dtype=dtype)
    lengths = unequal_lengths(gen, 130)
    got, want = run_both(q, k_blocks, v_blocks, lengths, gen)
    assert_matches(got, want, dtype, step + 1)
    assert_invalid_rows_exact(got, lengths, step)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_seq_outer_layout(dtype, gen):
    # [B, T, H, D] memory seen as [B, H, T, D]: out keeps q's layout, gradients match.
    step = 3
    q, k_blocks, v_blocks = make_blocks(gen, 2, 8, 2, 130, 64, step, dtype=dtype, seq_outer=True)
    assert not q.is_contiguous()
    lengths = unequal_lengths(gen, 130)
    got, want = run_both(q, k_blocks, v_blocks, lengths, gen)
    assert got[0].stride() == q.stride(), "out: expected q's [B, T, H, D] layout"
    assert_matches(got, want, dtype, step + 1)


def test_loss_through_lse_only(gen):
    step = 2
    q, k_blocks, v_blocks = make_blocks(gen, 2, 4, 1, 17, 64, step)
    lengths = unequal_lengths(gen, 17)
    leaves = [t.detach().requires_grad_() for t in (q, *k_blocks, *v_blocks)]
    ref_leaves = [t.detach().double().requires_grad_() for t in (q, *k_blocks, *v_blocks)]
    _, lse = flashflex.eagle3.ttt_attention(leaves[0], leaves[1:4], leaves[4:], lengths, return_lse=True)
    _, ref_lse = sdpa_reference(ref_leaves[0], ref_leaves[1:4], ref_leaves[4:], lengths)
    valid = torch.isfinite(ref_lse)
    torch.where(valid, lse, 0.0).sum().backward()
    torch.where(valid, ref_lse, 0.0).sum().backward()
    for name, leaf, ref_leaf in zip(grad_names(step + 1), leaves, ref_leaves):
        if name.startswith("dv"):  # lse does not depend on v: no reference gradient, zeros here
            assert ref_leaf.grad is None and torch.all(leaf.grad == 0), name
            continue
        assert_close(leaf.grad, ref_leaf.grad, TOL[torch.float32], name)


@pytest.mark.parametrize("scale", [0.05, 0.3])
def test_explicit_scale(scale, gen):
    q, k_blocks, v_blocks = make_blocks(gen, 2, 4, 1, 17, 64, 2)
    lengths = unequal_lengths(gen, 17)
    got, want = run_both(q, k_blocks, v_blocks, lengths, gen, scale=scale)
    assert_matches(got, want, torch.float32, 3)


def test_seq_lengths_as_int32_int64_or_list_agree(gen):
    q, k_blocks, v_blocks = make_blocks(gen, 2, 4, 2, 130, 64, 3)
    results = [flashflex.eagle3.ttt_attention(q, k_blocks, v_blocks, seq_lengths, return_lse=True)
               for seq_lengths in (torch.tensor([130, 40], dtype=torch.int32),
                                   torch.tensor([130, 40], dtype=torch.int64), [130, 40], (130, 40))]
    for out, lse in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(lse, results[0][1])
    assert not torch.equal(results[0][0], flashflex.eagle3.ttt_attention(q, k_blocks, v_blocks))


def test_unrolled_steps_accumulate_into_shared_blocks(gen):
    # The trainers' unroll: K_0 / V_0 (and K_1 / V_1) feed several steps; autograd sums their gradients.
    q, k_blocks, v_blocks = make_blocks(gen, 1, 4, 1, 17, 64, 2)
    leaves = [t.detach().requires_grad_() for t in (q, *k_blocks, *v_blocks)]
    ref_leaves = [t.detach().double().requires_grad_() for t in (q, *k_blocks, *v_blocks)]
    losses = []
    for fn, (lq, k0, k1, k2, v0, v1, v2) in ((flashflex.eagle3.ttt_attention, leaves), (sdpa_reference, ref_leaves)):
        total = 0
        for step in range(3):
            out = fn(lq, [k0, k1, k2][:step + 1], [v0, v1, v2][:step + 1])
            out = out[0] if isinstance(out, tuple) else out
            total = total + (out.double() * (step + 1)).sum()
        losses.append(total)
    for loss in losses:
        loss.backward()
    for name, leaf, ref_leaf in zip(grad_names(3), leaves, ref_leaves):
        assert_close(leaf.grad, ref_leaf.grad, TOL[torch.float32], name)


def test_blocks_without_grad(gen):
    q, k_blocks, v_blocks = make_blocks(gen, 1, 4, 1, 17, 64, 1)
    q.requires_grad_()
    k_blocks[1].requires_grad_()
    flashflex.eagle3.ttt_attention(q, k_blocks, v_blocks).sum().backward()
    assert q.grad is not None and k_blocks[1].grad is not None
    assert k_blocks[0].grad is None and v_blocks[0].grad is None


# ---- torch.compile ------------------------------------------------------------------------

@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("backend", ["aot_eager", "eager"])
def test_compiled_fullgraph_forward_and_backward(backend, fresh_dynamo, gen):
    step, seq_len = 3, 130
    q, k_blocks, v_blocks = make_blocks(gen, 2, 5, 1, seq_len, 64, step)
    lengths = unequal_lengths(gen, seq_len)
    leaves = [t.detach().requires_grad_() for t in (q, *k_blocks, *v_blocks)]
    dout = randn(gen, *q.shape)

    def ttt_step(q, k0, k1, k2, k3, v0, v1, v2, v3, lengths):
        out, lse = flashflex.eagle3.ttt_attention(q, [k0, k1, k2, k3], [v0, v1, v2, v3], lengths, return_lse=True)
        return (out * dout).sum() + torch.where(torch.isfinite(lse), lse, 0.0).sum(), out, lse

    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(ttt_step, fullgraph=True, backend=counter)
    loss, out, lse = compiled(*leaves, lengths)
    loss.backward()
    assert counter.frame_count == 1, "the function was not compiled as one graph"

    ref_leaves = [t.detach().double().requires_grad_() for t in (q, *k_blocks, *v_blocks)]
    ref_out, ref_lse = sdpa_reference(ref_leaves[0], ref_leaves[1:5], ref_leaves[5:], lengths)
    ((ref_out * dout.double()).sum() + torch.where(torch.isfinite(ref_lse), ref_lse, 0.0).sum()).backward()
    assert_close(out, ref_out, TOL[torch.float32], "out")
    assert_lse_close(lse, ref_lse)
    for name, leaf, ref_leaf in zip(grad_names(step + 1), leaves, ref_leaves):
        assert leaf.grad is not None, f"{name}: no gradient"
        assert_close(leaf.grad, ref_leaf.grad, TOL[torch.float32], name)


# ---- the unroll-size case ------------------------------------------------------------------

def test_unroll_size_forward_backward_time(gen):
    # B=1, Hq=4, Hkv=1, T=1024, D=64, step 6 on the CPU reference: printed (pytest -s), and a
    # generous bound so a quadratic-in-blocks regression shows up.
    q, k_blocks, v_blocks = make_blocks(gen, 1, 4, 1, 1024, 64, 6)
    leaves = [t.detach().requires_grad_() for t in (q, *k_blocks, *v_blocks)]
    start = time.perf_counter()
    out = flashflex.eagle3.ttt_attention(leaves[0], leaves[1:8], leaves[8:])
    forward_done = time.perf_counter()
    out.sum().backward()
    backward_done = time.perf_counter()
    print(f"\n[eagle3 timing] B=1 Hq=4 Hkv=1 T=1024 D=64 step=6 float32 via ttt_attention: forward "
          f"{forward_done - start:.3f} s, backward {backward_done - forward_done:.3f} s")
    assert all(torch.isfinite(t.grad).all() for t in leaves)
    assert backward_done - start < 10.0
