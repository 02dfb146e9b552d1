"""Small EAGLE3 CUDA cases for compute-sanitizer (memcheck, racecheck), run by
tools/device_check.sh: the device mask build, the forward with the row-local keys folded in, the
block-sparse backward over block 0 and the row-local pass; every head dim and dtype, an odd
length, GQA 5, a sample with no valid row, deterministic mode. Then the GPU block-mask builder
over every built-in mask kind and a combination, at odd sizes. Asserts only that results are
finite; correctness is tests/python/test_eagle3_cuda.py's and test_block_mask_cuda.py's job.

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool racecheck python3 tools/sanitize_eagle3.py
"""

import math

import torch

import flashflex
from flashflex import _C, masks
from flashflex._eagle3_ops import _Workspace
from flashflex._tensor_ref import stream_of, tensor_ref


def run_case(dtype, head_dim, step, deterministic) -> None:
    batch, hq, hkv, seq_len = 2, 5, 1, 201
    # Built on the CPU and moved: the device then runs nothing but copies and flashflex.
    def tensor(heads):
        return (torch.randn(batch, heads, seq_len, head_dim) * 1.5).to(dtype).cuda()
    q, dout = tensor(hq), tensor(hq)
    k_blocks = [tensor(hkv) for _ in range(step + 1)]
    v_blocks = [tensor(hkv) for _ in range(step + 1)]
    lengths = torch.tensor([seq_len, 2], dtype=torch.int32).cuda()  # sample 1: no valid row
    out = torch.empty_like(q)
    lse = torch.empty(batch, hq, seq_len).cuda()
    scale = 1.0 / math.sqrt(head_dim)
    refs = (tensor_ref(q), [tensor_ref(k) for k in k_blocks], [tensor_ref(v) for v in v_blocks], tensor_ref(lengths))
    # No cached causal mask (None): each call builds its own in the workspace, so the build runs too.
    _C.eagle3_forward(*refs, tensor_ref(out), tensor_ref(lse), scale, _C.BACKENDS["AUTO"], None, _Workspace(q.device),
                      stream_of(q))
    dq = torch.empty_like(q)
    dks = [torch.empty_like(k) for k in k_blocks]
    dvs = [torch.empty_like(v) for v in v_blocks]
    _C.eagle3_backward(*refs, tensor_ref(out), tensor_ref(dout), tensor_ref(lse), None, tensor_ref(dq),
                       [tensor_ref(t) for t in dks], [tensor_ref(t) for t in dvs], scale, deterministic,
                       _C.BACKENDS["AUTO"], None, _Workspace(q.device), stream_of(q))
    torch.cuda.synchronize()
    for name, t in [("out", out), ("dq", dq)] + [(f"dk{j}", t) for j, t in enumerate(dks)]:
        assert torch.isfinite(t.cpu().float()).all(), (name, dtype, head_dim, step)


def build_masks() -> int:
    q_len, kv_len = 333, 461
    doc = torch.repeat_interleave(torch.arange(5), torch.tensor([70, 1, 130, 90, 170]))[None, :]
    cases = [
        (masks.causal(kv_len - q_len), None, q_len, kv_len),
        (masks.sliding_window(40, 90), None, q_len, kv_len),
        (masks.document(doc[:, :q_len], doc), 1, q_len, kv_len),
        (masks.prefix_lm([100, 7]), 2, q_len, kv_len),
        (masks.padding([300, 0], [129, 461]), 2, q_len, kv_len),
        (masks.eagle3(4, 333, [333, 200]), 2, 333, 5 * 333),
        (masks.causal() & masks.padding([250, 333]) | masks.sliding_window(3, 3), 2, q_len, q_len),
    ]
    for mask, batch, ql, kl in cases:
        built = flashflex.create_block_mask(mask, batch, None, ql, kl, device="cuda")
        torch.cuda.synchronize()
        assert built.kv_num_blocks.min().item() >= 0, mask
    return len(cases)


def main() -> None:
    torch.manual_seed(0)
    calls = 0
    for dtype in (torch.bfloat16, torch.float16):
        for head_dim in (64, 128, 256):
            run_case(dtype, head_dim, 6, deterministic=False)
            calls += 1
    run_case(torch.bfloat16, 128, 3, deterministic=True)
    run_case(torch.bfloat16, 64, 0, deterministic=False)
    calls += 2
    builds = build_masks()
    print(f"sanitize_eagle3: {calls} forward + backward calls, {builds} device mask builds ran")


if __name__ == "__main__":
    main()
