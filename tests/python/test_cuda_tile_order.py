"""The sm90 forward's tile order (src/cuda/sm90/tile_scheduler_fwd.cuh) across launches: the
dynamic order counts on a counter of the call's workspace, zeroed on its stream, so many launches
in a row, launches of different grid sizes, launches on two streams at once, CUDA graph replays
beside eager calls on another stream, and a call without a workspace (the static order) all
compute every tile once. Each case's output is checked against the sm80 kernels (another code
path: a tile left out or computed twice into garbage shows) and must then come out bit for bit
the same on every later launch (which CTA computes a tile does not change its arithmetic). Head
dim 128 runs the dynamic order, 64 and 256 the static one. Skipped without a Hopper GPU."""

from __future__ import annotations

import pytest
import torch

import flashflex
from helpers import make_qkv

pytestmark = pytest.mark.cuda
BF16 = torch.bfloat16
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


def _captured(inputs, side):
    """A graph of every case's launch, after a warm-up on `side` outside the capture (conversions,
    allocator); (graph, its outputs)."""
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for args in inputs:
            _run(*args)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = [_run(*args) for args in inputs]
    return graph, captured


def test_cuda_graph_replays(gen):
    inputs, firsts = _first_results(gen)
    graph, captured = _captured(inputs, torch.cuda.Stream())
    for _ in range(20):
        graph.replay()
        torch.cuda.synchronize()
        for (name, *_), got, want in zip(CASES, captured, firsts):
            _assert_same(name, got, want)


def test_graph_replays_beside_eager_calls_on_another_stream(gen):
    """A captured launch and eager launches running at once each count on their own counter."""
    inputs, firsts = _first_results(gen)
    side = torch.cuda.Stream()
    graph, captured = _captured(inputs, side)
    torch.cuda.synchronize()
    eager = []
    for i in range(10):
        graph.replay()  # on the current stream
        with torch.cuda.stream(side):
            eager += [(c, _run(*inputs[c])) for c in range(len(CASES))]
    torch.cuda.synchronize()
    for (name, *_), got, want in zip(CASES, captured, firsts):
        _assert_same(name, got, want)
    for c, got in eager:
        _assert_same(CASES[c][0], got, firsts[c])


def _direct_forward(q, k, v, mask, workspace, workspace_bytes):
    from flashflex import _C
    from flashflex._ops import _mask_args, _mod_args
    from flashflex._tensor_ref import stream_of, tensor_ref
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[:3], dtype=torch.float32, device="cuda")
    _C.forward(tensor_ref(q), tensor_ref(k), tensor_ref(v), tensor_ref(out), tensor_ref(lse), None,
               _mod_args(0, 0.0, None), _mask_args(mask._tensors(), q, k), _C.BACKENDS["SM90"], workspace,
               workspace_bytes, stream_of(q))
    return out, lse


def test_no_workspace_runs_the_static_order(gen):
    inputs, firsts = _first_results(gen)
    for (name, *_), args, want in zip(CASES, inputs, firsts):
        _assert_same(name, _direct_forward(*args, 0, 0), want)


def test_too_small_a_workspace_is_rejected(gen):
    from flashflex import _C
    q, k, v, mask = _setup(gen, CASES[0])
    small = torch.zeros(8, dtype=torch.uint8, device="cuda")
    with pytest.raises(ValueError, match="workspace: expected at least 16 bytes"):
        _direct_forward(q, k, v, mask, small.data_ptr(), small.numel())
    assert _C.forward_workspace_size(*_workspace_size_args(q, k, v, mask)) == 16


def _workspace_size_args(q, k, v, mask):
    from flashflex._ops import _mask_args, _mod_args
    from flashflex._tensor_ref import tensor_ref
    return (tensor_ref(q), tensor_ref(k), tensor_ref(v), tensor_ref(torch.empty_like(q)), None, None,
            _mod_args(0, 0.0, None), _mask_args(mask._tensors(), q, k), 0)
