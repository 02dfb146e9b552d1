"""Small CUDA backward cases for compute-sanitizer (memcheck, racecheck), run by
tools/device_check.sh: every head dim and dtype, ragged lengths, GQA, masks with partial, full
and empty tiles, every score mod (the bias with its gradient), a loss through lse, deterministic
mode, and on Hopper a linked score mod on both kernel families (the linked backward kernels, a
learnable table's gathered gradient added atomically). Asserts only that gradients are finite; correctness is tests/python/test_cuda_backward.py's
job.

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool racecheck python3 tools/sanitize_bwd.py
"""

import torch

import flashflex
from flashflex import masks, score_mods


def run_case(q, k, v, block_mask, mod, deterministic, backend="AUTO") -> None:
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out, lse = flashflex.flex_attention(q, k, v, score_mod=mod, block_mask=block_mask, enable_gqa=True,
                                        return_lse=True,
                                        kernel_options={"deterministic": deterministic, "BACKEND": backend})
    finite_lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    (out.float().square().sum() + finite_lse.sum()).backward()
    torch.cuda.synchronize()
    for name, t in (("dq", q), ("dk", k), ("dv", v)):
        assert torch.isfinite(t.grad).all(), (name, q.dtype, q.shape[-1], deterministic)
    if mod is not None and getattr(mod, "name", None) == "bias" and mod.tensor.requires_grad:
        assert torch.isfinite(mod.tensor.grad).all()


def main() -> None:
    torch.manual_seed(0)
    calls = 0
    for dtype in (torch.bfloat16, torch.float16):
        for head_dim in (64, 128, 256):
            q_len, kv_len, hq, hkv = 203, 141, 4, 2
            # Built on the CPU and moved: the device then runs nothing but copies and flashflex.
            q = (torch.randn(2, hq, q_len, head_dim) * 1.5).to(dtype).cuda()
            k = (torch.randn(2, hkv, kv_len, head_dim) * 1.5).to(dtype).cuda()
            v = (torch.randn(2, hkv, kv_len, head_dim) * 1.5).to(dtype).cuda()
            causal = flashflex.create_block_mask(masks.causal(kv_len - q_len - 70), None, None, q_len, kv_len,
                                                 device="cuda")
            window = flashflex.create_block_mask(masks.sliding_window(40, 90), 2, None, q_len, kv_len, device="cuda")
            bias = (torch.randn(1, hq, q_len, kv_len) * 0.5).to(dtype).cuda().requires_grad_()
            mods = [None, score_mods.softcap(4.0), score_mods.alibi(torch.rand(hq).cuda()), score_mods.bias(bias)]
            run_case(q, k, v, None, None, False)
            run_case(q, k, v, window, None, True)
            for mod in mods:
                run_case(q, k, v, causal, mod, False)
            calls += 2 + len(mods)
    if torch.cuda.get_device_capability()[0] == 9:
        calls += linked_cases()
    print(f"sanitize_bwd: {calls} backward calls ran")


def linked_cases() -> int:
    """The linked backward, sm90 and sm80 kernels: a per-head learnable table (GatherGradRuns' atomics), ragged
    lengths, GQA, a mask with partial and empty tiles; deterministic mode with a mod whose
    captured tensor needs no gradient."""
    table = torch.randn(4, 33, device="cuda").requires_grad_()
    gate = torch.randn(4, device="cuda")
    learnable = lambda s, b, h, q, kv: s + torch.tanh(table[h, torch.clamp(q - kv, -16, 16) + 16])  # noqa: E731
    gated = lambda s, b, h, q, kv: 30 * torch.tanh(s / 30) * torch.sigmoid(gate[h])  # noqa: E731
    causal = flashflex.create_block_mask(masks.causal(-70), None, None, 203, 141, device="cuda")
    calls = 0
    for backend, head_dims in (("AUTO", (64, 128)), ("SM80", (64, 128, 256))):  # the sm90 family, the sm80 one
        for head_dim in head_dims:
            q = (torch.randn(2, 4, 203, head_dim) * 1.5).to(torch.bfloat16).cuda()
            k = (torch.randn(2, 2, 141, head_dim) * 1.5).to(torch.bfloat16).cuda()
            v = (torch.randn(2, 2, 141, head_dim) * 1.5).to(torch.bfloat16).cuda()
            table.grad = None
            run_case(q, k, v, causal, learnable, False, backend)
            assert table.grad is not None and torch.isfinite(table.grad).all(), ("linked table grad", backend, head_dim)
            run_case(q, k, v, causal, gated, True, backend)
            calls += 2
    return calls


if __name__ == "__main__":
    main()
