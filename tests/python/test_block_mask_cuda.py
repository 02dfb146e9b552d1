"""The GPU block-mask builder (flashflex.create_block_mask(..., device="cuda") with a built-in
mask) against the CPU builder: the same lists, the same partial ids (both number partial tiles
row-major over (b, m), ascending n) and the same bitmaps, for every built-in mask, odd lengths,
Q_LEN != KV_LEN, per-sample data with B > 1, combinations, rows of tiles all undecided (a length
cutting a q-tile row); and CUDA-graph capture of the causal and EAGLE3 builds. Skipped without a CUDA device or without the CUDA build."""

from __future__ import annotations

import pytest
import torch

import flashflex
from flashflex import masks
from flashflex.block_mask import _LIST_FIELDS

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not flashflex._C.has_cuda_backend(), reason="build without CUDA kernels")]

SIZES = [(1, 1), (127, 300), (300, 257), (1000, 513), (640, 640)]


def assert_same(gpu: flashflex.BlockMask, cpu: flashflex.BlockMask, what: str) -> None:
    assert gpu.device.type == "cuda", what
    assert gpu.shape == cpu.shape, f"{what}: shape {gpu.shape}, expected {cpu.shape}"
    for name in _LIST_FIELDS + ("partial_tile_ids",):
        got, want = getattr(gpu, name).cpu(), getattr(cpu, name)
        assert torch.equal(got, want), f"{what}: {name} differs at {(got != want).nonzero()[:5].tolist()}"
    count = cpu.bitmaps.shape[0]
    # Room for an upper bound; ids past the true count are unused.
    assert gpu.bitmaps.shape[0] >= count, f"{what}: capacity {gpu.bitmaps.shape[0]} < {count} partial tiles"
    assert int(gpu.kv_num_blocks.sum()) == count, what
    got = gpu.bitmaps[:count].cpu()
    assert torch.equal(got, cpu.bitmaps), f"{what}: bitmaps differ in tiles {(got != cpu.bitmaps).any(-1).any(-1).nonzero().flatten()[:5].tolist()}"


def check(mask, B, H, q_len, kv_len, what):
    cpu = flashflex.create_block_mask(mask, B, H, q_len, kv_len, device="cpu")
    gpu = flashflex.create_block_mask(mask, B, H, q_len, kv_len, device="cuda")
    torch.cuda.synchronize()
    assert_same(gpu, cpu, what)


def _doc_ids(gen, batch, length, sorted_ids=True):
    if sorted_ids:
        starts = (torch.rand(batch, length, generator=gen) < 0.01).to(torch.int64)
        return starts.cumsum(-1)
    return torch.randint(0, 3, (batch, length), generator=gen)


@pytest.mark.parametrize("q_len,kv_len", SIZES)
def test_band_masks(q_len, kv_len):
    for mask in (masks.causal(), masks.causal(kv_len - q_len), masks.causal(-37), masks.sliding_window(100),
                 masks.sliding_window(64, 200, offset=-5)):
        check(mask, None, None, q_len, kv_len, f"{mask} {q_len}x{kv_len}")


