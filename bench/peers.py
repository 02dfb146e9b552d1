"""The attention implementations bench/run.py and bench/run_backward.py compare, each built for
one case (bench/cases.py) over the same inputs. An implementation that is not installed, not
built, or cannot express the case raises Unavailable with the reason; the table prints it.

Each builder returns a Runner: `fwd()` computes the output from the runner's own leaf tensors
(so one implementation's gradients never meet another's), `dout` the output gradient in the
runner's layout, `to_bhtd` the output back in [B, H, T, D] for the cross-checks.
"""

from __future__ import annotations

import typing
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F


class Unavailable(Exception):
    """This implementation cannot run this case here (the message says why)."""


@dataclass
class Inputs:
    """The case's tensors in [B, H, T, D]; every runner copies what it needs from them."""
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    dout: torch.Tensor

    @staticmethod
    def make(case, device, seed: int = 0) -> "Inputs":
        gen = torch.Generator(device=device).manual_seed(seed)
        shape_q = (case.batch, case.q_heads, case.seq_len, case.head_dim)
        shape_kv = (case.batch, case.kv_heads, case.seq_len, case.head_dim)

        def randn(shape):
            return torch.randn(shape, generator=gen, device=device).to(case.dtype)
        return Inputs(randn(shape_q), randn(shape_kv), randn(shape_kv), randn(shape_q))


@dataclass
class Runner:
    fwd: Callable[[], torch.Tensor]
    leaves: Tuple[torch.Tensor, ...]
    dout: torch.Tensor
    to_bhtd: Callable[[torch.Tensor], torch.Tensor] = lambda out: out
    note: str = ""

    def bwd(self, out: torch.Tensor) -> Callable[[], tuple]:
        """The backward of one forward's graph, repeatable (the graph is kept)."""
        return lambda: torch.autograd.grad(out, self.leaves, self.dout, retain_graph=True)


def _leaves(*tensors, grad: bool) -> Tuple[torch.Tensor, ...]:
    return tuple(t.detach().clone().requires_grad_(grad) for t in tensors)


def _needs_cuda(device) -> None:
    if torch.device(device).type != "cuda":
        raise Unavailable("needs CUDA")


def _first(result):
    """FA4 returns (out, lse); the others out."""
    return result[0] if isinstance(result, tuple) else result


# ---------------------------------------------------------------------------------------------
# flashflex

def flashflex_runner(case, inp: Inputs, device, grad: bool, kernel_options: Optional[dict] = None) -> Runner:
    """flashflex.flex_attention with its own BlockMask (built here, not timed). kernel_options it
    does not know are refused here, not ignored with a warning: a row must run what it names."""
    import flashflex
    mask = case.mask.flashflex(case.seq_len)
    t = case.seq_len
    block_mask = None if mask is None else flashflex.create_block_mask(mask, None, None, t, t, device=device)
    q, k, v = _leaves(inp.q, inp.k, inp.v, grad=grad)

    def fwd():
        return flashflex.flex_attention(q, k, v, block_mask=block_mask, enable_gqa=True, kernel_options=kernel_options)
    if kernel_options:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="kernel_options")  # flashflex's "ignoring [...]"
            try:
                fwd()
            except Exception as error:  # noqa: BLE001 - an option this build does not have
                raise Unavailable(f"kernel_options {kernel_options} not accepted: "
                                  f"{type(error).__name__}: {str(error).splitlines()[0][:100]}") from None
    return Runner(fwd, (q, k, v), inp.dout)


# ---------------------------------------------------------------------------------------------
# FlashAttention-4 (flash_attn.cute): [B, T, H, D]

def fa4_runner(case, inp: Inputs, device, grad: bool) -> Runner:
    _needs_cuda(device)
    try:
        from flash_attn.cute import flash_attn_func, flash_attn_varlen_func
    except Exception as error:  # noqa: BLE001 - not installed (tools/device_check.sh says how)
        raise Unavailable(f"flash_attn.cute not importable ({type(error).__name__})") from None
    q, k, v = _leaves(*(x.transpose(1, 2).contiguous() for x in (inp.q, inp.k, inp.v)), grad=grad)
    dout = inp.dout.transpose(1, 2).contiguous()
    to_bhtd = partial(torch.transpose, dim0=1, dim1=2)
    if case.mask.kind == "document":
        if case.batch != 1:
            raise Unavailable("document mask through varlen needs B=1")
        t, d = case.seq_len, case.mask.doc_len
        cu = torch.arange(0, t + 1, d, dtype=torch.int32, device=device)
        if cu[-1].item() != t:
            cu = torch.cat([cu, torch.tensor([t], dtype=torch.int32, device=device)])

        def fwd():
            out = _first(flash_attn_varlen_func(q[0], k[0], v[0], cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=d,
                                                max_seqlen_k=d, causal=True))
            return out.unsqueeze(0)
        return Runner(fwd, (q, k, v), dout, to_bhtd, "varlen, one sequence per document")
    kwargs = case.mask.fa4_kwargs()
    if kwargs is None:
        raise Unavailable(f"no FA4 argument expresses {case.mask.label()}")
    return Runner(lambda: _first(flash_attn_func(q, k, v, **kwargs)), (q, k, v), dout, to_bhtd)


# ---------------------------------------------------------------------------------------------
# torch flex_attention, compiled with static shapes as its users run it

def _flex_backends() -> tuple:
    from torch.nn.attention import flex_attention as module
    backend = getattr(module, "_Backend", None)
    return typing.get_args(backend) if backend is not None else ()


