"""The CUDA backward (src/cuda/backward.cu, src/cuda/sm80/*bwd*) against float64 autograd through
the dense formulation of dense_reference.py, on the very values the kernel received (inputs rounded
to bf16 / fp16 first). Skipped without a GPU.

Most tests call the backward alone, through the binding, with the forward's outputs taken from
the float64 reference (out rounded to the input dtype, lse to float32, as a forward returns them):
a forward bug cannot hide or fake a backward one. The gradient outputs are prefilled with NaN, so
an element the kernels never write fails the test. test_end_to_end_* run flashflex.flex_attention's
forward and backward on the GPU.

Tolerance: the error of a low-precision dense attention in the same dtype (matmuls in the dtype,
scores and softmax in float32, P rounded to the dtype: what torch's math SDPA does for half
inputs) against the same float64 reference, times 2, plus one unit in the last place of the dtype
for the rounding of the result itself. Errors are max|got - ref| / max|ref| per tensor."""

from __future__ import annotations

import math

import pytest
import torch

import flashflex
from flashflex import _C
from flashflex._ops import _mask_args, _mod_args
from flashflex._tensor_ref import stream_of, tensor_ref
from dense_reference import alibi_mod, bias_mod, dense_attention, dense_mask, index_grid, softcap_mod
from helpers import randn
from mask_cases import BUILTIN_CASES, RANDOM_CASES, build_case, causal_mod, sliding_window_mod

pytestmark = pytest.mark.cuda

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# One unit in the last place at 1.0 (2^-7 for bfloat16's 8-bit significand, 2^-10 for float16's 11):
# the rounding of the result to the dtype, which no kernel can avoid.
ULP = {torch.bfloat16: 2.0 ** -7, torch.float16: 2.0 ** -10}


# ---- problem setup -------------------------------------------------------------------------------

class Problem:
    """Inputs of one backward call (CUDA tensors in `dtype`), its mask and score mod in both worlds
    (flashflex objects for the kernel, dense tensors / torch score_mods for the references)."""

    def __init__(self, gen, batch, hq, hkv, q_len, kv_len, head_dim, dtype, layout="bhsd", mask_mod=None,
                 block_mask=None, mod=None, ref_mod=None, lowp_mod=None, with_dlse=False, scale=None):
        def make(*shape):
            t = randn(gen, *shape, dtype=dtype)
            if layout == "bshd":  # [B, T, H, D] memory seen as [B, H, T, D]
                t = t.transpose(1, 2).contiguous().transpose(1, 2)
            return t.cuda()
        self.q = make(batch, hq, q_len, head_dim)
        self.k = make(batch, hkv, kv_len, head_dim)
        self.v = make(batch, hkv, kv_len, head_dim)
        self.dout = make(batch, hq, q_len, head_dim)
        self.dlse = randn(gen, batch, hq, q_len).cuda() if with_dlse else None
        self.dtype = dtype
        self.scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
        # Evaluated on the CPU: mask_mods may index captured CPU tables.
        self.mask = dense_mask(mask_mod, batch, hq, q_len, kv_len).cuda() if mask_mod else None
        self.block_mask = block_mask
        self.mod, self.ref_mod, self.lowp_mod = mod, ref_mod, lowp_mod


def reference(pb: Problem, dtype=torch.float64):
    """(out, lse, grads) of the dense formulation in float64 (dtype=float64), or of the low-precision
    baseline (dtype = the inputs' dtype). grads: dq, dk, dv and, for a bias mod, dbias."""
    leaves = [t.detach().to(torch.float64 if dtype == torch.float64 else t.dtype).requires_grad_()
              for t in (pb.q, pb.k, pb.v)]
    bias = None  # the bias as a leaf, float64 for the reference, float32 for the baseline
    if pb.mod is not None and pb.mod.kind == 3:
        bias_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        bias = pb.mod.tensor.detach().to(bias_dtype).requires_grad_()
    if dtype == torch.float64:
        mod = bias_mod(bias) if bias is not None else pb.ref_mod
        out, lse = dense_attention(*leaves, pb.mask, mod, pb.scale)
    else:
        mod = bias_mod(bias) if bias is not None else pb.lowp_mod
        out, lse = lowp_attention(*leaves, pb.mask, mod, pb.scale)
    loss = (out.double() * pb.dout.double()).sum()
    if pb.dlse is not None:
        finite = torch.isfinite(lse)
        loss = loss + torch.where(finite, lse.double(), torch.zeros_like(lse, dtype=torch.float64)).mul(
            pb.dlse.double()).sum()
    loss.backward()
    grads = [t.grad for t in leaves] + ([bias.grad] if bias is not None else [])
    return out.detach(), lse.detach(), grads


