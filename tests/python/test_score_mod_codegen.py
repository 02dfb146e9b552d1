"""The generated score-mod hook (python/flashflex/_score_mod_codegen.py) compiled as host C++ with
the machine's compiler and run on every element of a [B, H, Q, KV] grid, for each score_mod of
the callable zoo (test_score_mod_callables.ZOO) and a few operations the zoo does not use: the
modified score against the float64 graph (_score_mod_graph.evaluate), its derivative with
respect to the score against torch autograd, and the gradients of learnable captured tensors,
accumulated from the per-gather partials and offsets, against autograd too. The same harness
built with nvcc as device code (a compile check on any machine with nvcc) and run on a GPU (one
thread per element) must agree just as well. Skipped without the compiler each needs."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile

import pytest
import torch

from flashflex._score_mod_codegen import MAX_DIMS, PRELUDE, generate, tensor_descriptor
from flashflex._score_mod_graph import capture, evaluate
from helpers import randn
from test_score_mod_callables import BATCH, HQ, KV_LEN, Q_LEN, ZOO

COMPILER = shutil.which("g++") or shutil.which("c++")
NVCC = shutil.which("nvcc")

_TABLE = torch.randn(9)
EXTRA = {  # name: (captured tensors {name: (tensor, requires_grad)}, builder)
    "clamp_exp_log": ({}, lambda T: lambda s, b, h, q, kv: torch.log(1 + torch.exp(torch.clamp(s, -5.0, 5.0)))),
    "min_max_sqrt": ({}, lambda T: lambda s, b, h, q, kv: torch.maximum(torch.minimum(s, s * 0.5 + 1), -torch.sqrt(
        torch.abs(s) + 1))),
    "integer_arithmetic": ({}, lambda T: lambda s, b, h, q, kv: s + ((q - kv) // 3 % 5).float() - (kv % 7 == 0) * 2.5),
    "remainder_negative": ({}, lambda T: lambda s, b, h, q, kv: s * torch.remainder(q - kv, 4).float()),
    "gather_negative_index": ({"table": (_TABLE, True)}, lambda T: lambda s, b, h, q, kv: s * T["table"][
        (q - kv) % 9 - 9]),
    "pow_sin_erf": ({}, lambda T: lambda s, b, h, q, kv: torch.pow(torch.sin(s), 2) + torch.erf(s * 0.3)),
    "computed_constant": ({"w": (torch.randn(HQ), True)}, lambda T: lambda s, b, h, q, kv: s * torch.softmax(
        T["w"], 0)[h]),
    "rsub_alpha": ({}, lambda T: lambda s, b, h, q, kv: torch.rsub(s, 1.0, alpha=3)),
    "remainder_by_the_score": ({}, lambda T: lambda s, b, h, q, kv: torch.remainder(q.float(), s.abs() + 3)),
    "clamp_learnable_bounds": ({"lo": (torch.rand(HQ) - 2, True), "hi": (torch.rand(HQ) + 1, True)},
                               lambda T: lambda s, b, h, q, kv: torch.clamp(s, min=T["lo"][h], max=T["hi"][h])),
    "pow_learnable_exponent": ({"w": (torch.rand(HQ) + 0.5, True)},
                               lambda T: lambda s, b, h, q, kv: torch.pow(s.abs() + 0.5, T["w"][h])),
}


def _harness(functions, device: bool) -> str:
    """C++ (device: CUDA) with run_<i> applying generated function i to n elements: on the host a
    loop, on the device one thread per element behind a host launcher taking device pointers."""
    fn = "__device__ __forceinline__" if device else ""
    parts = [f"#define FLASHFLEX_MOD_FN {fn}\n", PRELUDE]
    for i, gen in enumerate(functions):
        parts.append(f"namespace case{i} {{\n{gen.function}}}\n")
        body = f"""
  FlexModTensor ts[16];
  for (int i = 0; i < ntensors; ++i) {{
    ts[i].data = data[i];
    for (int d = 0; d < {MAX_DIMS}; ++d)
      ts[i].stride[d] = strides[i * {MAX_DIMS} + d], ts[i].size[d] = sizes[i * {MAX_DIMS} + d];
    ts[i].dtype = dtypes[i];
  }}
  float dgl[64];
  int64_t offl[64];"""
        element = f"""
    out[j] = case{i}::flashflex_score_mod(score[j], b[j], h[j], q[j], kv[j], ts, &dscore[j], dgl, offl);
    for (int g = 0; g < k; ++g) dg[j * k + g] = dgl[g], goff[j * k + g] = offl[g];"""
        params = """int64_t n, const float* score, const int32_t* b, const int32_t* h, const int32_t* q,
    const int32_t* kv, const void* const* data, const int64_t* strides, const int64_t* sizes,
    const int32_t* dtypes, int32_t ntensors,
    float* out, float* dscore, float* dg, int64_t* goff, int32_t k"""
        if not device:
            loop = f"\n  for (int64_t j = 0; j < n; ++j) {{{element}\n  }}\n"
            parts.append(f'extern "C" void run_{i}({params}) {{{body}{loop}}}\n')
            continue
        # Device: the descriptors' arrays (data, strides, sizes, dtypes) come from host memory and
        # travel by value in a struct; element arrays are device pointers.
        parts.append(f"""
