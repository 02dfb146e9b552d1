"""Shared test helpers: seeded inputs, torch's flex_attention as the forward oracle, and the
comparisons with their tolerances. Never calls flashflex."""

from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch
from torch.nn.attention.flex_attention import AuxRequest, create_block_mask
from torch.nn.attention.flex_attention import flex_attention as torch_flex_attention

# Error allowed in a flashflex result, as a fraction of the largest magnitude of the reference,
# |got - ref| <= TOL * max|ref| element by element. The reference is float64 on the very values
# flashflex received (inputs already rounded to their dtype), so what remains is flashflex's own
# arithmetic and the rounding of its result:
#   float32:  result rounding is 2^-24 (6e-8); 1e-5 also admits float32 accumulation over the
#             <= 600 keys of these tests (about sqrt(600) * 2^-24 per sum), while a masking,
#             indexing or scaling error moves outputs by 1e-2 or more.
#   float16:  result rounding is 2^-11 (4.9e-4); 2e-3 is 4 half-ulps, leaving room for a kernel
#             that rounds P to float16 before P @ V.
#   bfloat16: result rounding is 2^-8 (3.9e-3); 1.6e-2 is 4 half-ulps, same reason.
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
# lse is float32 whatever the input dtype, computed from the same rounded inputs: float32
# rounding of values of size ~10 plus accumulation, as above.
LSE_TOL = 1e-5
# The float64 reference itself against torch's float64 flex_attention: both exact up to float64
# rounding of sums over <= 600 terms.
REF_TOL = 1e-10


def randn(gen: torch.Generator, *shape, dtype=torch.float32, std: float = 1.5) -> torch.Tensor:
    """Seeded, non-zero (continuous) values, rounded to dtype."""
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * std).to(dtype)


def make_qkv(gen: torch.Generator, batch: int, hq: int, hkv: int, q_len: int, kv_len: int, head_dim: int,
             dtype=torch.float32):
    q = randn(gen, batch, hq, q_len, head_dim, dtype=dtype)
    k = randn(gen, batch, hkv, kv_len, head_dim, dtype=dtype)
    v = randn(gen, batch, hkv, kv_len, head_dim, dtype=dtype)
    return q, k, v


def torch_block_mask(mask_mod: Optional[Callable], batch, heads, q_len: int, kv_len: int, **kwargs):
    if mask_mod is None:
        return None
    return create_block_mask(mask_mod, batch, heads, q_len, kv_len, device="cpu", **kwargs)


def torch_flex_reference(q, k, v, mask_mod: Optional[Callable] = None, score_mod: Optional[Callable] = None,
                         scale: Optional[float] = None):
    """torch's eager flex_attention on float64 copies: (out, lse), both float64."""
    q64, k64, v64 = (t.detach().to(torch.float64) for t in (q, k, v))
    # The full [B, Hq] mask: cheap at these sizes, and right for masks that depend on b or h.
    block_mask = torch_block_mask(mask_mod, q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()"
        out, aux = torch_flex_attention(q64, k64, v64, score_mod=score_mod, block_mask=block_mask, scale=scale,
                                        enable_gqa=q.shape[1] != k.shape[1], return_aux=AuxRequest(lse=True))
    return out, aux.lse


def assert_close(got: torch.Tensor, ref: torch.Tensor, tol: float, what: str) -> None:
    """|got - ref| <= tol * max|ref| everywhere (see TOL), no NaN, same shape."""
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)}, expected {tuple(ref.shape)}"
    got64 = got.detach().to(torch.float64).cpu()
    ref64 = ref.detach().to(torch.float64).cpu()
    assert not torch.isnan(got64).any(), f"{what}: {int(torch.isnan(got64).sum())} NaN values"
    magnitude = max(ref64.abs().max().item() if ref64.numel() else 0.0, 1e-30)
    err = (got64 - ref64).abs()
    worst = err.max().item() if err.numel() else 0.0
    if not worst <= tol * magnitude:
        where = tuple(int(i) for i in torch.nonzero(err == err.max())[0])
        raise AssertionError(f"{what}: max error {worst:.3e} at {where} (got {got64[where].item():.6g}, expected "
                             f"{ref64[where].item():.6g}) exceeds {tol:g} x max|ref| = {tol * magnitude:.3e}")


def assert_lse_close(got: torch.Tensor, ref: torch.Tensor, what: str = "lse") -> None:
    """float32 lse; -inf exactly where the reference row sees nothing; finite values as assert_close
    with magnitude at least 1 (lse near 0 is common and has absolute, not relative, error)."""
    assert got.dtype == torch.float32, f"{what}: dtype {got.dtype}, expected torch.float32"
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)}, expected {tuple(ref.shape)}"
    got64, ref64 = got.detach().double().cpu(), ref.detach().double().cpu()
    assert not torch.isnan(got64).any(), f"{what}: NaN values"
    empty = torch.isneginf(ref64)
    assert torch.equal(torch.isneginf(got64), empty), (
        f"{what}: -inf at {int(torch.isneginf(got64).sum())} rows, expected at {int(empty.sum())} (fully masked rows)")
    assert torch.isfinite(got64[~empty]).all(), f"{what}: non-finite values on rows that see keys"
    finite_ref = ref64[~empty]
    if finite_ref.numel():
        magnitude = max(finite_ref.abs().max().item(), 1.0)
        worst = (got64[~empty] - finite_ref).abs().max().item()
        assert worst <= LSE_TOL * magnitude, f"{what}: max error {worst:.3e} exceeds {LSE_TOL * magnitude:.3e}"


def rows_seeing_nothing(mask: torch.Tensor) -> torch.Tensor:
    """bool [B, H, Lq] from a dense mask [B, H, Lq, Lkv]."""
    return ~mask.any(dim=-1)