def lowp_attention(q, k, v, mask, score_mod, scale):
    """dense_attention with the products in the inputs' dtype and the softmax in float32."""
    batch, hq, q_len, _ = q.shape
    kv_len = k.shape[2]
    group = hq // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = (q @ k.transpose(-1, -2)).float() * scale
    if score_mod is not None:
        scores = score_mod(scores, *index_grid(batch, hq, q_len, kv_len, q.device)).expand(batch, hq, q_len, kv_len)
    full = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=q.device)
    mask = (full if mask is None else mask).expand(batch, hq, q_len, kv_len)
    sees_any = mask.any(dim=-1, keepdim=True)
    scores = torch.where(sees_any, scores.masked_fill(~mask, float("-inf")), torch.zeros_like(scores))
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    out = torch.exp(scores - lse).to(q.dtype) @ v
    out = torch.where(sees_any, out, torch.zeros_like(out))
    lse = torch.where(sees_any, lse, torch.full_like(lse, float("-inf")))
    return out, lse.squeeze(-1)


def flashflex_backward(pb: Problem, out, lse, need_dbias=False, deterministic=False, backend="AUTO"):
    """The CUDA backward through the binding, with NaN-prefilled outputs: (dq, dk, dv, dbias).
    backend: "AUTO" (the sm90 kernels on compute capability 9.x where they take the call), "SM80"
    or "SM90" (that family or an error)."""
    dq, dk, dv = (torch.full_like(t, float("nan")) for t in (pb.q, pb.k, pb.v))
    mask_tensors = [] if pb.block_mask is None else pb.block_mask._tensors()
    kind, cap, tensor = (pb.mod.kind, pb.mod.cap, pb.mod.tensor) if pb.mod is not None else (0, 0.0, None)
    dbias = torch.full_like(tensor, float("nan")) if need_dbias else None
    args = (tensor_ref(pb.q), tensor_ref(pb.k), tensor_ref(pb.v), tensor_ref(out), tensor_ref(pb.dout),
            tensor_ref(lse), tensor_ref(pb.dlse), tensor_ref(dq), tensor_ref(dk), tensor_ref(dv),
            tensor_ref(dbias), pb.scale, _mod_args(kind, cap, tensor), _mask_args(mask_tensors, pb.q, pb.k),
            deterministic, _C.BACKENDS[backend])
    nbytes = _C.backward_workspace_size(*args)
    # Poisoned workspace: the kernels must initialise what they read.
    workspace = torch.full((max(nbytes, 1),), 0xFF, dtype=torch.uint8, device=pb.q.device)
    _C.backward(*args, workspace.data_ptr(), nbytes, stream_of(pb.q))
    torch.cuda.synchronize()
    return dq, dk, dv, dbias


def rel_err(got, ref, floor=1e-30):
    """max|got - ref| / max(max|ref|, floor); floor keeps a gradient that is exactly 0 in float64
    (one visible key: dS = 0) from turning rounding noise into an infinite relative error."""
    got, ref = got.detach().double(), ref.detach().double()
    assert not torch.isnan(got).any(), f"{int(torch.isnan(got).sum())} NaN (unwritten?) elements"
    return ((got - ref).abs().max() / ref.abs().max().clamp_min(floor)).item()


