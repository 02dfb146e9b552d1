"""kernel_options of flex_attention and ttt_attention (flashflex/_kernel_options.py): the backend
choice and the deterministic flag are checked on every path, including the CPU, which ignores the
backend."""

import pytest
import torch

import flashflex
from flashflex import _C, masks
from flashflex._kernel_options import resolve_kernel_options
from flashflex.eagle3 import ttt_attention


def test_backend_names():
    assert resolve_kernel_options(None) == (False, _C.BACKENDS["AUTO"])
    assert resolve_kernel_options({"BACKEND": "SM80"}) == (False, _C.BACKENDS["SM80"])
    assert resolve_kernel_options({"BACKEND": "sm90", "deterministic": True}) == (True, _C.BACKENDS["SM90"])
    for torch_name in ("FLASH", "TRITON", "TRITON_DECODE"):  # code written for torch flex runs as it is
        assert resolve_kernel_options({"BACKEND": torch_name})[1] == _C.BACKENDS["AUTO"]


def test_bad_backend():
    with pytest.raises(ValueError, match=r'kernel_options\["BACKEND"\]: expected one of .*got \'SM70\''):
        resolve_kernel_options({"BACKEND": "SM70"})
    with pytest.raises(TypeError, match=r'kernel_options\["BACKEND"\]: expected a str, got int 80'):
        resolve_kernel_options({"BACKEND": 80})


def test_cpu_path_takes_every_backend():
    q, k, v = (torch.randn(1, 2, 130, 64) for _ in range(3))
    mask = flashflex.create_block_mask(masks.causal(), None, None, 130, 130, device="cpu")
    ref = flashflex.flex_attention(q, k, v, block_mask=mask)
    for backend in ("SM80", "SM90", "FLASH"):
        out = flashflex.flex_attention(q, k, v, block_mask=mask, kernel_options={"BACKEND": backend})
        assert torch.equal(out, ref)
    blocks = [torch.randn(1, 2, 130, 64) for _ in range(2)]
    out = ttt_attention(q, blocks, blocks, kernel_options={"BACKEND": "SM80", "deterministic": True})
    assert torch.equal(out, ttt_attention(q, blocks, blocks))