struct Args{i} {{
  const void* data[16];
  int64_t strides[16 * {MAX_DIMS}];
  int64_t sizes[16 * {MAX_DIMS}];
  int32_t dtypes[16];
}};
__global__ void kernel_{i}(Args{i} args, int64_t n, const float* score, const int32_t* b, const int32_t* h,
                          const int32_t* q, const int32_t* kv, int32_t ntensors, float* out, float* dscore, float* dg,
                          int64_t* goff, int32_t k) {{
  const void* const* data = args.data;
  const int64_t* strides = args.strides;
  const int64_t* sizes = args.sizes;
  const int32_t* dtypes = args.dtypes;{body}
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j < n) {{{element}
  }}
}}
extern "C" int run_{i}({params}) {{
  Args{i} args;
  for (int t = 0; t < ntensors; ++t) {{
    args.data[t] = data[t];
    args.dtypes[t] = dtypes[t];
    for (int d = 0; d < {MAX_DIMS}; ++d) args.strides[t * {MAX_DIMS} + d] = strides[t * {MAX_DIMS} + d],
                                        args.sizes[t * {MAX_DIMS} + d] = sizes[t * {MAX_DIMS} + d];
  }}
  kernel_{i}<<<static_cast<unsigned>((n + 127) / 128), 128>>>(args, n, score, b, h, q, kv, ntensors, out, dscore, dg,
                                                              goff, k);
  return static_cast<int>(cudaDeviceSynchronize());
}}
""")
    return "".join(parts)


def _build(source: str, compiler, suffix: str, flags):
    folder = tempfile.mkdtemp(prefix="flashflex_codegen_")
    src, lib = os.path.join(folder, "mods" + suffix), os.path.join(folder, "mods.so")
    with open(src, "w") as f:
        f.write(source)
    done = subprocess.run([compiler, *flags, "-o", lib, src], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return lib


def _compile(functions):
    """A shared library with run_<i> for every generated function, on the host."""
    return ctypes.CDLL(_build(_harness(functions, False), COMPILER, ".cpp",
                              ["-std=c++17", "-O1", "-shared", "-fPIC"]))


def _ptr(t: torch.Tensor):
    return ctypes.c_void_p(t.data_ptr())


def _cases(gen):
    cases = {}
    for name, case in ZOO.items():
        tensors = {}
        for tname, (shape, grad) in case.tensors.items():
            t = randn(gen, *shape, std=0.5) if shape else randn(gen, 1, std=0.5)[0]
            tensors[tname] = torch.nn.Parameter(t) if grad == "parameter" else t.requires_grad_(bool(grad))
        cases[name] = (tensors, case.build(tensors))
    for name, (spec, build) in EXTRA.items():
        tensors = {tname: t.clone().requires_grad_(grad) for tname, (t, grad) in spec.items()}
        cases[name] = (tensors, build(tensors))
    return cases


def _grids():
    shape = (BATCH, HQ, Q_LEN, KV_LEN)
    grids = [torch.arange(n, dtype=torch.int32).view([n if i == d else 1 for i in range(4)])
             for d, n in enumerate(shape)]
    return shape, grids


def _run(lib, i, code, score, flat, held, device):
    """Generated function i on every element (tensors on `device`); results on the CPU."""
    n, k = score.numel(), len(code.gathers)
    moved = [t.to(device) for t in held]
    desc = [tensor_descriptor(t) for t in moved]
    score, flat = score.to(device), [x.to(device) for x in flat]
    out, dscore = torch.empty(n, device=device), torch.empty(n, device=device)
    dg = torch.zeros(n, max(k, 1), device=device)
    goff = torch.zeros(n, max(k, 1), dtype=torch.int64, device=device)
    nt = len(desc)
    data = (ctypes.c_void_p * max(nt, 1))(*[d[0] for d in desc])
    strides = torch.tensor([s for d in desc for s in d[1]] or [0], dtype=torch.int64)  # host memory
    sizes = torch.tensor([s for d in desc for s in d[2]] or [0], dtype=torch.int64)
    dtypes = torch.tensor([d[3] for d in desc] or [0], dtype=torch.int32)
    rc = getattr(lib, f"run_{i}")(ctypes.c_int64(n), _ptr(score), *(_ptr(x) for x in flat), data, _ptr(strides),
                                  _ptr(sizes), _ptr(dtypes), ctypes.c_int32(nt), _ptr(out), _ptr(dscore), _ptr(dg),
                                  _ptr(goff), ctypes.c_int32(k))
    assert device == "cpu" or rc == 0, f"CUDA error {rc}"
    return out.cpu(), dscore.cpu(), dg.cpu(), goff.cpu()


def _check_all(gen, lib_of, device):
    """Every case's generated function (built by lib_of(functions)) against the float64 graph."""
    cases = _cases(gen)
    graphs = {name: capture(mod) for name, (_, mod) in cases.items()}
    generated = {name: generate(g) for name, g in graphs.items()}
    lib = lib_of(list(generated.values()))
    shape, grids = _grids()
    flat = [g.expand(shape).reshape(-1).contiguous() for g in grids]
    for i, (name, g) in enumerate(graphs.items()):
        code = generated[name]
        score = (randn(gen, *shape, std=3.0)).reshape(-1).contiguous()
        # The float64 graph and its gradients.
        score64 = score.double().view(shape).requires_grad_()
        ref = evaluate(g, score64, *grids).expand(shape)
        leaves = [t for t in g.tensors.values() if t.requires_grad]
        finite = torch.isfinite(ref)
        ref_grads = torch.autograd.grad(ref[finite].sum(), [score64] + leaves, allow_unused=True)
        # The generated function on every element.
        inputs = [t.detach().contiguous() if not t.requires_grad else t for t in code.inputs()]
        held = [t.detach().contiguous() for t in inputs]
        out, dscore, dg, goff = _run(lib, i, code, score, flat, held, device)
        out = out.view(shape)
        assert torch.equal(torch.isfinite(out), finite), f"{name}: non-finite values differ"
        assert torch.equal(out[~finite].double(), ref[~finite].detach()), f"{name}: infinities differ"
        scale = ref.detach()[finite].abs().max().clamp(min=1.0)
        err = (out.double()[finite] - ref.detach()[finite]).abs().max() / scale
        assert err < 2e-6, f"{name}: value {err:.2e} from float64"
        d_ref = ref_grads[0].view(-1)[finite.view(-1)]
        d_got = dscore.double()[finite.view(-1)]
        d_err = (d_got - d_ref).abs().max() / d_ref.abs().max().clamp(min=1.0)
        assert d_err < 1e-5, f"{name}: d score {d_err:.2e} from autograd"
        # Gradients of learnable tensors: the partials scattered to their elements, then torch
        # autograd from computed inputs back to the captured tensors.
        grads = [torch.zeros(t.numel(), dtype=torch.float64) for t in held]
        rows = finite.view(-1)
        for j, gather in enumerate(code.gathers):
            grads[gather.tensor].index_add_(0, goff[rows, j], dg[rows, j].double())
        wants = [(t, gr.view(t.shape).to(t.dtype)) for t, gr in zip(inputs, grads) if t.requires_grad]
        got_leaf = {}
        if wants:
            got = torch.autograd.grad([t for t, _ in wants], leaves, [gr for _, gr in wants], allow_unused=True)
            got_leaf = dict(zip(map(id, leaves), got))
        for leaf, want in zip(leaves, ref_grads[1:]):
            got = got_leaf.get(id(leaf))
            want = torch.zeros_like(leaf, dtype=torch.float64) if want is None else want.double()
            got = torch.zeros_like(want) if got is None else got.double()
            g_err = (got - want).abs().max() / want.abs().max().clamp(min=1.0)
            assert g_err < 1e-4, f"{name}: gradient of a captured tensor {g_err:.2e} from autograd"