def check(pb: Problem, need_dbias=False, deterministic=False, backend="AUTO"):
    """Runs the backward on `pb` and compares it with the float64 reference; returns the grads."""
    out64, lse64, ref = reference(pb)
    _, _, base = reference(pb, pb.dtype)
    out = out64.to(pb.dtype)
    lse = lse64.float()
    got = flashflex_backward(pb, out, lse, need_dbias, deterministic, backend)
    names = ["dq", "dk", "dv"] + (["dbias"] if need_dbias else [])
    # Gradients far smaller than the others are judged against 1% of the largest one.
    floor = 0.01 * max(r.abs().max().item() for r in ref[:3])
    for name, g, r, b in zip(names, got, ref, base):
        assert g.shape == r.shape and g.dtype == (pb.q.dtype if name != "dbias" else pb.mod.tensor.dtype)
        err, base_err = rel_err(g, r, floor), rel_err(b, r, floor)
        tol = 2 * base_err + ULP[pb.dtype]
        assert err <= tol, f"{name}: error {err:.3e} > {tol:.3e} (2 x low-precision dense {base_err:.3e} + 1 ulp)"
    return got, ref


def builtin_block_mask(mask, batch, heads, q_len, kv_len):
    return flashflex.create_block_mask(mask, batch, heads, q_len, kv_len, device="cuda")


def user_block_mask(mask_mod, batch, heads, q_len, kv_len):
    """A random user mask_mod through torch's create_block_mask (on the CPU, where its captured
    tables live), converted to a flashflex.BlockMask on the GPU."""
    tm = torch.nn.attention.flex_attention.create_block_mask(mask_mod, batch, heads, q_len, kv_len, device="cpu",
                                                             BLOCK_SIZE=128)
    return flashflex.BlockMask.from_torch(tm).to("cuda")


# ---- shapes, GQA, layouts ------------------------------------------------------------------------

LENGTHS = [(1, 1), (17, 17), (113, 239), (239, 113), (1000, 1030), (1030, 1000)]


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("q_len,kv_len", LENGTHS)
def test_lengths_and_head_dims(q_len, kv_len, head_dim, dtype, gen):
    check(Problem(gen, 2, 4, 2, q_len, kv_len, head_dim, dtype))


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("group", [1, 4, 5, 7])
def test_gqa_and_layouts_causal(group, layout, gen):
    q_len, kv_len = 239, 1000
    off = kv_len - q_len
    bm = builtin_block_mask(flashflex.masks.causal(off), None, None, q_len, kv_len)
    check(Problem(gen, 2, 2 * group, 2, q_len, kv_len, 128, torch.bfloat16, layout, mask_mod=causal_mod(off),
                  block_mask=bm))


def test_gqa_whole_group_per_cta(gen):
    # Enough kv tiles to fill an H100 (66 x 2 = 132 CTAs) and a small q working set: the launcher keeps
    # the whole group of 2 in one CTA (no fp32 partials); the other GQA tests split the group.
    q_len, kv_len = 300, 8448
    bm = builtin_block_mask(flashflex.masks.sliding_window(4000, 4000, 4000), None, None, q_len, kv_len)
    check(Problem(gen, 1, 4, 2, q_len, kv_len, 128, torch.bfloat16, mask_mod=sliding_window_mod(4000, 4000, 4000),
                  block_mask=bm))


@pytest.mark.parametrize("head_dim", [64, 256])
def test_head_dims_masked(head_dim, gen):
    case = build_case("random_tiled_table", 2, gen, heads=4)
    check(Problem(gen, 2, 4, 2, case.q_len, case.kv_len, head_dim, torch.float16, mask_mod=case.torch_mask_mod,
                  block_mask=user_block_mask(case.torch_mask_mod, 2, 4, case.q_len, case.kv_len)))


# ---- masks ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("case_name", sorted(BUILTIN_CASES))
def test_builtin_masks(case_name, gen):
    batch, hq, hkv = 2, 4, 2
    case = build_case(case_name, batch, gen)
    bm = builtin_block_mask(case.builtin(flashflex.masks), batch, None, case.q_len, case.kv_len)
    check(Problem(gen, batch, hq, hkv, case.q_len, case.kv_len, 128, torch.bfloat16, mask_mod=case.torch_mask_mod,
                  block_mask=bm))