def flex_runner(case, inp: Inputs, device, grad: bool, backend: str) -> Runner:
    """torch.compile(partial(flex_attention, kernel_options={"BACKEND": backend}), dynamic=False);
    on the CPU (dry run) flex_attention eager, forward only. The BlockMask is built here."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    cuda = torch.device(device).type == "cuda"
    if not cuda and grad:
        raise Unavailable("torch flex has no CPU backward")
    if not cuda and backend != "TRITON":
        raise Unavailable("needs CUDA")
    backends = _flex_backends()
    options = {"BACKEND": backend} if backend in backends else None
    if options is None and backend != "TRITON":
        raise Unavailable(f"torch {torch.__version__} has no flex BACKEND {backend!r} (has {list(backends)})")
    mod = case.mask.mask_mod()
    t = case.seq_len
    block_mask = None if mod is None else create_block_mask(mod, None, None, t, t, device=device)
    attention = flex_attention if options is None else partial(flex_attention, kernel_options=options)
    if cuda:
        attention = torch.compile(attention, dynamic=False)
    else:
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
    q, k, v = _leaves(inp.q, inp.k, inp.v, grad=grad)
    note = "" if cuda else "eager (CPU)"
    return Runner(lambda: attention(q, k, v, block_mask=block_mask, enable_gqa=True), (q, k, v), inp.dout, note=note)


# ---------------------------------------------------------------------------------------------
# SDPA backends

def sdpa_runner(case, inp: Inputs, device, grad: bool, backend_name: str) -> Runner:
    """F.scaled_dot_product_attention under sdpa_kernel(backend): GQA through enable_gqa, or K/V
    repeated to Hq heads beforehand (outside the timed region) where the backend refuses it, in
    the forward or (probed too) the backward."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    backend = getattr(SDPBackend, backend_name)
    if backend_name != "MATH":
        _needs_cuda(device)
    causal = case.mask.sdpa_is_causal()
    if causal is None:
        raise Unavailable(f"SDPA's is_causal cannot express {case.mask.label()}")

    def make(gqa: bool) -> Runner:
        group = 1 if gqa else case.q_heads // case.kv_heads
        q, k, v = _leaves(inp.q, inp.k.repeat_interleave(group, 1), inp.v.repeat_interleave(group, 1), grad=grad)

        def fwd():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
        runner = Runner(fwd, (q, k, v), inp.dout, note="enable_gqa" if gqa else "K/V repeated")
        out = fwd()  # the probe
        if grad:
            runner.bwd(out)()
        return runner

    try:
        return make(True)
    except Exception as error:  # noqa: BLE001 - a refusal of enable_gqa falls back to repeated K/V
        first = type(error).__name__
    try:
        runner = make(False)
        runner.note = f"K/V repeated (enable_gqa refused: {first})"
        return runner
    except Exception as error:  # noqa: BLE001
        raise Unavailable(f"{type(error).__name__}: {str(error).strip().splitlines()[0][:110]}") from None


# ---------------------------------------------------------------------------------------------
# The registry: name -> (what the row is, builder(case, inputs, device, grad) -> Runner)

@dataclass(frozen=True)
class Impl:
    name: str
    description: str
    build: Callable[..., Runner]
    backward_only: bool = False


IMPLS: Dict[str, Impl] = {i.name: i for i in [
    Impl("flashflex", "flashflex.flex_attention, default kernels (sm_90 on Hopper once built, else sm_80)",
         flashflex_runner),
    Impl("flashflex_sm80", 'flashflex with kernel_options={"BACKEND": "SM80"} (the sm_80 kernels forced)',
         partial(flashflex_runner, kernel_options={"BACKEND": "SM80"})),
    Impl("flashflex_det", 'flashflex with kernel_options={"deterministic": True}',
         partial(flashflex_runner, kernel_options={"deterministic": True}), backward_only=True),
    Impl("flashflex_sm80_det", 'flashflex, sm_80 kernels, deterministic',
         partial(flashflex_runner, kernel_options={"BACKEND": "SM80", "deterministic": True}), backward_only=True),
    Impl("fa4", "FlashAttention-4, flash_attn.cute.flash_attn_func ([B, T, H, D] copies of the inputs)", fa4_runner),
    Impl("flex_flash", 'torch flex_attention, kernel_options={"BACKEND": "FLASH"}, torch.compile(dynamic=False)',
         partial(flex_runner, backend="FLASH")),
    Impl("sdpa_cudnn", "SDPA, cuDNN backend", partial(sdpa_runner, backend_name="CUDNN_ATTENTION")),
    Impl("sdpa_fa2", "SDPA, FlashAttention-2 backend", partial(sdpa_runner, backend_name="FLASH_ATTENTION")),
    Impl("flex_triton", 'torch flex_attention, Triton ({"BACKEND": "TRITON"} where torch has it), '
         "torch.compile(dynamic=False)", partial(flex_runner, backend="TRITON")),
    Impl("sdpa_math", "SDPA, math backend (the dry run's reference peer)", partial(sdpa_runner, backend_name="MATH")),
]}
# Peers first, flashflex last: a fault in a new kernel then cannot take the peers' rows with it.
FORWARD_IMPLS = "fa4,flex_flash,sdpa_cudnn,sdpa_fa2,flex_triton,flashflex_sm80,flashflex"
BACKWARD_IMPLS = FORWARD_IMPLS + ",flashflex_sm80_det,flashflex_det"
DRY_RUN_IMPLS = "sdpa_math,fa4,flex_flash,flex_triton,flashflex_sm80,flashflex"
REFERENCE = "flashflex"  # the outputs and gradients of the others are compared with its
