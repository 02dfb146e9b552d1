"""The CUDA forward (src/cuda/forward.cu, src/cuda/sm80/*fwd*) against the float64 dense reference
(dense_reference.py) on the very bf16 / fp16 values the kernel received. Skipped without a GPU.

Tolerance of `out` (see _out_tolerance): at most 2x the error of torch's own SDPA (math backend,
same dtype, same inputs and mask) against the same float64 reference, plus one ulp of the output
dtype at the reference's largest magnitude. The ulp is rounding noise a flash kernel adds and SDPA
math does not: it rounds P to the input dtype before P @ V (relative 2^-9 for bf16 per element,
summed with random signs over the row) and rounds the result once. `lse` is float32 computed from
the exact products of the rounded inputs, so it is held to helpers.LSE_TOL (1e-5 relative): this
is the sharp check that a single wrongly masked key (which moves lse by about 1 / visible keys)
cannot pass. Rows that see no key must give out exactly 0 and lse exactly -inf.

Outputs are poisoned: flex_attention allocates them with torch.empty (whatever the caching
allocator holds), so test_poisoned_outputs_are_overwritten also calls the binding directly on
NaN-filled out and lse.
"""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import flashflex
from dense_reference import alibi_mod, bias_mod, dense_attention, dense_mask, softcap_mod
from helpers import assert_lse_close, make_qkv, randn
from mask_cases import BUILTIN_CASES, RANDOM_CASES, build_case, causal_mod, random_tiled_table, table_mod

pytestmark = pytest.mark.cuda

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# One ulp at magnitude 1 (2^-(mantissa bits)): the rounding-noise allowance of _out_tolerance.
ULP = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}


# ---- helpers -----------------------------------------------------------------------------------

def _to_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """A CUDA copy of t [B, H, T, D]; "bthd" stores it as [B, T, H, D] and returns the [B, H, T, D] view."""
    if layout == "bthd":
        return t.transpose(1, 2).contiguous().cuda().transpose(1, 2)
    return t.contiguous().cuda()


def _inputs(gen, batch, hq, hkv, q_len, kv_len, head_dim, dtype, layout="bhtd"):
    q, k, v = make_qkv(gen, batch, hq, hkv, q_len, kv_len, head_dim, dtype=dtype)
    return tuple(_to_layout(t, layout) for t in (q, k, v))


def _reference(q, k, v, mask, ref_mod, scale):
    q64, k64, v64 = (t.detach().cpu().double() for t in (q, k, v))
    return dense_attention(q64, k64, v64, mask, ref_mod, scale)


def _sdpa_math_error(q, k, v, mask, scale, ref_out, seen) -> float:
    """Max |SDPA math (same dtype) - reference| over rows that see a key (SDPA gives NaN elsewhere)."""
    attn_mask = None if mask is None else mask.to(q.device)
    with sdpa_kernel(SDPBackend.MATH):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale,
                                             enable_gqa=q.shape[1] != k.shape[1])
    err = (out.double().cpu() - ref_out).abs()[seen]
    return err.max().item() if err.numel() else 0.0


def _out_tolerance(q, k, v, mask, scale, ref_out, seen) -> float:
    magnitude = ref_out.abs().max().item() if ref_out.numel() else 0.0
    return 2.0 * _sdpa_math_error(q, k, v, mask, scale, ref_out, seen) + ULP[q.dtype] * magnitude


def _check(out, lse, q, k, v, mask=None, ref_mod=None, scale=None, sdpa_mask=None):
    """Asserts out / lse of flashflex against the float64 reference (see the module docstring).
    mask: bool [B or 1, H or 1, Lq, Lkv] or None; sdpa_mask: the mask SDPA's error is measured with
    (default: mask; score mods SDPA cannot express are left out of its measurement)."""
    ref_out, ref_lse = _reference(q, k, v, mask, ref_mod, scale)
    assert out.shape == q.shape and out.dtype == q.dtype and out.is_cuda
    assert lse.shape == q.shape[:3] and lse.dtype == torch.float32
    got = out.detach().double().cpu()
    assert not torch.isnan(got).any(), f"out: {int(torch.isnan(got).sum())} NaN values"
    empty = torch.isneginf(ref_lse)  # rows that see no key
    seen = ~empty
    assert torch.equal(got[empty], torch.zeros_like(got[empty])), "out: rows that see nothing must be exactly 0"
    if seen.any():
        tol = _out_tolerance(q, k, v, mask if sdpa_mask is None else sdpa_mask, scale, ref_out, seen)
        err = (got - ref_out).abs().max().item()
        assert err <= tol, f"out: max error {err:.3e} exceeds {tol:.3e} (2x SDPA math error + 1 ulp)"
    assert_lse_close(lse.cpu(), ref_lse)


