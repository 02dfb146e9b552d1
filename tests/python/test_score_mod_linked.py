"""The kernels of linked score mods (src/cuda/linked/sm90_fwd.cu and sm90_bwd.cu, installed as
flashflex/kernels/*.fatbin of LTO-IR), without a GPU: every shipped kernel links through
nvJitLink with generated hooks (_score_mod_link.py) into a cubin whose kernel spills nothing and
serialises no wgmma (ptxas's report in the link log, as tools/check_ptxas.sh checks the compiled
kernels); and what cannot be linked is refused with a reason. The GPU runs are in
test_score_mod_linked_cuda.py. Skipped where the build has no sm90 kernels or NVRTC / nvJitLink
are not installed."""

from __future__ import annotations

import os
import re

import pytest
import torch

from flashflex import _C
from flashflex import _score_mod_link as link
from flashflex._score_mod_codegen import MAX_GATHERS, generate
from flashflex._score_mod_graph import capture
from flashflex._score_mod_linked import BACKWARD_HEAD_DIMS, generated_or_reason, kernel_path

pytestmark = [
    pytest.mark.skipif(not _C.has_linked_kernels(), reason="this build has no sm90 kernels"),
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
# (pass, dtype, head dim): the forward at every head dim, the backward at the sm90 backward's
KERNELS = [(pass_, dtype, head_dim) for pass_ in (0, 1) for dtype in (torch.bfloat16, torch.float16)
           for head_dim in ((64, 128, 256) if pass_ == 0 else BACKWARD_HEAD_DIMS)]


def _link(pass_, dtype, head_dim, mod):
    with open(kernel_path(dtype, head_dim, pass_), "rb") as f:
        image = f.read()
    hook = link.compile_ltoir(link._HOOK_PREFIX + generate(capture(mod)).source, "sm_90a", "hook.cu")
    info = []
    cubin = link.link_cubin("sm_90a", [image, hook], info)
    return cubin, info[0]


def _check_report(log: str, kernel: str, what: str) -> None:
    assert kernel in log, f"{what}: no {kernel} in the link log:\n{log}"
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    assert spills and all(s == ("0", "0") for s in spills), f"{what} spills:\n{log}"
    assert "C7512" not in log and "serializ" not in log.lower(), f"{what}: serialized wgmma:\n{log}"


@pytest.mark.parametrize("pass_,dtype,head_dim", KERNELS,
                         ids=[f"{'bwd' if p else 'fwd'}-{d}-{h}".replace("torch.", "") for p, d, h in KERNELS])
def test_every_shipped_kernel_links_without_spills(pass_, dtype, head_dim):
    assert os.path.exists(kernel_path(dtype, head_dim, pass_)), "the build has sm90 kernels but not this LTO-IR"
    names = list(HOOKS) if (dtype, head_dim) == (torch.bfloat16, 128) else ["silu", "tanh_relative_table"]
    for name in names:
        cubin, log = _link(pass_, dtype, head_dim, HOOKS[name])
        assert cubin[:4] == b"\x7fELF"
        _check_report(log, "bwd_kernel" if pass_ else "fwd_kernel",
                      f"{'backward' if pass_ else 'forward'} {dtype} head_dim {head_dim} {name}")


def test_an_unreadable_image_is_refused_before_the_driver():
    with pytest.raises(ValueError, match=r"image: expected a cubin \(an ELF image\)"):
        _C.load_linked_kernel(b"not a cubin", 0, 2, 128)
    with pytest.raises(ValueError, match="kind.head_dim: expected 64, 128 or 256, got 96"):
        _C.load_linked_kernel(b"\x7fELF....", 0, 2, 96)
    with pytest.raises(NotImplementedError, match="the linked backward is built for head dims 64 and 128"):
        _C.load_linked_kernel(b"\x7fELF....", 1, 2, 256)


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
    cubin, log = _link(0, torch.bfloat16, 256, WHERE_MINUS_INF)
    assert cubin[:4] == b"\x7fELF" and "fwd_kernel" in log
