"""A TorchSpec-style EAGLE3 draft attention layer over a 7-step TTT unroll, three ways:
  * torch flex: the pattern of TorchSpec's LlamaFlexAttention (torchspec/models/draft/
    llama3_eagle.py; this file's own copy of it): q/k/v/o projections, RoPE, K/V caches grown by
    torch.cat, a new torch BlockMask of generate_eagle3_mask every step (create_block_mask,
    B=bsz, H=1, eager, as TorchSpec builds it), torch.compile(flex_attention) (Triton);
  * flashflex drop-in: the same layer with only the import swapped to flashflex.flex_attention
    (the torch BlockMask is converted inside the compiled call);
  * Eagle3Attention: flashflex.eagle3_module.Eagle3Attention, the structured path (K/V lists,
    no mask, no concatenation), same weights.
Per implementation (each in its own process, so compile state never leaks): the forward and the
backward phase of the unroll (CUDA events, median of --iters after --warmup), the first unroll
of a fresh process (forward and backward, compilation included) and the graphs it compiled,
peak memory of one unroll, and, in one extra process, errors against a float32 reference (the
torch flex layer in float32): max |out - ref| / max |ref| over the steps' outputs, and the same
over the four projection weights' gradients. A second table gives the conversion cost of the
drop-in per call (BlockMask.from_torch compiled alone) against the whole compiled
flashflex.flex_attention call, per step, at each --conversion-seq-lens.

    python bench/torchspec_layer.py [--seq-len 8192] [--iters 10] [--warmup 2] [--dynamic default|static]
                                    [--conversion-seq-lens 8192,16384] [--parts timing,errors,conversion]
                                    [--out FILE.md]

Default output on a GPU: bench/results/<gpu>_torchspec_layer.md (<gpu> from the device name).
Without a GPU, --device cpu runs a tiny smoke test (float32 weights, aot_eager, no table file)."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import cuda_time_ms, write_table  # noqa: E402

IMPLS = {"torch_flex": "torch flex (Triton), compiled", "flashflex_dropin": "flashflex.flex_attention (import swapped)",
         "eagle3_module": "flashflex Eagle3Attention (structured)"}


def generate_eagle3_mask(seq_lengths: torch.Tensor, q_len: int):
    """TorchSpec's mask_mod over [K_0 | ... | K_k], seq_lengths already reduced by the step."""
    def mask_mod(b, h, q_idx, kv_idx):
        causal = (q_idx >= kv_idx) & (kv_idx < seq_lengths[b]) & (q_idx < seq_lengths[b])
        suffix = (kv_idx >= q_len) & (kv_idx % q_len < seq_lengths[b]) & ((kv_idx - q_idx) % q_len == 0)
        return causal | suffix
    return mask_mod


