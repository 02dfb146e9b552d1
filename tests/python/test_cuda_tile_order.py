"""The sm90 forward's tile order (src/cuda/sm90/tile_scheduler_fwd.cuh) across launches: the
dynamic order's per-launch counters reset themselves, so many launches in a row (more than there
are counter slots), launches of different grid sizes, launches on two streams at once and CUDA
graph replays all compute every tile once. Each case's output is checked against the sm80 kernels
(another code path: a tile left out or computed twice into garbage shows) and must then come out
bit for bit the same on every later launch (which CTA computes a tile does not change its
arithmetic). Head dim 128 runs the dynamic order, 64 and 256 the static one. Skipped without a
Hopper GPU."""

from __future__ import annotations

import pytest
import torch

import flashflex
from helpers import make_qkv

pytestmark = pytest.mark.cuda
BF16 = torch.bfloat16
# More launches than the launcher's counter slots (kFwdTileSlots = 64), so every slot is reused.
LAUNCHES = 160


@pytest.fixture(autouse=True)
def hopper_only():
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the sm90 kernels need a Hopper GPU")


def _document_mask(t: int, doc_len: int):
    ids = (torch.arange(t, device="cuda") // doc_len).to(torch.int32)
    return flashflex.create_block_mask(flashflex.masks.document(ids), None, None, t, t, device="cuda")


def _tail_masked(t: int, seen: int):
    """Rows from `seen` on see no key: whole q tiles with empty kv lists (O = 0, lse = -inf)."""
    def mod(b, h, q, kv):
        return (q < seen) & (kv <= q)
    return flashflex.create_block_mask(mod, None, None, t, t, device="cuda")


# (name, batch, q heads, kv heads, length, head dim, mask builder): grids below and above the
# number of SMs (132 on an H200), causal, document, empty q tiles, GQA.
CASES = [
    ("few_tiles", 1, 2, 1, 300, 128, lambda t: flashflex.create_block_mask(
        flashflex.masks.causal(), None, None, t, t, device="cuda")),
    ("document", 2, 8, 2, 2000, 128, lambda t: _document_mask(t, 333)),
    ("empty_tiles", 1, 16, 4, 1500, 128, lambda t: _tail_masked(t, 700)),
    ("causal_d64", 1, 8, 8, 1100, 64, lambda t: flashflex.create_block_mask(
        flashflex.masks.causal(), None, None, t, t, device="cuda")),
    ("document_d256", 1, 4, 2, 900, 256, lambda t: _document_mask(t, 200)),
]


def _setup(gen, case):
    name, batch, hq, hkv, t, d, mask_of = case
    q, k, v = (x.cuda() for x in make_qkv(gen, batch, hq, hkv, t, t, d, dtype=BF16))
    return q, k, v, mask_of(t)


def _run(q, k, v, mask, backend="SM90"):
    return flashflex.flex_attention(q, k, v, block_mask=mask, enable_gqa=True, return_lse=True,
                                    kernel_options={"BACKEND": backend})


def _first_results(gen):
    inputs = [_setup(gen, case) for case in CASES]
    firsts = []
    for (name, *_), (q, k, v, mask) in zip(CASES, inputs):
        out, lse = _run(q, k, v, mask)
        ref_out, ref_lse = _run(q, k, v, mask, backend="SM80")
        torch.testing.assert_close(out, ref_out, atol=2e-2, rtol=2e-2, msg=lambda m: f"{name}: {m}")
        seen = torch.isfinite(ref_lse)
        assert torch.equal(torch.isfinite(lse), seen), f"{name}: rows that see no key differ"
        torch.testing.assert_close(lse[seen], ref_lse[seen], atol=1e-3, rtol=1e-4, msg=lambda m: f"{name}: {m}")
        firsts.append((out.clone(), lse.clone()))
    return inputs, firsts


def _assert_same(name, got, want):
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), f"{name}: differs from its first launch"


def test_many_launches_of_different_grids_agree(gen):
    inputs, firsts = _first_results(gen)
    for i in range(LAUNCHES):
        c = i % len(CASES)
        _assert_same(CASES[c][0], _run(*inputs[c]), firsts[c])


def test_launches_on_two_streams_at_once(gen):
    inputs, firsts = _first_results(gen)
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    results = [[], []]
    torch.cuda.synchronize()
    for i in range(LAUNCHES // 2):
        for s, stream in enumerate(streams):
            c = (i + s) % len(CASES)
            with torch.cuda.stream(stream):
                results[s].append((c, _run(*inputs[c])))
    torch.cuda.synchronize()
    for per_stream in results:
        for c, got in per_stream:
            _assert_same(CASES[c][0], got, firsts[c])


def test_cuda_graph_replays(gen):
    inputs, firsts = _first_results(gen)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside the capture (conversions, allocator)
        for args in inputs:
            _run(*args)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = [_run(*args) for args in inputs]
    for _ in range(20):
        graph.replay()
        torch.cuda.synchronize()
        for (name, *_), got, want in zip(CASES, captured, firsts):
            _assert_same(name, got, want)
