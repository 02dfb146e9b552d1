"""The float64 dense reference (dense_reference.py) against torch's own flex_attention, and its
gradients against finite differences: the oracle of the gradient tests must be right first."""

from __future__ import annotations

import pytest
import torch

from dense_reference import alibi_mod, bias_mod, dense_attention, dense_mask, softcap_mod
from helpers import REF_TOL, assert_close, make_qkv, randn, torch_flex_reference
from mask_cases import BUILTIN_CASES, RANDOM_CASES, build_case, causal_mod


@pytest.mark.parametrize("case_name", sorted(BUILTIN_CASES) + sorted(RANDOM_CASES))
def test_reference_matches_torch_flex_on_mask_cases(case_name, gen):
    batch, hq, hkv, head_dim = 2, 2, 1, 64
    case = build_case(case_name, batch, gen, heads=hq)
    q, k, v = make_qkv(gen, batch, hq, hkv, case.q_len, case.kv_len, head_dim, dtype=torch.float64)
    mask = dense_mask(case.torch_mask_mod, batch, hq, case.q_len, case.kv_len)
    out, lse = dense_attention(q, k, v, mask)
    ref_out, ref_lse = torch_flex_reference(q, k, v, case.torch_mask_mod)
    assert_close(out, ref_out, REF_TOL, "out")
    empty = torch.isneginf(ref_lse)
    assert torch.equal(torch.isneginf(lse), empty)
    assert_close(lse[~empty], ref_lse[~empty], REF_TOL, "lse")
    assert torch.all(out[empty] == 0)


@pytest.mark.parametrize("mod_name", ["softcap", "alibi", "bias_full", "bias_broadcast"])
def test_reference_matches_torch_flex_with_score_mods(mod_name, gen):
    batch, hq, hkv, q_len, kv_len, head_dim = 2, 4, 2, 130, 257, 64
    q, k, v = make_qkv(gen, batch, hq, hkv, q_len, kv_len, head_dim, dtype=torch.float64)
    score_mod = {
        "softcap": lambda: softcap_mod(2.0),
        "alibi": lambda: alibi_mod(torch.tensor([2.0 ** -(i + 1) for i in range(hq)], dtype=torch.float64)),
        "bias_full": lambda: bias_mod(randn(gen, batch, hq, q_len, kv_len, dtype=torch.float64)),
        "bias_broadcast": lambda: bias_mod(randn(gen, 1, hq, q_len, kv_len, dtype=torch.float64)),
    }[mod_name]()
    mask_mod = causal_mod(kv_len - q_len)
    out, lse = dense_attention(q, k, v, dense_mask(mask_mod, batch, hq, q_len, kv_len), score_mod)
    ref_out, ref_lse = torch_flex_reference(q, k, v, mask_mod, score_mod)
    assert_close(out, ref_out, REF_TOL, "out")
    assert_close(lse, ref_lse, REF_TOL, "lse")


def test_reference_scale_argument(gen):
    q, k, v = make_qkv(gen, 1, 2, 2, 17, 40, 64, dtype=torch.float64)
    out, lse = dense_attention(q, k, v, scale=0.3)
    ref_out, ref_lse = torch_flex_reference(q, k, v, scale=0.3)
    assert_close(out, ref_out, REF_TOL, "out")
    assert_close(lse, ref_lse, REF_TOL, "lse")


def test_reference_gradients_match_finite_differences(gen):
    # Tiny problem with a fully masked row (row 0 under causal offset -1), GQA 2:1, a bias with grad.
    batch, hq, hkv, q_len, kv_len, head_dim = 1, 2, 1, 5, 6, 3
    q, k, v = (t.requires_grad_() for t in make_qkv(gen, batch, hq, hkv, q_len, kv_len, head_dim,
                                                     dtype=torch.float64))
    bias = randn(gen, 1, hq, q_len, kv_len, dtype=torch.float64).requires_grad_()
    mask = dense_mask(causal_mod(-1), batch, hq, q_len, kv_len)
    weight = randn(gen, batch, hq, q_len, dtype=torch.float64)

    def loss_terms(q, k, v, bias):
        out, lse = dense_attention(q, k, v, mask, bias_mod(bias))
        return out, torch.where(torch.isneginf(lse), torch.zeros_like(lse), lse) * weight

    assert torch.autograd.gradcheck(loss_terms, (q, k, v, bias))
    out, lse = dense_attention(q, k, v, mask, bias_mod(bias))
    (out.sum() + torch.where(torch.isneginf(lse), torch.zeros_like(lse), lse).sum()).backward()
    assert torch.all(q.grad[:, :, 0] == 0), "row 0 sees nothing: its query gradient must be 0"
    assert not any(torch.isnan(t.grad).any() for t in (q, k, v, bias))