class TorchSpecLayer(nn.Module):
    """TorchSpec's LlamaFlexAttention pattern with `flex` as its flex_attention."""

    def __init__(self, config, flex):
        super().__init__()
        from flashflex.rope import RotaryEmbedding
        h, d = config.hidden_size, config.head_dim
        self.heads, self.kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, d
        self.q_proj = nn.Linear(2 * h, self.heads * d, bias=False)
        self.k_proj = nn.Linear(2 * h, self.kv_heads * d, bias=False)
        self.v_proj = nn.Linear(2 * h, self.kv_heads * d, bias=False)
        self.o_proj = nn.Linear(self.heads * d, h, bias=False)
        self.rotary = RotaryEmbedding(d, config)  # float32 tables: the same RoPE numerics for every path
        self.flex = flex

    def forward(self, hidden_states, cache_keys=None, cache_values=None, attention_mask=None, position_ids=None,
                use_cache=True):
        from flashflex.rope import apply_rotary_pos_emb
        from torch.nn.attention.flex_attention import create_block_mask
        bsz, q_len, _ = hidden_states.shape
        lck = 0 if cache_keys is None else cache_keys.shape[2] // q_len
        q = self.q_proj(hidden_states).view(bsz, q_len, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden_states).view(bsz, q_len, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(bsz, q_len, self.kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = self.rotary((position_ids + lck).expand(bsz, q_len), q_len + lck)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        key_cache = k if cache_keys is None else torch.cat([cache_keys, k], dim=2)
        value_cache = v if cache_values is None else torch.cat([cache_values, v], dim=2)
        seq_lengths = attention_mask.sum(dim=-1) - lck
        block_mask = create_block_mask(generate_eagle3_mask(seq_lengths, q_len), bsz, 1, q_len, key_cache.shape[2],
                                       device=hidden_states.device)
        out = self.flex(q, key_cache.contiguous(), value_cache.contiguous(), block_mask=block_mask, enable_gqa=True)
        out = self.o_proj(out.transpose(1, 2).reshape(bsz, q_len, self.heads * self.head_dim))
        return out, key_cache, value_cache


def problem(args):
    if args.device == "cpu":  # smoke test sizes
        return SimpleNamespace(batch=1, seq_len=256, hidden_size=128, num_attention_heads=4, num_key_value_heads=2,
                               head_dim=64, max_position_embeddings=4096, rope_theta=500000.0, rope_scaling=None)
    return SimpleNamespace(batch=1, seq_len=args.seq_len, hidden_size=4096, num_attention_heads=32,
                           num_key_value_heads=8, head_dim=128, max_position_embeddings=131072, rope_theta=500000.0,
                           rope_scaling=None)


def make_layer(impl, config, args, dtype):
    """The layer with the seeded weights (created in float32 on the CPU, then cast)."""
    import flashflex
    from flashflex.eagle3_module import Eagle3Attention
    from torch.nn.attention.flex_attention import flex_attention
    torch.manual_seed(args.seed)
    weights = TorchSpecLayer(config, None).state_dict()
    compile_kwargs = {"dynamic": False} if args.dynamic == "static" else {}
    if args.device == "cpu":
        compile_kwargs["backend"] = "aot_eager"
    if impl == "eagle3_module":
        layer = Eagle3Attention(config)
    else:
        flex = flashflex.flex_attention if impl == "flashflex_dropin" else flex_attention
        layer = TorchSpecLayer(config, torch.compile(flex, **compile_kwargs))
    layer.load_state_dict(weights)
    return layer.to(args.device, dtype)


def make_inputs(config, args, dtype):
    g = torch.Generator().manual_seed(args.seed + 1)
    b, t, h = config.batch, config.seq_len, config.hidden_size

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(args.device, dtype)
    return SimpleNamespace(embeds=[rnd(b, t, h) for _ in range(args.steps)], hidden=rnd(b, t, h),
                           douts=[rnd(b, t, h) for _ in range(args.steps)],
                           mask=torch.ones(b, t, dtype=torch.int64, device=args.device),
                           positions=torch.arange(t, device=args.device)[None, :])


def unroll(layer, inp, steps):
    if inp.mask.device.type == "cpu":  # torch's flex_attention refuses autograd on the CPU: forward only
        with torch.no_grad():
            return _unroll(layer, inp, steps)
    return _unroll(layer, inp, steps)


def _unroll(layer, inp, steps):
    hidden, keys, values, outs = inp.hidden, None, None, []
    for s in range(steps):
        x = torch.cat([inp.embeds[s], hidden], dim=-1)
        out, keys, values = layer(hidden_states=x, cache_keys=keys, cache_values=values, attention_mask=inp.mask,
                                  position_ids=inp.positions, use_cache=True)
        outs.append(out)
        hidden = hidden + out
    return outs


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def compiled_graphs():
    from torch._dynamo.utils import counters
    return int(counters["stats"]["unique_graphs"])


# ---- workers (one process each) ---------------------------------------------------------------

def work_timing(impl, args):
    config = problem(args)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    layer = make_layer(impl, config, args, dtype)
    inp = make_inputs(config, args, dtype)
    start = time.perf_counter()
    outs = unroll(layer, inp, args.steps)
    if args.device == "cuda":  # the CPU smoke test runs forward only (unroll)
        torch.autograd.backward(outs, inp.douts)
    sync(args.device)
    result = {"first_unroll_s": time.perf_counter() - start, "graphs": compiled_graphs()}
    if args.device != "cuda":
        return result
    fwd, bwd = [], []
    for i in range(args.warmup + args.iters):
        layer.zero_grad(set_to_none=True)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        events = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
        events[0].record()
        outs = unroll(layer, inp, args.steps)
        events[1].record()
        torch.autograd.backward(outs, inp.douts)
        events[2].record()
        events[2].synchronize()
        del outs
        if i >= args.warmup:
            fwd.append(events[0].elapsed_time(events[1]))
            bwd.append(events[1].elapsed_time(events[2]))
            result["peak_gb"] = (torch.cuda.max_memory_allocated() - base) / 2**30
    result.update(forward_ms=sorted(fwd)[len(fwd) // 2], backward_ms=sorted(bwd)[len(bwd) // 2],
                  graphs_after=compiled_graphs())
    return result


def work_errors(args):
    """Each bf16 implementation against the float32 torch flex layer, same weights and inputs."""
    config = problem(args)
    low = torch.bfloat16 if args.device == "cuda" else torch.float32

    def run(impl, dtype):
        layer = make_layer(impl, config, args, dtype)
        inp = make_inputs(config, args, dtype)
        outs = unroll(layer, inp, args.steps)
        if args.device != "cuda":  # smoke test: forward only (unroll)
            return [o.detach().float() for o in outs], {}
        torch.autograd.backward(outs, inp.douts)
        return [o.detach().float() for o in outs], {n: p.grad.float() for n, p in layer.named_parameters()}

    def rel(got, want):
        return ((got - want).abs().max() / want.abs().max()).item()

    ref_outs, ref_grads = run("torch_flex", torch.float32)
    result = {}
    for impl in IMPLS:
        outs, grads = run(impl, low)
        result[impl] = {"out_err": max(rel(o, r) for o, r in zip(outs, ref_outs)),
                        "grad_err": max((rel(grads[n], ref_grads[n]) for n in ref_grads), default=None)}
        del outs, grads
    return result


def work_conversion(args):
    """Per step: BlockMask.from_torch compiled alone, and the whole compiled flashflex call."""
    import flashflex
    from torch.nn.attention.flex_attention import create_block_mask
    config = problem(args)
    b, hq, hkv, d = config.batch, config.num_attention_heads, config.num_key_value_heads, config.head_dim
    backend = {"backend": "aot_eager"} if args.device == "cpu" else {}
    convert = torch.compile(lambda m: flashflex.BlockMask.from_torch(m, batch=b, heads=hq)._tensors(),
                            dynamic=False, **backend)
    attend = torch.compile(flashflex.flex_attention, dynamic=False, **backend)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    rows = []
    for t in ([256] if args.device == "cpu" else [int(x) for x in args.conversion_seq_lens.split(",")]):
        q = torch.randn(b, hq, t, d, device=args.device, dtype=dtype)
        for step in range(args.steps):
            kv = (step + 1) * t
            k, v = (torch.randn(b, hkv, kv, d, device=args.device, dtype=dtype) for _ in range(2))
            lengths = torch.full((b,), t - step, device=args.device)
            mask = create_block_mask(generate_eagle3_mask(lengths, t), b, 1, t, kv, device=args.device)
            if args.device != "cuda":
                convert(mask), attend(q, k, v, block_mask=mask, enable_gqa=True)
                continue
            conv_ms = cuda_time_ms(lambda: convert(mask), iters=args.iters, warmup=2)[0]
            call_ms = cuda_time_ms(lambda: attend(q, k, v, block_mask=mask, enable_gqa=True), iters=args.iters,
                                   warmup=2)[0]
            rows.append({"seq_len": t, "step": step, "conversion_ms": conv_ms, "call_ms": call_ms})
    return rows


# ---- driver -------------------------------------------------------------------------------------

def spawn(worker, args):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", worker, "--result", path] + args.passthrough
    proc = subprocess.run(cmd)
    try:
        with open(path) as f:
            return json.load(f) if proc.returncode == 0 else {"error": f"exit {proc.returncode}"}
    except (OSError, ValueError):
        return {"error": f"exit {proc.returncode}, no result"}
    finally:
        os.unlink(path)


def fmt(x, spec=".1f"):
    return "n/a" if x is None else format(x, spec)


def table(args, timings, errors, conversion) -> str:
    config = problem(args)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (smoke test)"
    lines = [f"# TorchSpec-style attention layer, {name}", "",
             f"B={config.batch}, T={config.seq_len}, {config.num_attention_heads}/{config.num_key_value_heads} heads, "
             f"D={config.head_dim}, hidden {config.hidden_size}, {'bf16' if args.device == 'cuda' else 'fp32'}, {args.steps} TTT steps, projections and RoPE "
             f"included; a new torch BlockMask per step (eager create_block_mask, inside the forward phase) for the "
             f"two flex paths; torch.compile({'dynamic=False' if args.dynamic == 'static' else 'default dynamic'}); "
             f"torch {torch.__version__}; median of {args.iters} after {args.warmup} warm-up unrolls.", "",
             "| implementation | forward (ms) | backward (ms) | fwd / torch flex | bwd / torch flex | first unroll (s) "
             "| graphs compiled | peak memory (GB) | out err vs fp32 | grad err vs fp32 | grad err / torch flex's |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base, base_err = timings.get("torch_flex", {}), errors.get("torch_flex", {})
    for impl, label in IMPLS.items():
        t, e = timings.get(impl, {}), errors.get(impl, {})
        ratio = (lambda key, r=t: None if key not in r or key not in base else r[key] / base[key])
        err_ratio = None if "grad_err" not in e or not base_err.get("grad_err") else e["grad_err"] / base_err["grad_err"]
        label += f" ({t['error']})" if "error" in t else ""
        lines.append(f"| {label} | {fmt(t.get('forward_ms'))} | {fmt(t.get('backward_ms'))} | "
                     f"{fmt(ratio('forward_ms'), '.2f')} | {fmt(ratio('backward_ms'), '.2f')} | "
                     f"{fmt(t.get('first_unroll_s'))} | {t.get('graphs', 'n/a')} | {fmt(t.get('peak_gb'), '.2f')} | "
                     f"{fmt(e.get('out_err'), '.2e')} | {fmt(e.get('grad_err'), '.2e')} | {fmt(err_ratio, '.2f')} |")
    lines += ["", "Conversion of the torch BlockMask per flashflex.flex_attention call (compiled alone, dynamic=False) "
              "against the whole compiled call (forward, conversion included):", "",
              "| T | step | KV | conversion (ms) | call (ms) | conversion / call |", "|---:|---:|---:|---:|---:|---:|"]
    for r in conversion if isinstance(conversion, list) else []:
        lines.append(f"| {r['seq_len']} | {r['step']} | {(r['step'] + 1) * r['seq_len']} | {r['conversion_ms']:.3f} | "
                     f"{r['call_ms']:.3f} | {r['conversion_ms'] / r['call_ms']:.1%} |")
    lines += ["", "Command: `python bench/torchspec_layer.py " + " ".join(args.passthrough) + "`", ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dynamic", choices=["default", "static"], default="default")
    parser.add_argument("--conversion-seq-lens", default="8192,16384")
    parser.add_argument("--impls", default=",".join(IMPLS))
    parser.add_argument("--parts", default="timing,errors,conversion",
                        help="which measurements to run (each part in its own processes); a skipped one shows n/a")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = (work_errors(args) if args.worker == "errors" else
                  work_conversion(args) if args.worker == "conversion" else work_timing(args.worker, args))
        with open(args.result, "w") as f:
            json.dump(result, f)
        return 0
    args.passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    parts = args.parts.split(",")
    timings = {impl: spawn(impl, args) for impl in args.impls.split(",")} if "timing" in parts else {}
    errors = spawn("errors", args) if "errors" in parts else {}
    conversion = spawn("conversion", args) if "conversion" in parts else []
    out = args.out
    if out is None and args.device == "cuda":
        tag = re.sub(r"[^a-z0-9]+", "", torch.cuda.get_device_name().lower().replace("nvidia", "").split()[0])
        out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"{tag}_torchspec_layer.md")
    print(json.dumps({"timings": timings, "errors": errors, "conversion": conversion}, indent=1))
    text = table(args, timings, errors, conversion)
    if out:
        write_table(text, out, png=None, log=print)
    else:
        print(text)
    failed = [k for k, v in list(timings.items()) + [("errors", errors)] if isinstance(v, dict) and "error" in v]
    return 1 if failed or (isinstance(conversion, dict) and "error" in conversion) else 0


if __name__ == "__main__":
    sys.exit(main())
