"""Run-time linking of generated score-mod hooks (python/flashflex/_score_mod_link.py): every hook
of the callable zoo (test_score_mod_codegen's cases) compiles with NVRTC to LTO-IR for sm_90a and
links by name, through nvJitLink, with a kernel compiled apart that calls it, into a cubin; no
GPU needed. On a GPU, the linked module is loaded through the driver and run one thread per
element, and must agree with the float64 graph and autograd as the host build does. Skipped where
NVRTC / nvJitLink are not installed (pip install nvidia-cuda-nvrtc nvidia-nvjitlink)."""

from __future__ import annotations

import ctypes

import pytest
import torch

from flashflex import _score_mod_link as link
from flashflex._score_mod_codegen import MAX_DIMS, generate
from flashflex._score_mod_graph import capture
from test_score_mod_codegen import _cases, _check_all

pytestmark = pytest.mark.skipif(link.available() is not None, reason=str(link.available()))

MAX_TENSORS = 16
HOOK_PREFIX = '#define FLASHFLEX_MOD_FN __device__\n#define FLASHFLEX_MOD_LINKAGE extern "C"\n'
# The caller: compiled on its own, it reaches the hook only by name, as the kernels will.
CALLER = f"""
typedef long long int64_t;
typedef int int32_t;
struct FlexModTensor {{ const void* data; int64_t stride[{MAX_DIMS}]; int64_t size[{MAX_DIMS}]; int32_t dtype; }};
struct Args {{ FlexModTensor tensors[{MAX_TENSORS}]; }};
extern "C" __device__ float flashflex_score_mod(float score, int32_t b, int32_t h, int32_t q_idx, int32_t kv_idx,
    const FlexModTensor* tensors, float* d_score, float* d_gathered, int64_t* gathered_offset);
extern "C" __global__ void apply_score_mod(Args args, int64_t n, const float* score, const int32_t* b,
    const int32_t* h, const int32_t* q, const int32_t* kv, float* out, float* dscore, float* dg, int64_t* goff,
    int32_t k) {{
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j >= n) return;
  float dgl[64];
  int64_t offl[64];
  out[j] = flashflex_score_mod(score[j], b[j], h[j], q[j], kv[j], args.tensors, &dscore[j], dgl, offl);
  for (int g = 0; g < k; ++g) dg[j * k + g] = dgl[g], goff[j * k + g] = offl[g];
}}
"""


def _arch() -> str:
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"sm_{major}{minor}{'a' if major == 9 else ''}"
    return "sm_90a"


def _cubins(functions, arch):
    caller = link.compile_ltoir(CALLER, arch, "caller.cu")
    return [link.link_cubin(arch, [caller, link.compile_ltoir(HOOK_PREFIX + f.source, arch, f"hook{i}.cu")])
            for i, f in enumerate(functions)]


def test_every_hook_compiles_and_links(gen):
    functions = [generate(capture(mod)) for _, mod in _cases(gen).values()]
    for cubin in _cubins(functions, "sm_90a"):
        assert cubin[:4] == b"\x7fELF" and b"apply_score_mod" in cubin


def test_a_compile_error_carries_the_log():
    with pytest.raises(link.LinkError, match="NVRTC could not compile bad.cu"):
        link.compile_ltoir("__device__ float f() { return undefined_name; }", "sm_90a", "bad.cu")


class _Tensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("stride", ctypes.c_int64 * MAX_DIMS),
                ("size", ctypes.c_int64 * MAX_DIMS), ("dtype", ctypes.c_int32)]


class _Args(ctypes.Structure):
    _fields_ = [("tensors", _Tensor * MAX_TENSORS)]


