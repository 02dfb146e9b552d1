"""Small CUDA forward cases for compute-sanitizer (memcheck, racecheck), run by
tools/device_check.sh: every head dim and dtype, ragged lengths, GQA, masks with partial, full
and empty tiles, every score mod (a linked one, on both kernel families on Hopper), lse, a grid with more tiles than SMs.
Asserts only that outputs are finite where rows see keys; correctness is
tests/python/test_cuda_forward.py's job.

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python3 tools/sanitize_fwd.py
"""

import torch

import flashflex
from flashflex import masks, score_mods


def main() -> None:
    torch.manual_seed(0)
    cases = 0
    for dtype in (torch.bfloat16, torch.float16):
        for head_dim in (64, 128, 256):
            q_len, kv_len, hq, hkv = 203, 141, 4, 2
            q = (torch.randn(2, hq, q_len, head_dim, device="cuda") * 1.5).to(dtype)
            k = (torch.randn(2, hkv, kv_len, head_dim, device="cuda") * 1.5).to(dtype)
            v = (torch.randn(2, hkv, kv_len, head_dim, device="cuda") * 1.5).to(dtype)
            block_masks = [
                None,
                flashflex.create_block_mask(masks.causal(kv_len - q_len - 70), None, None, q_len, kv_len,
                                            device="cuda"),
                flashflex.create_block_mask(masks.sliding_window(40, 90), 2, None, q_len, kv_len, device="cuda"),
            ]
            mods = [None, score_mods.softcap(4.0), score_mods.alibi(torch.rand(hq, device="cuda")),
                    score_mods.bias(torch.randn(1, hq, q_len, kv_len, device="cuda", dtype=dtype))]
            for i, block_mask in enumerate(block_masks):
                for mod in mods if i == 1 else mods[:1]:
                    out, lse = flashflex.flex_attention(q, k, v, score_mod=mod, block_mask=block_mask, enable_gqa=True,
                                                        return_lse=True)
                    torch.cuda.synchronize()
                    seen = torch.isfinite(lse)
                    assert torch.isfinite(out[seen]).all(), (dtype, head_dim, i, mod)
                    cases += 1
    # More tiles than SMs (144 > 132 on an H200): the hdim-128 kernel's CTAs take tiles from the
    # launch's counter (sm90/tile_scheduler_fwd.cuh); twice, so the second launch of a slot's
    # cycle starts from the counter the first reset.
    q = torch.randn(1, 16, 1100, 128, device="cuda", dtype=torch.bfloat16)
    kv = torch.randn(1, 4, 1100, 128, device="cuda", dtype=torch.bfloat16)
    ids = (torch.arange(1100, device="cuda") // 300).to(torch.int32)
    doc = flashflex.create_block_mask(masks.document(ids), None, None, 1100, 1100, device="cuda")
    for _ in range(2):
        out = flashflex.flex_attention(q, kv, kv, block_mask=doc, enable_gqa=True)
        torch.cuda.synchronize()
        assert torch.isfinite(out).all()
        cases += 1
    # [B, T, H, D] layout.
    q = torch.randn(1, 130, 4, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    kv = torch.randn(1, 77, 4, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    out = flashflex.flex_attention(q, kv, kv)
    torch.cuda.synchronize()
    assert torch.isfinite(out).all()
    cases += 1
    # A linked score mod (Hopper: the sm90 forward's linked kernel): ragged lengths, GQA, a mask
    # with partial and empty tiles, a captured tensor the hook reads.
    if torch.cuda.get_device_capability()[0] == 9:
        gate = torch.randn(4, device="cuda")
        mod = lambda s, b, h, q_idx, kv_idx: 30 * torch.tanh(s / 30) * torch.sigmoid(gate[h])  # noqa: E731
        causal = flashflex.create_block_mask(masks.causal(-70), None, None, 203, 141, device="cuda")
        for backend in ("AUTO", "SM80"):  # the sm90 family, then the sm80 one
            for head_dim in (64, 128, 256):
                q = torch.randn(2, 4, 203, head_dim, device="cuda", dtype=torch.bfloat16)
                kv = torch.randn(2, 2, 141, head_dim, device="cuda", dtype=torch.bfloat16)
                with torch.no_grad():
                    out, lse = flashflex.flex_attention(q, kv, kv, score_mod=mod, block_mask=causal, enable_gqa=True,
                                                        return_lse=True, kernel_options={"BACKEND": backend})
                torch.cuda.synchronize()
                assert torch.isfinite(out[torch.isfinite(lse)]).all(), ("linked", backend, head_dim)
                cases += 1
    print(f"sanitize_fwd: {cases} forward calls ran")


if __name__ == "__main__":
    main()