@pytest.mark.parametrize("q_len,kv_len", SIZES)
def test_per_sample_masks(q_len, kv_len, gen):
    B = 3
    cases = [
        masks.prefix_lm([0, q_len // 2, q_len + 7]),
        masks.padding([q_len, q_len // 3, 1], [kv_len // 2, kv_len, 0]),
        masks.padding(kv_lengths=[kv_len // 2 + 1, 3, kv_len]),
        masks.padding(q_lengths=[q_len, 0, q_len // 2]),
        masks.document(_doc_ids(gen, B, q_len), _doc_ids(gen, B, kv_len)),
        masks.document(_doc_ids(gen, B, q_len, sorted_ids=False), _doc_ids(gen, B, kv_len, sorted_ids=False)),
    ]
    for mask in cases:
        check(mask, B, 2, q_len, kv_len, f"{mask} {q_len}x{kv_len}")


@pytest.mark.parametrize("length", [129, 640, 1000])
def test_document_self_attention(length, gen):
    check(masks.document(_doc_ids(gen, 2, length)), 2, 1, length, length, f"document {length}")
    # One sample's ids shared by every sample of the batch.
    check(masks.document(_doc_ids(gen, 1, length)), 4, 1, length, length, f"document shared {length}")


@pytest.mark.parametrize("block_len", [1, 100, 128, 300, 1024])
@pytest.mark.parametrize("step", [0, 1, 3, 6])
def test_eagle3(block_len, step):
    kv_len = (step + 1) * block_len
    check(masks.eagle3(step, block_len), None, None, block_len, kv_len, f"eagle3 {step} {block_len}")
    lengths = [block_len, block_len // 2, block_len // 3 + 1]
    check(masks.eagle3(step, block_len, lengths), 3, 1, block_len, kv_len, f"eagle3 {step} {block_len} lengths")


@pytest.mark.parametrize("q_len,kv_len", [(300, 300), (1000, 513), (127, 640)])
def test_combinations(q_len, kv_len, gen):
    B = 2
    doc = masks.document(_doc_ids(gen, B, q_len), _doc_ids(gen, B, kv_len))
    cases = [
        masks.causal() & masks.padding([q_len // 2, q_len], None),
        masks.sliding_window(3, 3) | masks.prefix_lm([q_len // 3, 0]),
        doc & masks.causal(kv_len - q_len),
        masks.and_masks(masks.causal(), masks.sliding_window(256), masks.padding(kv_lengths=[kv_len - 1, 77])),
        masks.or_masks(masks.sliding_window(0, 0), doc & masks.causal(), masks.padding([5, 9], [1, 2])),
    ]
    for mask in cases:
        check(mask, B, 2, q_len, kv_len, f"{mask} {q_len}x{kv_len}")
    T, step = 300, 2
    check(masks.eagle3(step, T) & masks.causal(step * T), None, None, T, (step + 1) * T, "eagle3 & causal")


def test_large_eagle3_and_causal():
    T = 16384
    check(masks.causal(), None, None, T, T, "causal 16384")
    check(masks.eagle3(6, T), None, None, T, 7 * T, "eagle3 step 6, 16384")


def test_rows_of_undecided_tiles():
    """A length cutting a q-tile row leaves every tile of that row undecided: the refinement's
    boxes and rows at their most (a chunk of 512 undecided tiles, rows past Q_LEN, several
    chunks), alone and combined."""
    q_len, kv_len = 1000, 70000  # 547 kv tiles: a chunk of 512, then 35
    check(masks.padding([1000, 61, 999], None), 3, 1, q_len, kv_len, "padding q_lengths")
    check(masks.padding([61, 1000], [kv_len - 5, 129]), 2, 1, q_len, kv_len, "padding both")
    check(masks.prefix_lm([kv_len - 1, 300]), 2, 1, q_len, kv_len, "prefix_lm long prefix")
    check(masks.padding([130, 1000]) & masks.causal(kv_len - q_len), 2, 1, q_len, kv_len, "padding & causal")
    T = 16384
    for step in (1, 6):
        check(masks.eagle3(step, T, [T, T - 200]), 2, 1, T, (step + 1) * T, f"eagle3 {step} {T} lengths")


@pytest.mark.parametrize("which", ["causal", "eagle3"])
def test_cuda_graph_capture(which):
    T = 1000
    mask, kv_len = (masks.causal(), T) if which == "causal" else (masks.eagle3(3, T), 4 * T)
    cpu = flashflex.create_block_mask(mask, None, None, T, kv_len, device="cpu")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture
        flashflex.create_block_mask(mask, None, None, T, kv_len, device="cuda")
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = flashflex.create_block_mask(mask, None, None, T, kv_len, device="cuda")
    for t in captured._tensors():  # whatever the capture left, the replay rewrites it
        t.fill_(-7)
    graph.replay()
    torch.cuda.synchronize()
    assert_same(captured, cpu, f"{which} replayed")
    graph.replay()
    torch.cuda.synchronize()
    assert_same(captured, cpu, f"{which} replayed twice")


def test_attention_with_gpu_built_mask(gen):
    """The GPU-built mask (bitmaps with unused capacity) drives the attention kernels as the
    CPU-built one does."""
    q_len, kv_len = 300, 513
    mask = masks.sliding_window(70, 10, offset=kv_len - q_len)
    q, k, v = (torch.randn(2, 2, n, 64, generator=gen).to(torch.bfloat16).cuda()
               for n in (q_len, kv_len, kv_len))
    out_gpu = flashflex.flex_attention(q, k, v, block_mask=flashflex.create_block_mask(mask, None, None, q_len,
                                                                                        kv_len, device="cuda"))
    cpu_mask = flashflex.create_block_mask(mask, None, None, q_len, kv_len, device="cpu").to("cuda")
    out_cpu = flashflex.flex_attention(q, k, v, block_mask=cpu_mask)
    assert torch.equal(out_gpu, out_cpu)
