"""GPU fuzz: random valid configurations of flex_attention and ttt_attention (shapes, masks, score
mods, layouts, scales including 0 and negative ones, GQA, bf16 / fp16) run forward and backward on
the CUDA path against the float64 dense references, so a gap shows up as a failing test, not as a
crash or a NaN. Each configuration is its own seeded test id (its parameters are in the failure
message). Skipped without a GPU.

Tolerances (flex): out and every gradient within 2x the error of the same dense computation in
the input dtype (products in the dtype, scores and softmax in float32, P rounded to the dtype)
against float64, plus one ulp of the dtype at max|ref| (rounding a flash kernel adds); lse within
1e-4 relative (float32 from the exact products of the rounded inputs: a wrongly masked key moves
it by about 1 / visible keys). ttt: helpers.TOL for out, twice that for gradients, as
test_eagle3_cuda.py. Rows that see nothing: out 0, lse -inf, dq 0, exactly."""

from __future__ import annotations

import math
import random

import pytest
import torch

import flashflex
from dense_reference import alibi_mod, bias_mod, dense_attention, dense_mask, softcap_mod
from eagle3_reference import sdpa_reference, valid_rows
from helpers import TOL, assert_close, randn
from mask_cases import (and_mod, causal_mod, document_mod, padding_mod, prefix_lm_mod, random_doc_ids,
                        random_tiled_table, sliding_window_mod, table_mod)

pytestmark = pytest.mark.cuda

FLEX_CONFIGS = 48
TTT_CONFIGS = 24
ULP = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}
MASKS = ("none", "causal", "causal_offset", "sliding_window", "prefix_lm", "padding", "document", "table",
         "causal_and_padding")
MODS = ("none", "none", "softcap", "alibi", "bias")


def _scale(rng: random.Random, head_dim: int):
    return rng.choice([None, None, 0.0, -0.5 / math.sqrt(head_dim), rng.uniform(0.01, 0.3)])


def _flex_config(i: int) -> dict:
    rng = random.Random(1000 + i)
    q_len = rng.choice([1, 17, 113, 128, 239, 300, rng.randint(1, 400)])
    kv_len = q_len if rng.random() < 0.5 else rng.choice([1, 64, 129, 257, rng.randint(1, 400)])
    hkv = rng.choice([1, 2])
    head_dim = rng.choice([64, 64, 128, 128, 256])
    return dict(batch=rng.choice([1, 2]), hkv=hkv, hq=hkv * rng.choice([1, 2, 3, 5]), q_len=q_len, kv_len=kv_len,
                head_dim=head_dim, dtype=rng.choice([torch.bfloat16, torch.float16]),
                layout=rng.choice(["bhtd", "bthd"]), mask=rng.choice(MASKS), mod=rng.choice(MODS),
                scale=_scale(rng, head_dim), seed=i)


def _ttt_config(i: int) -> dict:
    rng = random.Random(5000 + i)
    t = rng.choice([1, 17, 128, 200, rng.randint(1, 300)])
    hkv = rng.choice([1, 2])
    head_dim = rng.choice([64, 128, 256])
    return dict(batch=rng.choice([1, 2]), hkv=hkv, hq=hkv * rng.choice([1, 2, 4, 5]), t=t, step=rng.randint(0, 4),
                head_dim=head_dim, dtype=rng.choice([torch.bfloat16, torch.float16]),
                layout=rng.choice(["bhtd", "bthd"]), lengths=rng.random() < 0.6, scale=_scale(rng, head_dim), seed=i)


def _on_cuda(t: torch.Tensor, layout: str) -> torch.Tensor:
    """A CUDA copy of t [B, H, T, D]; "bthd" stores it as [B, T, H, D] and returns the [B, H, T, D] view."""
    if layout == "bthd":
        return t.transpose(1, 2).contiguous().cuda().transpose(1, 2)
    return t.contiguous().cuda()