@pytest.mark.parametrize("case_name", sorted(RANDOM_CASES))
def test_user_mask_mods(case_name, gen):
    batch, hq, hkv = 2, 4, 1
    case = build_case(case_name, batch, gen, heads=hq)
    check(Problem(gen, batch, hq, hkv, case.q_len, case.kv_len, 128, torch.bfloat16, mask_mod=case.torch_mask_mod,
                  block_mask=user_block_mask(case.torch_mask_mod, batch, hq, case.q_len, case.kv_len)))


def test_fully_masked_rows_and_unseen_keys_get_zero(gen):
    # Rows q < 20 see nothing (causal offset -20); keys past the last row's diagonal nobody sees.
    q_len = kv_len = 300
    bm = builtin_block_mask(flashflex.masks.causal(-20), None, None, q_len, kv_len)
    pb = Problem(gen, 1, 4, 2, q_len, kv_len, 64, torch.bfloat16, mask_mod=causal_mod(-20), block_mask=bm,
                 with_dlse=True)
    (dq, dk, dv, _), _ = check(pb)
    assert torch.equal(dq[:, :, :20], torch.zeros_like(dq[:, :, :20]))
    assert torch.equal(dk[:, :, kv_len - 20:], torch.zeros_like(dk[:, :, kv_len - 20:]))
    assert torch.equal(dv[:, :, kv_len - 20:], torch.zeros_like(dv[:, :, kv_len - 20:]))


# ---- score mods, dbias, lse gradient ------------------------------------------------------------

def _softcap(gen, hq, q_len, kv_len, batch):
    return flashflex.score_mods.softcap(5.0), softcap_mod(5.0), softcap_mod(5.0)


def _alibi(gen, hq, q_len, kv_len, batch):
    slopes = torch.rand(hq, generator=gen).cuda() * 0.3
    return flashflex.score_mods.alibi(slopes), alibi_mod(slopes.double()), alibi_mod(slopes)


MODS = {"softcap": _softcap, "alibi": _alibi}


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("mod_name", sorted(MODS))
def test_score_mods(mod_name, dtype, gen):
    batch, hq, q_len, kv_len = 2, 4, 257, 300
    mod, ref_mod, lowp = MODS[mod_name](gen, hq, q_len, kv_len, batch)
    off = kv_len - q_len
    bm = builtin_block_mask(flashflex.masks.causal(off), None, None, q_len, kv_len)
    check(Problem(gen, batch, hq, 2, q_len, kv_len, 128, dtype, mask_mod=causal_mod(off), block_mask=bm,
                  mod=mod, ref_mod=ref_mod, lowp_mod=lowp))


