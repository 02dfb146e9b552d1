"""Train a tiny EAGLE3 draft attention layer with test-time training (TTT) through
flashflex.eagle3_module.Eagle3Attention, and the same model through a reference whose attention
is the customers' torch formulation, from the same initial weights; compare losses and gradients.

The draft is the attention part of an EAGLE3 midlayer: at TTT step s the input is
cat(embed(input_ids shifted by s), hidden_s) [B, T, 2H], hidden_{s+1} = hidden_s + attn(...)
(the step's output is the next step's hidden states, as the SpecForge / TorchSpec trainers do),
RoPE positions are position_ids + s (the module adds the step), logits = lm_head(hidden_{s+1}),
loss_s = cross-entropy on the rows still valid at step s (position < L_b - s), total loss
sum_s 0.8^s loss_s.

Reference: ReferenceEagle3Attention, the same module with its attention replaced by the
upstream formulation: K/V of all steps concatenated to [B, Hkv, (s + 1) T, D] with the
customers' generate_eagle3_mask (lengths reduced by the step).
  --device cpu (default): both in float32 / float64; torch's flex_attention has no CPU backward,
    so the reference evaluates the mask densely and runs scaled_dot_product_attention in float64.
  --device cuda: both in bfloat16 on the GPU (flashflex's CUDA kernels), the reference through
    torch's flex_attention (a BlockMask of the customers' mask_mod per step; eager, or compiled
    with Triton or FlashAttention-4 kernels: --reference-kernel): the torch-flex path of the
    trainers. Agreement is then to bf16 tolerance.
Exits 1 if the gradients differ beyond --tol (max over parameters of max|g - g_ref| / max|g_ref|).

    python examples/python/eagle3_ttt_train.py [--device cuda] [--steps 4] [--ttt-length 7]
        [--reference-kernel eager|triton|flash]
Prints the time of the first optimizer step (compilation included) and the median of the later
ones, for flashflex and the reference.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from flashflex.eagle3_module import Eagle3Attention, Eagle3Config


def generate_eagle3_mask(seq_lengths: torch.Tensor, q_len: int):
    """The customers' mask_mod over [K_0 | K_1 | ... | K_k]; seq_lengths already reduced by the
    step k. Written with tensor ops only, so it also evaluates densely on broadcast index grids."""
    def causal_mask(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (kv_idx < seq_lengths[b]) & (q_idx < seq_lengths[b])

    def suffix_mask(b, h, q_idx, kv_idx):
        return (kv_idx >= q_len) & (kv_idx % q_len < seq_lengths[b]) & ((kv_idx - q_idx) % q_len == 0)

    def mask_mod(b, h, q_idx, kv_idx):
        return causal_mask(b, h, q_idx, kv_idx) | suffix_mask(b, h, q_idx, kv_idx)
    return mask_mod


class ReferenceEagle3Attention(Eagle3Attention):
    """Eagle3Attention with the upstream attention: concatenated K/V and the customers' mask,
    evaluated densely and run through SDPA (any dtype, float64 for a reference) on the CPU, through
    torch's flex_attention on the GPU (`kernel`: see flex_attend)."""

    kernel = "eager"

    def attend(self, q, cache_keys, cache_values, seq_lengths):
        bsz, _, q_len, _ = q.shape
        step = len(cache_keys) - 1
        key = torch.cat(cache_keys, dim=2)  # [B, Hkv, (step + 1) T, D]
        value = torch.cat(cache_values, dim=2)
        if seq_lengths is None:
            lengths = torch.full((bsz,), q_len, dtype=torch.int64, device=q.device)
        else:
            lengths = torch.as_tensor(seq_lengths, dtype=torch.int64, device=q.device)
        lengths = lengths - step
        mask_mod = generate_eagle3_mask(lengths, q_len)
        if q.is_cuda:
            return flex_attend(q, key, value, mask_mod, self.kernel)
        b = torch.arange(bsz, device=q.device)[:, None, None]
        q_idx = torch.arange(q_len, device=q.device)[None, :, None]
        kv_idx = torch.arange(key.shape[2], device=q.device)[None, None, :]
        mask = mask_mod(b, None, q_idx, kv_idx)  # [B, T, (step + 1) T]
        valid = q_idx < lengths[:, None, None]  # [B, T, 1]: rows that see something
        # Rows that see nothing would give NaN in SDPA: let them see everything, then zero them
        # (as flex_attention returns 0 there), which also zeroes their gradients.
        mask = (mask | ~valid)[:, None]
        out = F.scaled_dot_product_attention(q, key, value, attn_mask=mask,
                                             enable_gqa=q.shape[1] != key.shape[1])
        return torch.where(valid[:, None], out, torch.zeros_like(out))