def _mask(name: str, c: dict, gen):
    """(torch mask_mod for the reference, flashflex block mask on the GPU) of the drawn mask."""
    b, q_len, kv_len = c["batch"], c["q_len"], c["kv_len"]
    lengths_q = torch.randint(0, q_len + 1, (b,), generator=gen)
    lengths_kv = torch.randint(0, kv_len + 1, (b,), generator=gen)
    if name == "none":
        return None, None
    if name == "causal":
        return causal_mod(), flashflex.masks.causal()
    if name == "causal_offset":
        return causal_mod(kv_len - q_len), flashflex.masks.causal(kv_len - q_len)
    if name == "sliding_window":
        return sliding_window_mod(37, 5), flashflex.masks.sliding_window(37, 5)
    if name == "prefix_lm":
        return prefix_lm_mod(lengths_kv), flashflex.masks.prefix_lm(lengths_kv)
    if name == "padding":
        return padding_mod(lengths_q, lengths_kv), flashflex.masks.padding(lengths_q, lengths_kv)
    if name == "causal_and_padding":
        return (and_mod(causal_mod(), padding_mod(None, lengths_kv)),
                flashflex.masks.causal() & flashflex.masks.padding(kv_lengths=lengths_kv))
    if name == "document" and q_len == kv_len and q_len > 1:
        ids = random_doc_ids(gen, b, q_len, 4)
        return document_mod(ids, ids), flashflex.masks.document(ids)
    table = random_tiled_table(gen, (b, c["hq"], q_len, kv_len))
    return table_mod(table), table_mod(table)  # a torch mask_mod: through torch's create_block_mask


def _mod(name: str, c: dict, gen):
    """(flashflex score mod, reference score_mod over CPU float64, the same over CUDA float32)."""
    if name == "softcap":
        return flashflex.score_mods.softcap(4.0), softcap_mod(4.0), softcap_mod(4.0)
    if name == "alibi":
        slopes = torch.rand(c["hq"], generator=gen) - 0.5
        return flashflex.score_mods.alibi(slopes.cuda()), alibi_mod(slopes.double()), alibi_mod(slopes.cuda())
    if name == "bias":
        shape = (c["batch"] if c["seed"] % 2 else 1, c["hq"], c["q_len"], c["kv_len"])
        bias = randn(gen, *shape, dtype=c["dtype"])
        return (flashflex.score_mods.bias(bias.cuda()), bias_mod(bias.double()), bias_mod(bias.cuda().float()))
    return None, None, None