@pytest.mark.skipif(COMPILER is None, reason="no host C++ compiler")
def test_generated_code_matches_the_graph_and_autograd(gen):
    _check_all(gen, _compile, "cpu")


@pytest.mark.skipif(NVCC is None, reason="no nvcc")
def test_generated_code_compiles_as_device_code(gen):
    functions = [generate(capture(mod)) for _, mod in _cases(gen).values()]
    _build(_harness(functions, True), NVCC, ".cu", ["-std=c++17", "-O2", "-arch=sm_90a", "-c"])


@pytest.mark.cuda
@pytest.mark.skipif(NVCC is None, reason="no nvcc")
def test_generated_code_on_the_gpu(gen):
    major, minor = torch.cuda.get_device_capability()

    def device_lib(functions):
        return ctypes.CDLL(_build(_harness(functions, True), NVCC, ".cu",
                                  ["-std=c++17", "-O2", f"-arch=sm_{major}{minor}", "-shared", "-Xcompiler", "-fPIC"]))
    _check_all(gen, device_lib, "cuda")


def test_unsupported_operation_names_itself():
    g = capture(lambda s, b, h, q, kv: torch.special.i0(s))
    with pytest.raises(TypeError, match="i0"):
        generate(g)


def _host_values(mod, score, idx):
    """The generated function of mod on the host at the given scores, every index = idx."""
    code = generate(capture(mod))
    lib = _compile([code])
    n = score.numel()
    flat = [torch.as_tensor(i, dtype=torch.int32).expand(n).contiguous() for i in idx]
    held = [t.detach().contiguous() for t in code.inputs()]
    return _run(lib, 0, code, score.contiguous(), flat, held, "cpu")[0]


