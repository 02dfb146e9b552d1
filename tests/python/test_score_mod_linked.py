"""The kernels of linked score mods (src/cuda/linked/sm{80,90}_{fwd,bwd}.cu, installed as
flashflex/kernels/*.fatbin of LTO-IR), without a GPU: every shipped kernel links through
nvJitLink with generated hooks (_score_mod_link.py) into a cubin whose kernel spills nothing and
serialises no wgmma (ptxas's report in the link log, as tools/check_ptxas.sh checks the compiled
kernels): the sm90 family for sm_90a, the sm80 family for sm_80 (and, for one dtype and head
dim, for sm_86 and sm_90, the GPUs it also runs on); and what cannot be linked is refused with a
reason. The GPU runs are in test_score_mod_linked_cuda.py. Skipped where the build has no CUDA
kernels or NVRTC / nvJitLink are not installed."""

from __future__ import annotations

import os
import re

import pytest
import torch

from flashflex import _C
from flashflex import _score_mod_link as link
from flashflex._score_mod_codegen import MAX_GATHERS, generate
from flashflex._score_mod_graph import capture
from flashflex._score_mod_linked import SM80, SM90, SM90_BACKWARD_HEAD_DIMS, generated_or_reason, kernel_path

pytestmark = [
    pytest.mark.skipif(not _C.has_linked_kernels(SM80), reason="this build has no CUDA kernels"),
    pytest.mark.skipif(link.available() is not None, reason=str(link.available())),
]

GATE = torch.randn(4)
TABLE = torch.randn(2, 33, requires_grad=True)  # a learnable table: the backward's gather gradient
HOOKS = {
    "silu": lambda s, b, h, q, kv: s * torch.sigmoid(s),
    "gated_softcap": lambda s, b, h, q, kv: 30 * torch.tanh(s / 30) * torch.sigmoid(GATE[h]),
    "tanh_relative_table": lambda s, b, h, q, kv: s + torch.tanh(TABLE[b % 2, torch.clamp(q - kv, -16, 16) + 16]),
}
# Links, but spills 20 bytes in the head-dim-256 forward, whose registers are tightest
# (bench/NOTES.md); the user is warned.
WHERE_MINUS_INF = lambda s, b, h, q, kv: torch.where(q - kv <= 20, s, torch.full_like(s, float("-inf")))  # noqa: E731
# (family, pass, dtype, head dim): every head dim but the sm90 backward's missing 256
KERNELS = [(family, pass_, dtype, head_dim) for family in (SM80, SM90) for pass_ in (0, 1)
           for dtype in (torch.bfloat16, torch.float16)
           for head_dim in ((64, 128, 256) if family == SM80 or pass_ == 0 else SM90_BACKWARD_HEAD_DIMS)]
_FAMILIES = {SM80: "sm80", SM90: "sm90"}


def _link(family, pass_, dtype, head_dim, mod, arch=None):
    with open(kernel_path(dtype, head_dim, pass_, family), "rb") as f:
        image = f.read()
    arch = arch or ("sm_90a" if family == SM90 else "sm_80")
    hook = link.compile_ltoir(link._HOOK_PREFIX + generate(capture(mod)).source, arch, "hook.cu")
    info = []
    cubin = link.link_cubin(arch, [image, hook], info)
    return cubin, info[0]


def _check_report(log: str, kernel: str, what: str) -> None:
    assert kernel in log, f"{what}: no {kernel} in the link log:\n{log}"
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    assert spills and all(s == ("0", "0") for s in spills), f"{what} spills:\n{log}"
    assert "C7512" not in log and "serializ" not in log.lower(), f"{what}: serialized wgmma:\n{log}"


@pytest.mark.parametrize("family,pass_,dtype,head_dim", KERNELS,
                         ids=[f"{_FAMILIES[f]}-{'bwd' if p else 'fwd'}-{d}-{h}".replace("torch.", "")
                              for f, p, d, h in KERNELS])
def test_every_shipped_kernel_links_without_spills(family, pass_, dtype, head_dim):
    if family == SM90 and not _C.has_linked_kernels(SM90):
        pytest.skip("this build has no sm90 kernels")
    assert os.path.exists(kernel_path(dtype, head_dim, pass_, family)), "the build has the family but not this LTO-IR"
    one = (dtype, head_dim) == (torch.bfloat16, 128)
    names = list(HOOKS) if one else ["silu", "tanh_relative_table"]
    # the sm80 family runs on every GPU from Ampere on: linked for two more of them
    archs = [None] + (["sm_86", "sm_90"] if family == SM80 and one else [])
    for name in names:
        for arch in archs:
            cubin, log = _link(family, pass_, dtype, head_dim, HOOKS[name], arch)
            assert cubin[:4] == b"\x7fELF"
            _check_report(log, "bwd_" if pass_ else "fwd_kernel",
                          f"{_FAMILIES[family]} {'backward' if pass_ else 'forward'} {dtype} head_dim {head_dim} "
                          f"{name} {arch or ''}")


def test_an_unreadable_image_is_refused_before_the_driver():
    with pytest.raises(ValueError, match=r"image: expected a cubin \(an ELF image\)"):
        _C.load_linked_kernel(b"not a cubin", 0, 2, 128, SM90)
    with pytest.raises(ValueError, match="kind.head_dim: expected 64, 128 or 256, got 96"):
        _C.load_linked_kernel(b"\x7fELF....", 0, 2, 96, SM80)
    with pytest.raises(ValueError, match="kind.family: expected Backend::kSm80 or Backend::kSm90"):
        _C.load_linked_kernel(b"\x7fELF....", 0, 2, 128, _C.BACKENDS["AUTO"])
    with pytest.raises(NotImplementedError, match="the linked sm90 backward is built for head dims 64 and 128"):
        _C.load_linked_kernel(b"\x7fELF....", 1, 2, 256, SM90)


def test_more_gathers_than_the_kernels_hold_are_refused():
    table = torch.randn(64)

    def many(s, b, h, q, kv):
        for i in range(MAX_GATHERS + 1):
            s = s + torch.sin(table[(q + i) % 64])
        return s
    with pytest.raises(TypeError, match=f"at most {MAX_GATHERS} gathers"):
        generate(capture(many))


def test_more_captured_tensors_than_the_kernel_parameters_hold_are_refused():
    tensors = [torch.randn(8) for _ in range(_C.MAX_HOOK_TENSORS + 1)]

    def mod(s, b, h, q, kv):
        for t in tensors:
            s = s * torch.sigmoid(t[h])
        return s
    generated, why = generated_or_reason(capture(mod))
    assert generated is None and f"at most {_C.MAX_HOOK_TENSORS} captured tensors" in why


def test_an_inexpressible_graph_gives_its_reason():
    generated, why = generated_or_reason(capture(lambda s, b, h, q, kv: s + torch.lgamma(s)))
    assert generated is None and "does not support aten.lgamma" in why


def test_the_hook_states_its_number_of_gathers():
    # the kernels' loop over gathers folds to this constant once linked (score_mod.cuh)
    for name, mod in HOOKS.items():
        generated = generate(capture(mod))
        assert f"flashflex_score_mod_gathers() {{ return {len(generated.gathers)}; }}" in generated.function, name


def test_a_mod_that_spills_still_links():
    cubin, log = _link(SM90, 0, torch.bfloat16, 256, WHERE_MINUS_INF)
    assert cubin[:4] == b"\x7fELF" and "fwd_kernel" in log