@pytest.mark.parametrize("bias_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("bias_batch,bias_heads", [(2, 4), (1, 4), (2, 1), (1, 1)])
def test_bias_and_dbias(bias_batch, bias_heads, bias_dtype, gen):
    batch, hq, q_len, kv_len = 2, 4, 200, 257
    bias = randn(gen, bias_batch, bias_heads, q_len, kv_len, dtype=bias_dtype).cuda()
    bm = builtin_block_mask(flashflex.masks.sliding_window(90, 30), None, None, q_len, kv_len)
    check(Problem(gen, batch, hq, 2, q_len, kv_len, 64, torch.bfloat16, mask_mod=sliding_window_mod(90, 30),
                  block_mask=bm, mod=flashflex.score_mods.bias(bias)), need_dbias=True)


@pytest.mark.parametrize("head_dim", [64, 128])
def test_gradient_through_lse(head_dim, gen):
    batch, hq = 2, 4
    case = build_case("padding", batch, gen)  # rows past q_lengths see nothing: their dlse must not leak
    bm = builtin_block_mask(case.builtin(flashflex.masks), batch, None, case.q_len, case.kv_len)
    check(Problem(gen, batch, hq, 2, case.q_len, case.kv_len, head_dim, torch.bfloat16,
                  mask_mod=case.torch_mask_mod, block_mask=bm, with_dlse=True))


# ---- both kernel families -------------------------------------------------------------------------
# On compute capability 9.x the calls above run the sm90 kernels (head dims 64 and 128); "SM80"
# forces the portable kernels, "SM90" the Hopper ones (an error where they cannot take the call,
# never a silent fallback).

def _is_hopper():
    return torch.cuda.get_device_capability()[0] == 9


@pytest.mark.parametrize("backend", ["SM80", "SM90"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
def test_both_paths_causal_gqa_ragged(backend, head_dim, layout, gen):
    if backend == "SM90" and not _is_hopper():
        pytest.skip("the sm90 kernels need compute capability 9.x")
    q_len, kv_len = 333, 461
    off = kv_len - q_len
    bm = builtin_block_mask(flashflex.masks.causal(off), None, None, q_len, kv_len)
    check(Problem(gen, 2, 8, 2, q_len, kv_len, head_dim, torch.bfloat16, layout, mask_mod=causal_mod(off),
                  block_mask=bm, with_dlse=True), backend=backend)


@pytest.mark.parametrize("backend", ["SM80", "SM90"])
@pytest.mark.parametrize("mod_name", sorted(MODS))
def test_both_paths_score_mods_random_mask(backend, mod_name, gen):
    if backend == "SM90" and not _is_hopper():
        pytest.skip("the sm90 kernels need compute capability 9.x")
    batch, hq = 2, 4
    case = build_case("random_tiled_table", batch, gen, heads=hq)
    mod, ref_mod, lowp = MODS[mod_name](gen, hq, case.q_len, case.kv_len, batch)
    check(Problem(gen, batch, hq, 2, case.q_len, case.kv_len, 128, torch.float16, mask_mod=case.torch_mask_mod,
                  block_mask=user_block_mask(case.torch_mask_mod, batch, hq, case.q_len, case.kv_len), mod=mod,
                  ref_mod=ref_mod, lowp_mod=lowp), backend=backend)


@pytest.mark.parametrize("backend", ["SM80", "SM90"])
def test_both_paths_bias_and_dbias(backend, gen):
    if backend == "SM90" and not _is_hopper():
        pytest.skip("the sm90 kernels need compute capability 9.x")
    batch, hq, q_len, kv_len = 2, 4, 200, 257
    bias = randn(gen, batch, hq, q_len, kv_len, dtype=torch.float32).cuda()
    check(Problem(gen, batch, hq, 2, q_len, kv_len, 128, torch.bfloat16, mod=flashflex.score_mods.bias(bias)),
          need_dbias=True, backend=backend)


def test_sm90_rejects_what_it_cannot_take(gen):
    if not _is_hopper():
        pytest.skip("the sm90 kernels need compute capability 9.x")
    pb = Problem(gen, 1, 2, 2, 65, 65, 256, torch.bfloat16)
    out64, lse64, _ = reference(pb)
    with pytest.raises(NotImplementedError, match="sm90"):
        flashflex_backward(pb, out64.to(pb.dtype), lse64.float(), backend="SM90")


# ---- deterministic mode --------------------------------------------------------------------------

@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("masked", [False, True], ids=["dense", "masked"])
def test_deterministic_is_bitwise_reproducible(masked, head_dim, gen):
    batch, hq, hkv = 2, 8, 2
    if masked:
        case = build_case("random_tiled_table", batch, gen, heads=1)
        q_len, kv_len, mask_mod = case.q_len, case.kv_len, case.torch_mask_mod
        bm = user_block_mask(mask_mod, batch, None, q_len, kv_len)
    else:
        q_len, kv_len, mask_mod, bm = 700, 1030, None, None
    pb = Problem(gen, batch, hq, hkv, q_len, kv_len, head_dim, torch.bfloat16, mask_mod=mask_mod, block_mask=bm)
    first, _ = check(pb, deterministic=True)
    out64, lse64, _ = reference(pb)
    for _ in range(3):
        again = flashflex_backward(pb, out64.to(pb.dtype), lse64.float(), deterministic=True)
        for a, b in zip(first[:3], again[:3]):
            assert torch.equal(a, b), "deterministic backward differs between runs"


def test_deterministic_with_broadcast_dbias_is_rejected(gen):
    bias = randn(gen, 1, 1, 17, 17).cuda()
    pb = Problem(gen, 1, 2, 2, 17, 17, 64, torch.bfloat16, mod=flashflex.score_mods.bias(bias))
    out64, lse64, _ = reference(pb)
    with pytest.raises(NotImplementedError, match="deterministic"):
        flashflex_backward(pb, out64.to(pb.dtype), lse64.float(), need_dbias=True, deterministic=True)


# ---- errors --------------------------------------------------------------------------------------

def test_float32_is_left_to_the_cpu_path(gen):
    pb = Problem(gen, 1, 2, 2, 17, 17, 64, torch.bfloat16)
    pb.q, pb.k, pb.v, pb.dout = (t.float() for t in (pb.q, pb.k, pb.v, pb.dout))
    with pytest.raises(NotImplementedError, match="CUDA backward supports bfloat16 and float16"):
        flashflex_backward(pb, pb.q.clone(), torch.zeros(1, 2, 17, device="cuda"))


# ---- end to end through flashflex.flex_attention ------------------------------------------------

@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_end_to_end_flex_attention(head_dim, gen):
    batch, hq, hkv, q_len, kv_len = 2, 4, 2, 300, 257
    pb = Problem(gen, batch, hq, hkv, q_len, kv_len, head_dim, torch.bfloat16, mask_mod=causal_mod(0),
                 block_mask=builtin_block_mask(flashflex.masks.causal(), None, None, q_len, kv_len),
                 mod=flashflex.score_mods.softcap(20.0), ref_mod=softcap_mod(20.0), lowp_mod=softcap_mod(20.0),
                 with_dlse=True)
    q, k, v = (t.detach().clone().requires_grad_() for t in (pb.q, pb.k, pb.v))
    out, lse = flashflex.flex_attention(q, k, v, score_mod=pb.mod, block_mask=pb.block_mask, enable_gqa=True,
                                        return_lse=True)
    finite = torch.isfinite(lse)
    loss = (out.float() * pb.dout.float()).sum() + torch.where(finite, lse, torch.zeros_like(lse)).mul(pb.dlse).sum()
    loss.backward()
    _, _, ref = reference(pb)
    _, _, base = reference(pb, pb.dtype)
    for name, g, r, b in zip(("dq", "dk", "dv"), (q.grad, k.grad, v.grad), ref, base):
        err, base_err = rel_err(g, r), rel_err(b, r)
        # The forward's own rounding of out (the D term) adds about one more ulp.
        tol = 2 * base_err + 2 * ULP[pb.dtype]
        assert err <= tol, f"{name}: error {err:.3e} > {tol:.3e}"


# ---- compute-sanitizer driver --------------------------------------------------------------------

def _sanitize_cases():
    """Small cases for `compute-sanitizer --tool memcheck|racecheck python test_cuda_backward.py`:
    every head dim, a ragged partial-tile mask with GQA, a bias with dbias, deterministic mode."""
    gen = torch.Generator().manual_seed(0)
    for head_dim in (64, 128, 256):
        case = build_case("random_tiled_table", 1, gen, heads=1)
        pb = Problem(gen, 1, 4, 2, case.q_len, case.kv_len, head_dim, torch.bfloat16, mask_mod=case.torch_mask_mod,
                     block_mask=user_block_mask(case.torch_mask_mod, 1, None, case.q_len, case.kv_len), with_dlse=True)
        check(pb)
        check(pb, deterministic=True)
    bias = randn(gen, 1, 1, 70, 150).cuda()
    check(Problem(gen, 1, 2, 1, 70, 150, 128, torch.float16, mod=flashflex.score_mods.bias(bias)), need_dbias=True)
    print("sanitizer cases done")


if __name__ == "__main__":
    _sanitize_cases()