_COMPILED_FLEX = []  # torch.compile(flex_attention), made on first use


def flex_attend(q, key, value, mask_mod, kernel: str = "eager"):
    """The trainers' formulation on the GPU: torch's flex_attention with a BlockMask of their
    mask_mod, built every step. kernel: "eager" (torch's own flex semantics, scores materialised:
    small sizes only), "triton" (torch.compile'd, as the trainers run it) or "flash" (compiled with
    kernel_options={"BACKEND": "FLASH"}: FlashAttention-4's kernels, which must be installed)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    bsz, _, q_len, _ = q.shape
    block_mask = create_block_mask(mask_mod, bsz, None, q_len, key.shape[2], device=q.device)
    gqa = q.shape[1] != key.shape[1]
    if kernel == "eager":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()"
            return flex_attention(q, key, value, block_mask=block_mask, enable_gqa=gqa)
    if not _COMPILED_FLEX:
        _COMPILED_FLEX.append(torch.compile(flex_attention, dynamic=False))
    options = {"BACKEND": "FLASH"} if kernel == "flash" else None
    return _COMPILED_FLEX[0](q, key, value, block_mask=block_mask, enable_gqa=gqa, kernel_options=options)


class TinyDraft(nn.Module):
    """Embedding, one EAGLE3 attention layer (with residual) and an LM head."""

    def __init__(self, attn_cls, vocab: int, hidden: int, heads: int, kv_heads: int, head_dim: int):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, hidden)
        config = Eagle3Config(hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv_heads,
                              head_dim=head_dim, max_position_embeddings=4096)
        self.self_attn = attn_cls(config)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)

    def forward(self, input_ids, hidden, targets, seq_lengths: torch.Tensor, ttt_length: int) -> List[torch.Tensor]:
        """Per-step losses of one TTT unroll (the caches live only for this batch)."""
        bsz, seq_len = input_ids.shape
        position_ids = torch.arange(seq_len, device=input_ids.device)[None, :].expand(bsz, seq_len)
        cache_hidden: list = [[], []]  # [keys, values] of the earlier steps (SpecForge's convention)
        losses = []
        for step in range(ttt_length):
            x = torch.cat([self.embed_tokens(input_ids), hidden], dim=-1)
            hidden = hidden + self.self_attn(x, cache_hidden, position_ids=position_ids, seq_lengths=seq_lengths)
            logits = self.lm_head(hidden).float()
            valid = torch.arange(seq_len, device=input_ids.device)[None, :] < (seq_lengths - step)[:, None]
            loss = F.cross_entropy(logits[valid], targets[valid]) if valid.any() else logits.sum() * 0
            losses.append(loss)
            # Next step: the tokens one further ahead (trainers' padding(input_ids, left=False)).
            input_ids = F.pad(input_ids[:, 1:], (0, 1))
            targets = F.pad(targets[:, 1:], (0, 1))
        return losses


def max_rel_grad_diff(model: nn.Module, ref: nn.Module) -> float:
    worst = 0.0
    for (name, p), (_, r) in zip(model.named_parameters(), ref.named_parameters()):
        g, gr = p.grad.double(), r.grad.double()
        scale = gr.abs().max().item()
        diff = (g - gr).abs().max().item() / (scale if scale > 0 else 1.0)
        worst = max(worst, diff if diff == diff else float("inf"))  # NaN counts as disagreement
    return worst


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps")
    parser.add_argument("--ttt-length", type=int, default=7)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.3)
    parser.add_argument("--tol", type=float, default=None,
                        help="default 1e-4 on the CPU (float32 vs float64), 5e-2 on CUDA (bf16 vs bf16)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference-kernel", default="eager", choices=["eager", "triton", "flash"],
                        help="the CUDA reference's flex_attention: eager (small sizes), compiled Triton, or "
                             "compiled with BACKEND=FLASH (FlashAttention-4 installed)")
    args = parser.parse_args(argv)
    ReferenceEagle3Attention.kernel = args.reference_kernel

    torch.manual_seed(args.seed)
    model = TinyDraft(Eagle3Attention, args.vocab, args.hidden, args.heads, args.kv_heads, args.head_dim)
    ref = TinyDraft(ReferenceEagle3Attention, args.vocab, args.hidden, args.heads, args.kv_heads, args.head_dim)
    ref.load_state_dict(copy.deepcopy(model.state_dict()))
    cuda = args.device == "cuda"
    if args.tol is None:
        args.tol = 5e-2 if cuda else 1e-4
    # CUDA: both in bf16 (the kernels' dtype); CPU: flashflex float32 against a float64 reference.
    model.to(args.device, torch.bfloat16 if cuda else torch.float32)
    ref.to(args.device, torch.bfloat16 if cuda else torch.float64)
    # Plain SGD: both runs stay on the same trajectory up to rounding (Adam's normalisation would
    # amplify float32-vs-float64 rounding of near-zero gradient entries into weight drift).
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=args.lr)

    b, t = args.batch, args.seq_len
    # Unequal lengths: sample 0 full, the others shorter (the last rows of each step are invalid).
    seq_lengths = torch.tensor([t] + [max(1, t - 23 * i) for i in range(1, b)], dtype=torch.int64,
                               device=args.device)
    history = []
    worst = 0.0
    times = {"flashflex": [], "reference": []}  # seconds per optimizer step (the first compiles)
    # One random batch, revisited every optimizer step (so the loss visibly goes down).
    input_ids = torch.randint(args.vocab, (b, t)).to(args.device)
    targets = torch.randint(args.vocab, (b, t)).to(args.device)
    hidden = torch.randn(b, t, args.hidden).to(args.device)  # the target model's fused hidden states
    for it in range(args.steps):
        row = {}
        model_dtype = next(model.parameters()).dtype
        ref_dtype = next(ref.parameters()).dtype
        for name, m, o, h in (("flashflex", model, opt, hidden.to(model_dtype)),
                              ("reference", ref, ref_opt, hidden.to(ref_dtype))):
            start = time.perf_counter()
            o.zero_grad(set_to_none=True)
            losses = m(input_ids, h, targets, seq_lengths, args.ttt_length)
            total = sum(0.8 ** s * loss for s, loss in enumerate(losses))
            total.backward()
            if cuda:
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
            row[name] = [loss.item() for loss in losses]
        diff = max_rel_grad_diff(model, ref)
        worst = max(worst, diff)
        for o in (opt, ref_opt):
            o.step()
        history.append({"flashflex": row["flashflex"], "reference": row["reference"], "grad_rel_diff": diff})
        print(f"step {it}: loss flashflex {sum(0.8 ** s * v for s, v in enumerate(row['flashflex'])):.6f} "
              f"reference {sum(0.8 ** s * v for s, v in enumerate(row['reference'])):.6f}  "
              f"max rel grad diff {diff:.2e}")
        print("  per TTT step flashflex: " + " ".join(f"{v:.4f}" for v in row["flashflex"]))
        print("  per TTT step reference: " + " ".join(f"{v:.4f}" for v in row["reference"]))
    finite = all(v == v and abs(v) != float("inf") for h in history for v in h["flashflex"] + h["reference"])
    ok = worst <= args.tol and finite
    later = {name: sorted(ts[1:])[len(ts[1:]) // 2] if len(ts) > 1 else None for name, ts in times.items()}
    reference = f"reference ({ref_dtype}{', flex ' + args.reference_kernel if cuda else ''})"
    print(f"time of the first step (compilation included): flashflex {times['flashflex'][0]:.3f} s, "
          f"{reference} {times['reference'][0]:.3f} s")
    if later["flashflex"] is not None:
        print(f"time per later step (median; forward and backward of the whole model): flashflex "
              f"{later['flashflex'] * 1e3:.1f} ms, {reference} {later['reference'] * 1e3:.1f} ms")
    print(f"{'AGREE' if ok else 'DISAGREE'}: max relative gradient difference {worst:.2e} (tolerance {args.tol:.0e})")
    return {"ok": ok, "max_rel_grad_diff": worst, "history": history}


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