@pytest.mark.skipif(COMPILER is None, reason="no host C++ compiler")
def test_float_floor_division_as_torch():
    score = torch.tensor([1.0, -1.0, 0.3, 2.5, -2.5, 7.0, 0.0, -0.0, 1e-3])
    got = _host_values(lambda s, b, h, q, kv: torch.floor_divide(s, 0.1) + s // -0.7, score, (0, 0, 0, 0))
    want = torch.floor_divide(score, 0.1) + score // -0.7
    assert torch.equal(got, want), (got, want)


@pytest.mark.skipif(COMPILER is None, reason="no host C++ compiler")
def test_out_of_range_gathers_and_integer_division_by_zero_give_nan():
    table = torch.randn(3)
    ids = torch.tensor([0, 0, 1], dtype=torch.int64)
    score = torch.full((5,), 0.5)
    for q in (0, 2, -3):  # in range, negative ones from the end
        assert torch.isfinite(_host_values(lambda s, b, h, qq, kv: s + table[qq], score, (0, 0, q, 0))).all()
    for mod in (lambda s, b, h, q, kv: s + table[q],                       # a float gather
                lambda s, b, h, q, kv: torch.where(ids[q] == ids[kv], s, -s),  # an integer gather
                lambda s, b, h, q, kv: s + (kv // (q - 3)).float()):          # integer x / 0
        assert torch.isnan(_host_values(mod, score, (0, 0, 3, 1))).all()
