"""Seeded fuzz of non-finite inputs: NaN placed at random in q, k, v or the ALiBi slopes of random
configurations (GQA, ragged lengths, causal / sliding-window / padding masks), on the CPU path and
on the GPU (the cuda cases skip without a device). Expected, from the dense visibility of each
row: a NaN in q reaches its row, in k the rows that see that key, in v one column of the rows
that see that key, in a slope every row of its head; a row that sees nothing stays out 0 and
lse -inf. Rows a NaN does not reach stay finite and, on the CPU path, match the float64 reference
(TOL of helpers.py) computed with the NaN replaced by 0; on the GPU a NaN value behind a masked
score may also reach other rows of its tile (0 * NaN in the P @ V product, as in a dense
product), so for v only the rows that must be NaN are checked there."""

from __future__ import annotations

import random

import pytest
import torch

import flashflex
from dense_reference import alibi_mod, dense_attention, dense_mask
from helpers import TOL, assert_close, randn
from mask_cases import causal_mod, padding_mod, sliding_window_mod

CONFIGS = 16
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.cuda)]
DTYPE = {"cpu": torch.float32, "cuda": torch.float16}


def _config(i: int) -> dict:
    rng = random.Random(9000 + i)
    hkv = rng.choice([1, 2])
    return dict(batch=rng.choice([1, 2]), hkv=hkv, hq=hkv * rng.choice([1, 3]), q_len=rng.randint(1, 300),
                kv_len=rng.randint(1, 300), mask=rng.choice(["none", "causal", "sliding_window", "padding"]),
                where=rng.choice(["q", "k", "v", "alibi"]), count=rng.randint(1, 3), seed=i)


def _mask(c: dict, gen, device):
    if c["mask"] == "none":
        return None, None
    if c["mask"] == "causal":
        mod, mask = causal_mod(), flashflex.masks.causal()
    elif c["mask"] == "sliding_window":
        mod, mask = sliding_window_mod(20, 3), flashflex.masks.sliding_window(20, 3)
    else:
        q_lengths = torch.randint(0, c["q_len"] + 1, (c["batch"],), generator=gen)
        kv_lengths = torch.randint(0, c["kv_len"] + 1, (c["batch"],), generator=gen)
        mod, mask = padding_mod(q_lengths, kv_lengths), flashflex.masks.padding(q_lengths, kv_lengths)
    return mod, flashflex.create_block_mask(mask, c["batch"], None, c["q_len"], c["kv_len"], device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index", range(CONFIGS))
def test_nan_reaches_exactly_the_rows_that_see_it(device, index):
    c = _config(index)
    gen = torch.Generator().manual_seed(index)
    b, hq, hkv, lq, lkv = c["batch"], c["hq"], c["hkv"], c["q_len"], c["kv_len"]
    dtype = DTYPE[device]
    q = randn(gen, b, hq, lq, 64, dtype=dtype)
    k, v = randn(gen, b, hkv, lkv, 64, dtype=dtype), randn(gen, b, hkv, lkv, 64, dtype=dtype)
    slopes = torch.rand(hq, generator=gen) - 0.5
    mask_mod, block_mask = _mask(c, gen, device)
    sees = dense_mask(mask_mod, b, hq, lq, lkv)  # [B, Hq, Lq, Lkv]
    group = hq // hkv

    nan_rows = torch.zeros(b, hq, lq, dtype=torch.bool)  # out and lse NaN
    nan_cols = torch.zeros(b, hq, lq, 64, dtype=torch.bool)  # out NaN (a NaN in v)
    for _ in range(c["count"]):
        bi = int(torch.randint(0, b, (1,), generator=gen))
        if c["where"] == "q":
            h, i = int(torch.randint(0, hq, (1,), generator=gen)), int(torch.randint(0, lq, (1,), generator=gen))
            q[bi, h, i, int(torch.randint(0, 64, (1,), generator=gen))] = float("nan")
            nan_rows[bi, h, i] |= bool(sees[bi, h, i].any())
        elif c["where"] in ("k", "v"):
            hk, j = int(torch.randint(0, hkv, (1,), generator=gen)), int(torch.randint(0, lkv, (1,), generator=gen))
            col = int(torch.randint(0, 64, (1,), generator=gen))
            (k if c["where"] == "k" else v)[bi, hk, j, col] = float("nan")
            heads = slice(hk * group, (hk + 1) * group)
            if c["where"] == "k":
                nan_rows[bi, heads] |= sees[bi, heads, :, j]
            else:
                nan_cols[bi, heads, :, col] |= sees[bi, heads, :, j]
        else:
            h = int(torch.randint(0, hq, (1,), generator=gen))
            slopes[h] = float("nan")
            nan_rows[:, h] |= sees[:, h].any(-1)
    score_mod = flashflex.score_mods.alibi(slopes.to(device)) if c["where"] == "alibi" else None

    out, lse = flashflex.flex_attention(q.to(device), k.to(device), v.to(device), block_mask=block_mask,
                                        score_mod=score_mod, enable_gqa=hq != hkv, return_lse=True)
    out, lse = out.cpu().double(), lse.cpu().double()
    nan_out = nan_rows[..., None] | nan_cols
    assert torch.isnan(out[nan_out]).all(), f"{int((~torch.isnan(out[nan_out])).sum())} values not NaN in {c}"
    assert torch.isnan(lse[nan_rows]).all(), f"lse: rows not NaN in {c}"
    empty = ~sees.any(-1)
    assert torch.all(out[empty] == 0) and torch.all(torch.isneginf(lse[empty])), f"fully masked rows in {c}"
    if c["where"] == "v" and device != "cpu":
        return
    assert torch.isfinite(out[~nan_out]).all(), f"out: rows no NaN reaches in {c}"
    assert torch.isfinite(lse[~nan_rows & ~empty]).all(), f"lse: rows no NaN reaches in {c}"
    if device == "cpu":
        clean = [torch.nan_to_num(t.double(), nan=0.0) for t in (q, k, v)]
        ref_mod = alibi_mod(torch.nan_to_num(slopes.double(), nan=0.0)) if score_mod is not None else None
        ref_out, _ = dense_attention(*clean, sees, ref_mod)
        assert_close(out[~nan_out], ref_out[~nan_out], TOL[dtype], f"rows no NaN reaches, {c}")
