"""The benchmarks' shared vocabulary (bench/cases.py) and their table code, on the CPU: case names
parse to the problems they say, each mask's visible pairs (the TFLOP/s count) agree with its
mask_mod and its flashflex mask evaluated densely, and one tiny dry-run case goes through the
forward / backward driver into a table bench/plot.py reads."""

import os
import sys
from types import SimpleNamespace

import pytest
import torch

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "bench")
sys.path.insert(0, BENCH)

import cases as cs  # noqa: E402
import compare  # noqa: E402
import plot  # noqa: E402
from timing import gpu_slug  # noqa: E402


def test_names_parse_to_their_problems():
    c = cs.parse("causal_16k")
    assert (c.seq_len, c.mask.kind, c.q_heads, c.kv_heads, c.head_dim, c.dtype) == \
        (16384, "causal", 32, 8, 128, torch.bfloat16)
    c = cs.parse("sliding_window_2048_16k_d64")
    assert (c.seq_len, c.mask.kind, c.mask.window, c.head_dim) == (16384, "sliding_window", 2048, 64)
    c = cs.parse("document_8x2048")
    assert (c.seq_len, c.mask.kind, c.mask.doc_len) == (16384, "document", 2048)
    c = cs.parse("causal_8k_h40x8")
    assert (c.q_heads, c.kv_heads) == (40, 8)
    c = cs.parse("eagle3_ttt_256_h4x2_d64_fp32_b2")
    assert (c.seq_len, c.batch, c.dtype, c.unroll_case) == (256, 2, torch.float32, True)
    assert c.lengths() == (256, 155)
    for name in cs.ATTENTION_CASES.split(",") + cs.UNROLL_CASES.split(",") + cs.UNROLL_CPU_CASES.split(","):
        assert cs.parse(name).name == name


@pytest.mark.parametrize("name, message", [("causal16k", "expected <mask>_<length>"),
                                           ("causal_16k_x3", "unknown suffix 'x3'"),
                                           ("causal_16k_h30x8", "not a multiple")])
def test_bad_names_say_what_is_wrong(name, message):
    with pytest.raises(ValueError, match=message):
        cs.parse(name)


@pytest.mark.parametrize("spec", [cs.MaskSpec("causal"), cs.MaskSpec("dense"),
                                  cs.MaskSpec("sliding_window", window=40),
                                  cs.MaskSpec("sliding_window", window=500),
                                  cs.MaskSpec("document", doc_len=48),
                                  cs.MaskSpec("document", doc_len=48, causal=False)])
def test_visible_pairs_match_both_mask_forms(spec):
    t = 200
    q, kv = torch.arange(t)[:, None], torch.arange(t)[None, :]
    zero = torch.zeros((), dtype=torch.int64)
    mod, ff = spec.mask_mod(), spec.flashflex(t)
    dense_mod = torch.ones(t, t, dtype=torch.bool) if mod is None else mod(zero, zero, q, kv)
    dense_ff = torch.ones(t, t, dtype=torch.bool) if ff is None else ff(zero, zero, q, kv)
    assert torch.equal(dense_mod, dense_ff)
    assert int(dense_mod.sum()) == spec.pairs(t)


def test_gpu_slug():
    assert gpu_slug("NVIDIA H200") == "h200"
    assert gpu_slug("NVIDIA H100 80GB HBM3") == "h100"
    assert gpu_slug("NVIDIA A100-SXM4-80GB") == "a100"


@pytest.mark.parametrize("backward", [False, True])
def test_dry_run_case_makes_a_table(backward, tmp_path):
    case = cs.parse("causal_16k").shrunk(seq_len=64, q_heads=2, kv_heads=1)
    args = SimpleNamespace(iters=1, warmup=0, cold_l2=False)
    impls = ["sdpa_math", "fa4", "flashflex"]
    rows = compare.measure_case(case, impls, backward, args, "cpu")
    by_impl = {r.impl: r for r in rows}
    assert by_impl["fa4"].ms is None and "needs CUDA" in by_impl["fa4"].note
    assert by_impl["flashflex"].ms is not None
    assert "max\\|" in by_impl["sdpa_math"].note  # compared with flashflex on the same inputs
    table = compare.render(rows, [case], backward, ["command: `test`  "], impls)
    out = tmp_path / "table.md"
    out.write_text(table)
    read = plot.read_table(str(out))
    assert read[case.name]["flashflex"] == pytest.approx(by_impl["flashflex"].tflops, rel=0.05, abs=1e-3)
    assert read[case.name]["fa4"] is None


def test_schedule_model():
    import schedule_model as sm
    # Equal tiles, a whole number of waves: every CTA gets the same work.
    even = sm.balance(torch.ones(8, 4, dtype=torch.float64), sms=4)
    assert (even.tiles, even.static, even.dynamic, even.bound) == (32, 1.0, 1.0, 1.0)
    # Costs that rise and fall along the order (documents): the static order loses to dynamic.
    saw = torch.tensor([(m % 4) + 1.0 for m in range(16)], dtype=torch.float64)[:, None].expand(16, 3)
    b = sm.balance(saw.contiguous(), sms=5)
    assert b.static > b.dynamic >= b.bound >= 1.0
    # A case's tile costs: [q tiles, batch * heads], kv steps plus the fixed tile cost.
    costs = sm.tile_costs(cs.parse("causal_512_h4x2_d64"), partial_cost=1.0, tile_cost=0.0)
    assert costs.shape == (4, 4)
    assert costs[:, 0].tolist() == [1.0, 2.0, 3.0, 4.0]