def _lowp_attention(q, k, v, mask, mod, scale):
    """The dense computation in the inputs' dtype (float32 scores and softmax, P rounded to the dtype)."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (q @ k.transpose(-1, -2)).float() * scale
    if mod is not None:
        b, h, lq, lk = s.shape
        idx = [torch.arange(n, device=q.device).view([-1 if d == i else 1 for d in range(4)])
               for i, n in enumerate((b, h, lq, lk))]
        s = mod(s, *idx).expand_as(s)
    if mask is not None:
        s = s.masked_fill(~mask, -math.inf)
    seen = (s > -math.inf).any(-1, keepdim=True)
    p = torch.softmax(torch.where(seen, s, torch.zeros_like(s)), -1).to(q.dtype)
    return torch.where(seen, p @ v, torch.zeros_like(q))


def _err(got, ref) -> float:
    return (got.detach().double().cpu() - ref.detach().double().cpu()).abs().max().item()


@pytest.mark.parametrize("index", range(FLEX_CONFIGS))
def test_flex_attention_random_configuration(index):
    c = _flex_config(index)
    gen = torch.Generator().manual_seed(index)
    shapes = [(c["batch"], c["hq"], c["q_len"], c["head_dim"]), (c["batch"], c["hkv"], c["kv_len"], c["head_dim"])]
    q, k, v = (randn(gen, *shapes[min(i, 1)], dtype=c["dtype"]) for i in range(3))
    dout = randn(gen, *shapes[0], dtype=c["dtype"])
    mask_mod, ff_mask = _mask(c["mask"], c, gen)
    score_mod, ref_mod, lowp_mod = _mod(c["mod"], c, gen)
    block_mask = None
    if isinstance(ff_mask, flashflex.Mask):  # the GPU builder
        block_mask = flashflex.create_block_mask(ff_mask, c["batch"], None, c["q_len"], c["kv_len"], device="cuda")
    elif ff_mask is not None:  # a torch mask_mod over a CPU table: built on the CPU, then moved
        block_mask = flashflex.create_block_mask(ff_mask, c["batch"], c["hq"], c["q_len"], c["kv_len"]).to("cuda")
    qc, kc, vc = (_on_cuda(t, c["layout"]).requires_grad_() for t in (q, k, v))
    out, lse = flashflex.flex_attention(qc, kc, vc, score_mod=score_mod, block_mask=block_mask, scale=c["scale"],
                                        enable_gqa=c["hq"] != c["hkv"], return_lse=True)
    grads = torch.autograd.grad(out, (qc, kc, vc), dout.cuda())

    dense = None if mask_mod is None else dense_mask(mask_mod, c["batch"], c["hq"], c["q_len"], c["kv_len"])
    leaves = [t.double().requires_grad_() for t in (q, k, v)]
    ref_out, ref_lse = dense_attention(*leaves, dense, ref_mod, c["scale"])
    ref_grads = torch.autograd.grad(ref_out, leaves, dout.double())
    low = [t.cuda().requires_grad_() for t in (q, k, v)]
    low_out = _lowp_attention(*low, None if dense is None else dense.cuda(), lowp_mod, c["scale"])
    low_grads = torch.autograd.grad(low_out, low, dout.cuda())

    ulp = ULP[c["dtype"]]
    # dS = P (dP - D) cancels exactly in a dense computation where a row sees one key (P = 1,
    # O = V); the kernels form D = rowsum(dO * O) and dP = dO . V in float32 in different orders,
    # so dq and dk carry float32 rounding of that cancellation: an absolute floor of it.
    s = abs(c["scale"]) if c["scale"] is not None else 1 / math.sqrt(c["head_dim"])
    cancel = 2.0**-23 * s * c["head_dim"] * dout.abs().max().item() * v.abs().max().item()
    floors = {"out": 0.0, "dq": cancel * k.abs().max().item(), "dk": cancel * q.abs().max().item(), "dv": 0.0}
    for name, got, ref, lowp in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref_out, *ref_grads),
                                    (low_out, *low_grads)):
        magnitude = ref.abs().max().item()
        tol = 2 * _err(lowp, ref) + ulp * magnitude + floors[name]
        assert not torch.isnan(got).any(), f"{name}: NaN in {c}"
        assert _err(got, ref) <= tol, f"{name}: error {_err(got, ref):.3e} > {tol:.3e} in {c}"
    empty = torch.isneginf(ref_lse)
    got_lse = lse.detach().double().cpu()
    assert torch.equal(torch.isneginf(got_lse), empty), f"lse: -inf rows differ in {c}"
    assert torch.all(out.detach().cpu()[empty] == 0) and torch.all(grads[0].detach().cpu()[empty] == 0), c
    if (~empty).any():
        worst = (got_lse[~empty] - ref_lse[~empty]).abs().max().item()
        assert worst <= 1e-4 * max(ref_lse[~empty].abs().max().item(), 1.0), f"lse: error {worst:.3e} in {c}"


@pytest.mark.parametrize("index", range(TTT_CONFIGS))
def test_ttt_attention_random_configuration(index):
    c = _ttt_config(index)
    gen = torch.Generator().manual_seed(index)
    b, t, step = c["batch"], c["t"], c["step"]
    q = randn(gen, b, c["hq"], t, c["head_dim"], dtype=c["dtype"])
    blocks = [randn(gen, b, c["hkv"], t, c["head_dim"], dtype=c["dtype"]) for _ in range(2 * step + 2)]
    dout = randn(gen, b, c["hq"], t, c["head_dim"], dtype=c["dtype"])
    lengths = torch.randint(0, t + 1, (b,), generator=gen) if c["lengths"] else None
    leaves = [x.double().requires_grad_() for x in (q, *blocks)]
    ref_out, ref_lse = sdpa_reference(leaves[0], leaves[1:step + 2], leaves[step + 2:], lengths, c["scale"])
    ref_grads = torch.autograd.grad(ref_out, leaves, dout.double())

    cuda_in = [_on_cuda(x, c["layout"]).requires_grad_() for x in (q, *blocks)]
    out, lse = flashflex.eagle3.ttt_attention(cuda_in[0], cuda_in[1:step + 2], cuda_in[step + 2:],
                                              None if lengths is None else lengths.cuda(), c["scale"],
                                              return_lse=True)
    grads = torch.autograd.grad(out, cuda_in, dout.cuda())
    assert_close(out, ref_out, TOL[c["dtype"]], f"out of {c}")
    for i, (got, want) in enumerate(zip(grads, ref_grads)):
        assert_close(got, want, 2 * TOL[c["dtype"]], f"gradient {i} of {c}")
    valid = valid_rows(lengths, b, t, step)[:, None, :].expand(b, c["hq"], t)
    got_lse = lse.detach().cpu()
    assert torch.all(torch.isneginf(got_lse[~valid])) and torch.all(out.detach().cpu()[~valid] == 0), c
    worst = (got_lse[valid].double() - ref_lse[valid]).abs().max().item() if valid.any() else 0.0
    assert worst <= 1e-4 * max(ref_lse[valid].abs().max().item() if valid.any() else 1.0, 1.0), f"lse in {c}"