def _run(q, k, v, block_mask=None, score_mod=None, scale=None, backend="AUTO"):
    return flashflex.flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale,
                                    enable_gqa=q.shape[1] != k.shape[1], return_lse=True,
                                    kernel_options={"BACKEND": backend})


def _causal(q_len, kv_len, offset):
    """A causal(offset) block mask on the GPU, shared by every sample and head, and its dense form."""
    mask = flashflex.create_block_mask(flashflex.masks.causal(offset), None, None, q_len, kv_len, device="cuda")
    return mask, dense_mask(causal_mod(offset), 1, 1, q_len, kv_len)


# ---- shapes: lengths, GQA, head dims, dtypes, layouts ------------------------------------------

SHAPES = [  # (batch, q heads, kv heads, q_len, kv_len)
    (1, 1, 1, 1, 1),
    (2, 4, 4, 17, 17),
    (1, 4, 1, 113, 239),
    (1, 5, 1, 239, 113),
    (2, 7, 1, 1000, 1030),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("masked", [False, True], ids=["dense", "causal"])
def test_shapes(shape, head_dim, dtype, masked, gen):
    batch, hq, hkv, q_len, kv_len = shape
    if head_dim == 256 and q_len >= 1000:
        batch, hq = 1, 5  # keep the float64 reference cheap
    q, k, v = _inputs(gen, batch, hq, hkv, q_len, kv_len, head_dim, dtype)
    block_mask, mask = _causal(q_len, kv_len, kv_len - q_len) if masked else (None, None)
    out, lse = _run(q, k, v, block_mask)
    _check(out, lse, q, k, v, mask)


@pytest.mark.parametrize("layout", ["bhtd", "bthd"])
@pytest.mark.parametrize("group", [1, 4, 5, 7])
def test_layouts_and_gqa(layout, group, gen):
    hkv = 2 if group <= 4 else 1
    q, k, v = _inputs(gen, 2, hkv * group, hkv, 257, 300, 128, torch.bfloat16, layout)
    block_mask, mask = _causal(257, 300, 300 - 257)
    out, lse = _run(q, k, v, block_mask, scale=0.3)
    assert out.stride() == q.stride()  # out follows q's layout
    _check(out, lse, q, k, v, mask, scale=0.3)


def test_mixed_layouts(gen):
    q, _, _ = _inputs(gen, 1, 4, 2, 200, 333, 64, torch.float16, "bthd")
    _, k, v = _inputs(gen, 1, 4, 2, 200, 333, 64, torch.float16, "bhtd")
    out, lse = _run(q, k, v)
    _check(out, lse, q, k, v)


# ---- masks -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(BUILTIN_CASES))
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_builtin_masks(name, dtype, gen):
    batch, hq, hkv = 2, 4, 2
    case = build_case(name, batch, gen)
    block_mask = flashflex.create_block_mask(case.builtin(flashflex.masks), batch, None, case.q_len, case.kv_len,
                                             device="cuda")
    q, k, v = _inputs(gen, batch, hq, hkv, case.q_len, case.kv_len, 64, dtype)
    out, lse = _run(q, k, v, block_mask)
    _check(out, lse, q, k, v, dense_mask(case.torch_mask_mod, batch, hq, case.q_len, case.kv_len))


@pytest.mark.parametrize("name", sorted(RANDOM_CASES))
def test_user_mask_mods(name, gen):
    # Per-head masks (H = Hq) built by torch's create_block_mask on the CPU, moved to the GPU.
    batch, hq, hkv = 2, 3, 1
    case = build_case(name, batch, gen, heads=hq)
    block_mask = flashflex.create_block_mask(case.torch_mask_mod, batch, hq, case.q_len, case.kv_len).to("cuda")
    q, k, v = _inputs(gen, batch, hq, hkv, case.q_len, case.kv_len, 128, torch.bfloat16)
    out, lse = _run(q, k, v, block_mask)
    _check(out, lse, q, k, v, dense_mask(case.torch_mask_mod, batch, hq, case.q_len, case.kv_len))


def test_torch_block_mask_on_cuda(gen):
    # A torch BlockMask built on the GPU (its mask_mod captures a CUDA table) passed as is.
    from torch.nn.attention.flex_attention import create_block_mask as torch_create_block_mask
    batch, hq, q_len, kv_len = 2, 2, 389, 263
    table = random_tiled_table(gen, (batch, hq, q_len, kv_len))
    torch_mask = torch_create_block_mask(table_mod(table.cuda()), batch, hq, q_len, kv_len, device="cuda",
                                         BLOCK_SIZE=128)
    q, k, v = _inputs(gen, batch, hq, hq, q_len, kv_len, 64, torch.float16)
    out, lse = _run(q, k, v, torch_mask)
    _check(out, lse, q, k, v, table)


def test_fully_masked_rows_and_empty_q_tiles(gen):
    # causal(offset=-300): rows 0..299 see nothing, so q tiles 0 and 1 have no kv tile at all and
    # q tile 2 mixes empty and visible rows.
    q_len = kv_len = 517
    block_mask, mask = _causal(q_len, kv_len, -300)
    q, k, v = _inputs(gen, 1, 4, 2, q_len, kv_len, 128, torch.bfloat16)
    out, lse = _run(q, k, v, block_mask)
    assert torch.isneginf(lse[:, :, :300]).all() and (out[:, :, :300] == 0).all()
    _check(out, lse, q, k, v, mask)


# ---- score mods --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_softcap(dtype, head_dim, gen):
    q, k, v = _inputs(gen, 2, 4, 2, 239, 300, head_dim, dtype)
    block_mask, mask = _causal(239, 300, 300 - 239)
    out, lse = _run(q, k, v, block_mask, flashflex.score_mods.softcap(5.0), scale=0.5)
    _check(out, lse, q, k, v, mask, softcap_mod(5.0), scale=0.5)


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_alibi(dtype, head_dim, gen):
    hq = 6
    q, k, v = _inputs(gen, 1, hq, 2, 300, 239, head_dim, dtype)
    slopes = torch.tensor([2.0 ** (-(i + 1) / 2) for i in range(hq)], dtype=torch.float32)
    block_mask, mask = _causal(300, 239, 0)
    out, lse = _run(q, k, v, block_mask, flashflex.score_mods.alibi(slopes.cuda()))
    _check(out, lse, q, k, v, mask, alibi_mod(slopes.double()))


@pytest.mark.parametrize("bias_dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("bias_shape", ["full", "batch1", "heads1"])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_bias(bias_dtype, bias_shape, head_dim, gen):
    batch, hq, q_len, kv_len = 2, 4, 200, 333
    shape = {"full": (batch, hq), "batch1": (1, hq), "heads1": (batch, 1)}[bias_shape]
    bias = randn(gen, *shape, q_len, kv_len, dtype=bias_dtype)
    q, k, v = _inputs(gen, batch, hq, 2, q_len, kv_len, head_dim, torch.bfloat16)
    out, lse = _run(q, k, v, None, flashflex.score_mods.bias(bias.cuda()))
    _check(out, lse, q, k, v, None, bias_mod(bias.double()))


def test_bias_with_minus_inf_masks(gen):
    # A -inf bias counts as masked: row 5 sees nothing, others lose random keys.
    batch, hq, q_len, kv_len = 1, 2, 150, 140
    bias = randn(gen, batch, hq, q_len, kv_len)
    bias[torch.rand(bias.shape, generator=gen) < 0.3] = float("-inf")
    bias[:, :, 5] = float("-inf")
    q, k, v = _inputs(gen, batch, hq, hq, q_len, kv_len, 64, torch.float16)
    out, lse = _run(q, k, v, None, flashflex.score_mods.bias(bias.cuda()))
    visible = torch.isfinite(bias)
    assert torch.isneginf(lse[:, :, 5]).all() and (out[:, :, 5] == 0).all()
    _check(out, lse, q, k, v, visible, bias_mod(bias.masked_fill(~visible, 0).double()), sdpa_mask=visible)


def test_bias_with_strides_and_mask(gen):
    # A bias view with padded rows (row stride != KV_LEN) expanded over heads (stride 0), with a
    # document mask built on the GPU.
    batch, hq, q_len, kv_len = 2, 2, 130, 131
    storage = randn(gen, batch, 1, q_len + 3, kv_len + 5, dtype=torch.bfloat16).cuda()
    bias = storage[:, :, 3:, :kv_len].expand(batch, hq, q_len, kv_len)
    assert bias.stride(1) == 0 and bias.stride(2) == kv_len + 5
    q_ids = torch.randint(0, 3, (batch, q_len), generator=gen).sort(dim=1).values
    kv_ids = torch.randint(0, 3, (batch, kv_len), generator=gen).sort(dim=1).values
    block_mask = flashflex.create_block_mask(flashflex.masks.document(q_ids, kv_ids), batch, None, q_len, kv_len,
                                             device="cuda")
    mask = q_ids[:, None, :, None] == kv_ids[:, None, None, :]
    q, k, v = _inputs(gen, batch, hq, hq, q_len, kv_len, 128, torch.bfloat16)
    out, lse = _run(q, k, v, block_mask, flashflex.score_mods.bias(bias))
    _check(out, lse, q, k, v, mask, bias_mod(bias.double().cpu()))


# ---- both kernel paths -------------------------------------------------------------------------
# On compute capability 9.x the sm90 kernels serve the calls above (BACKEND "AUTO"); "SM80" forces
# the portable kernels, so one machine checks both (the whole suite runs on either with the
# FLASHFLEX_BACKEND environment variable, flashflex/_kernel_options.py). Elsewhere both are sm80.

@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("mod", ["none", "softcap"])
def test_forced_sm80_path(head_dim, mod, gen):
    q, k, v = _inputs(gen, 2, 4, 2, 239, 300, head_dim, torch.bfloat16)
    block_mask, mask = _causal(239, 300, 300 - 239)
    if mod == "softcap":
        out, lse = _run(q, k, v, block_mask, flashflex.score_mods.softcap(5.0), scale=0.5, backend="SM80")
        _check(out, lse, q, k, v, mask, softcap_mod(5.0), scale=0.5)
    else:
        out, lse = _run(q, k, v, block_mask, backend="SM80")
        _check(out, lse, q, k, v, mask)


def test_both_paths_agree(gen):
    # Both paths round P to bf16 before P @ V from the same fp32 statistics: they agree to a few
    # ulp of the output and exactly on empty rows.
    q, k, v = _inputs(gen, 1, 8, 2, 1030, 1030, 128, torch.bfloat16)
    block_mask, _ = _causal(1030, 1030, -200)
    default = _run(q, k, v, block_mask)
    forced = _run(q, k, v, block_mask, backend="SM80")
    assert torch.equal(torch.isneginf(default[1]), torch.isneginf(forced[1]))
    magnitude = forced[0].float().abs().max().item()
    assert (default[0].float() - forced[0].float()).abs().max().item() <= 4 * ULP[torch.bfloat16] * magnitude
    finite = torch.isfinite(forced[1])
    assert (default[1][finite] - forced[1][finite]).abs().max().item() <= 1e-4


def test_sm90_backend_where_it_runs(gen):
    # "SM90" runs on Hopper and is a clear error elsewhere, never a silent fallback.
    q, k, v = _inputs(gen, 1, 2, 2, 200, 200, 128, torch.bfloat16)
    block_mask, mask = _causal(200, 200, 0)
    if torch.cuda.get_device_capability()[0] == 9:
        out, lse = _run(q, k, v, block_mask, backend="SM90")
        _check(out, lse, q, k, v, mask)
    else:
        with pytest.raises(NotImplementedError, match="backend: the sm90 kernels need compute capability 9.x"):
            _run(q, k, v, block_mask, backend="SM90")


# ---- direct binding with poisoned outputs, errors ----------------------------------------------

@pytest.mark.parametrize("layout", ["bhtd", "bthd"])
def test_poisoned_outputs_are_overwritten(layout, gen):
    from flashflex import _C
    from flashflex._ops import _mask_args, _mod_args
    from flashflex._tensor_ref import stream_of, tensor_ref
    q_len = kv_len = 389
    q, k, v = _inputs(gen, 2, 4, 2, q_len, kv_len, 64, torch.bfloat16, layout)
    block_mask, mask = _causal(q_len, kv_len, -150)  # q tile 0 has no kv tile; rows 0..149 see nothing
    out = torch.full_like(q, float("nan"))
    lse = torch.full(q.shape[:3], float("nan"), dtype=torch.float32, device="cuda")
    _C.forward(tensor_ref(q), tensor_ref(k), tensor_ref(v), tensor_ref(out), tensor_ref(lse), None,
               _mod_args(0, 0.0, None), _mask_args(block_mask._tensors(), q, k), _C.BACKENDS["AUTO"], 0, 0,
               stream_of(q))
    torch.cuda.synchronize()
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    _check(out, lse, q, k, v, mask)


def test_float32_is_rejected_with_a_clear_error(gen):
    q, k, v = _inputs(gen, 1, 2, 2, 64, 64, 64, torch.float32)
    with pytest.raises(NotImplementedError, match="CUDA forward supports bfloat16 and float16, got float32"):
        _run(q, k, v)


def test_misaligned_rows_are_rejected(gen):
    base = randn(gen, 1, 2, 64, 65, dtype=torch.bfloat16).cuda()
    q = base[..., 1:]  # rows start 2 bytes past 16-byte boundaries
    k = v = randn(gen, 1, 2, 64, 64, dtype=torch.bfloat16).cuda()
    with pytest.raises(NotImplementedError, match="16-byte aligned rows"):
        _run(q, k, v)


def test_runs_on_the_current_stream(gen):
    q, k, v = _inputs(gen, 1, 4, 4, 640, 640, 128, torch.float16)
    block_mask, mask = _causal(640, 640, 0)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out, lse = _run(q, k, v, block_mask)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    _check(out, lse, q, k, v, mask)


def test_repeatable(gen):
    # Same inputs, same bits: a difference between runs would mean a race.
    q, k, v = _inputs(gen, 1, 8, 2, 1030, 1030, 128, torch.bfloat16)
    block_mask, _ = _causal(1030, 1030, 0)
    first = _run(q, k, v, block_mask)
    for _ in range(3):
        again = _run(q, k, v, block_mask)
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