class _LinkedModules:
    """run_<i> with the host harness's arguments (test_score_mod_codegen._run), on cubin i."""

    def __init__(self, cubins):
        self.cuda = ctypes.CDLL("libcuda.so.1")
        self.functions = []
        for cubin in cubins:
            module, function = ctypes.c_void_p(), ctypes.c_void_p()
            assert self.cuda.cuModuleLoadData(ctypes.byref(module), ctypes.c_char_p(cubin)) == 0
            assert self.cuda.cuModuleGetFunction(ctypes.byref(function), module, b"apply_score_mod") == 0
            self.functions.append(function)

    def __getattr__(self, name):
        if not name.startswith("run_"):
            raise AttributeError(name)
        function = self.functions[int(name[4:])]

        def run(n, score, b, h, q, kv, data, strides, sizes, dtypes, ntensors, out, dscore, dg, goff, k):
            args = _Args()
            st = ctypes.cast(strides, ctypes.POINTER(ctypes.c_int64))
            sz = ctypes.cast(sizes, ctypes.POINTER(ctypes.c_int64))
            dt = ctypes.cast(dtypes, ctypes.POINTER(ctypes.c_int32))
            for t in range(ntensors.value):
                args.tensors[t].data = data[t]
                args.tensors[t].dtype = dt[t]
                for d in range(MAX_DIMS):
                    args.tensors[t].stride[d] = st[t * MAX_DIMS + d]
                    args.tensors[t].size[d] = sz[t * MAX_DIMS + d]
            values = [args, n, score, b, h, q, kv, out, dscore, dg, goff, k]
            params = (ctypes.c_void_p * len(values))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
            blocks = (n.value + 127) // 128
            status = self.cuda.cuLaunchKernel(function, blocks, 1, 1, 128, 1, 1, 0, None, params, None)
            return status or self.cuda.cuCtxSynchronize()
        return run


@pytest.mark.cuda
def test_linked_hooks_on_the_gpu(gen):
    torch.zeros(1, device="cuda")  # the primary context, current on this thread
    _check_all(gen, lambda functions: _LinkedModules(_cubins(functions, _arch())), "cuda")


def _hook_and_caller(gen):
    mod = next(iter(_cases(gen).values()))[1]
    return generate(capture(mod)).source, [("caller", link.compile_ltoir(CALLER, "sm_90a", "caller.cu"))]


def test_linked_modules_are_cached_on_disk(gen, tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHFLEX_CACHE_DIR", str(tmp_path))
    source, kernels = _hook_and_caller(gen)
    first, cached = link.linked_hook(source, "sm_90a", kernels)
    assert not cached and first[:4] == b"\x7fELF"
    again, cached = link.linked_hook(source, "sm_90a", kernels)
    assert cached and again == first
    # Another hook, another kernel module or another architecture: another entry.
    assert not link.linked_hook(source + "// another hook\n", "sm_90a", kernels)[1]
    another = CALLER + 'extern "C" __global__ void another_kernel() {}\n'
    other = [("caller", link.compile_ltoir(another, "sm_90a", "another_caller.cu"))]
    assert not link.linked_hook(source, "sm_90a", other)[1]
    assert not link.linked_hook(source, "sm_80", [("caller", link.compile_ltoir(CALLER, "sm_80", "c.cu"))])[1]
    assert len(list(tmp_path.glob("*.cubin"))) == 4 and not list(tmp_path.glob("*.tmp"))


def test_a_damaged_cache_entry_is_linked_again(gen, tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHFLEX_CACHE_DIR", str(tmp_path))
    source, kernels = _hook_and_caller(gen)
    first, _ = link.linked_hook(source, "sm_90a", kernels)
    (entry,) = tmp_path.glob("*.cubin")
    entry.write_bytes(entry.read_bytes()[:-100])  # a writer that died half way
    again, cached = link.linked_hook(source, "sm_90a", kernels)
    assert not cached and again == first
    assert link.linked_hook(source, "sm_90a", kernels) == (first, True)


def test_an_unwritable_cache_still_links(gen, tmp_path, monkeypatch):
    target = tmp_path / "file"
    target.write_text("")
    monkeypatch.setenv("FLASHFLEX_CACHE_DIR", str(target / "below_a_file"))
    source, kernels = _hook_and_caller(gen)
    cubin, cached = link.linked_hook(source, "sm_90a", kernels)
    assert not cached and cubin[:4] == b"\x7fELF"
