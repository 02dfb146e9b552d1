"""Run-time compilation and linking of generated score-mod hooks (_score_mod_codegen.py): NVRTC
compiles CUDA source to LTO-IR for one GPU architecture and nvJitLink links LTO-IR modules (the
hook, and the kernels that call it by name: src/cuda/linked/, shipped as fatbins of LTO-IR) into a
cubin for the driver to load. Both libraries come from the nvidia-cuda-nvrtc and nvidia-nvjitlink
wheels (torch's CUDA wheels depend on them) or a CUDA toolkit; nvcc is not needed. Works without a
GPU: compiling and linking only produce bytes. Errors carry the compiler's or linker's log."""

from __future__ import annotations

import ctypes
import functools
import glob
import hashlib
import os
import sys
import tempfile
from typing import List, Optional, Sequence, Tuple

__all__ = ["LinkError", "available", "compile_ltoir", "link_cubin", "linked_hook", "cache_dir"]

_NVJITLINK_INPUT_ANY = 10  # nvJitLink tells LTO-IR from a fatbin holding it (the kernels ship as fatbins)


class LinkError(RuntimeError):
    """NVRTC or nvJitLink failed, or is not installed; the message holds its log."""


def _candidates(stem: str) -> List[str]:
    found = []
    for base in sys.path:
        for sub in ("nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib", "nvidia/nvjitlink/lib"):
            found += sorted(glob.glob(os.path.join(base, sub, f"lib{stem}.so*")))
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root:
            found += sorted(glob.glob(os.path.join(root, "lib64", f"lib{stem}.so*")))
    return [f for f in found if "builtins" not in os.path.basename(f)] + [f"lib{stem}.so"]


_LIBS = {}


def _load(stem: str) -> ctypes.CDLL:
    if stem not in _LIBS:
        errors = []
        for path in _candidates(stem):
            try:
                _LIBS[stem] = ctypes.CDLL(path)
                break
            except OSError as e:
                errors.append(str(e))
        else:
            raise LinkError(f"lib{stem} not found (pip install nvidia-cuda-nvrtc nvidia-nvjitlink, or a CUDA toolkit): "
                            f"{errors[-1] if errors else ''}")
    return _LIBS[stem]


def available() -> Optional[str]:
    """None when NVRTC and nvJitLink load, else why not."""
    try:
        _load("nvrtc")
        _load("nvJitLink")
    except LinkError as e:
        return str(e)
    return None


def _jitlink(name: str):
    lib = _load("nvJitLink")
    for symbol in (f"__{name}_13_0", f"__{name}_12_0", name):  # versioned entry points (nvJitLink.h)
        fn = getattr(lib, symbol, None)
        if fn is not None:
            return fn
    raise LinkError(f"nvJitLink: no entry point {name}")


def compile_ltoir(source: str, arch: str, name: str = "score_mod.cu", options: Sequence[str] = ()) -> bytes:
    """LTO-IR of `source` for `arch` (e.g. "sm_90a"), relocatable (its external functions link by name)."""
    nvrtc = _load("nvrtc")
    prog = ctypes.c_void_p()
    _check_nvrtc(nvrtc, nvrtc.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None),
                 "nvrtcCreateProgram")
    try:
        opts = [f"-arch={arch}", "-dlto", "-rdc=true", "-std=c++17", *options]
        argv = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
        status = nvrtc.nvrtcCompileProgram(prog, len(opts), argv)
        if status != 0:
            size = ctypes.c_size_t()
            nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            nvrtc.nvrtcGetProgramLog(prog, log)
            raise LinkError(f"NVRTC could not compile {name} for {arch}:\n{log.value.decode(errors='replace')}")
        size = ctypes.c_size_t()
        _check_nvrtc(nvrtc, nvrtc.nvrtcGetLTOIRSize(prog, ctypes.byref(size)), "nvrtcGetLTOIRSize")
        out = ctypes.create_string_buffer(size.value)
        _check_nvrtc(nvrtc, nvrtc.nvrtcGetLTOIR(prog, out), "nvrtcGetLTOIR")
        return out.raw
    finally:
        nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))


def _check_nvrtc(nvrtc, status: int, what: str) -> None:
    if status != 0:
        nvrtc.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise LinkError(f"{what}: {nvrtc.nvrtcGetErrorString(status).decode()}")


def link_cubin(arch: str, ltoirs: Sequence[bytes], info: Optional[List[str]] = None) -> bytes:
    """The cubin of the LTO-IR modules (raw, or in fatbins) linked together (link-time optimised)
    for `arch`. With `info` (a list), the linker's log is appended to it, ptxas's register and
    spill report included."""
    handle = ctypes.c_void_p()
    opts = [f"-arch={arch}", "-lto", "-Xptxas=-v", "-Xptxas=--warn-on-spills"]
    argv = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
    _check_link(handle, _jitlink("nvJitLinkCreate")(ctypes.byref(handle), len(opts), argv), "nvJitLinkCreate")
    try:
        add = _jitlink("nvJitLinkAddData")
        for i, ir in enumerate(ltoirs):
            buf = ctypes.create_string_buffer(ir, len(ir))
            _check_link(handle, add(handle, _NVJITLINK_INPUT_ANY, buf, ctypes.c_size_t(len(ir)),
                                    f"module{i}".encode()), "nvJitLinkAddData")
        _check_link(handle, _jitlink("nvJitLinkComplete")(handle), "nvJitLinkComplete")
        if info is not None:
            size = ctypes.c_size_t()
            _check_link(handle, _jitlink("nvJitLinkGetInfoLogSize")(handle, ctypes.byref(size)), "nvJitLinkGetInfoLog")
            log = ctypes.create_string_buffer(size.value + 1)
            _check_link(handle, _jitlink("nvJitLinkGetInfoLog")(handle, log), "nvJitLinkGetInfoLog")
            info.append(log.value.decode(errors="replace"))
        size = ctypes.c_size_t()
        _check_link(handle, _jitlink("nvJitLinkGetLinkedCubinSize")(handle, ctypes.byref(size)),
                    "nvJitLinkGetLinkedCubinSize")
        out = ctypes.create_string_buffer(size.value)
        _check_link(handle, _jitlink("nvJitLinkGetLinkedCubin")(handle, out), "nvJitLinkGetLinkedCubin")
        return out.raw
    finally:
        _jitlink("nvJitLinkDestroy")(ctypes.byref(handle))


def _check_link(handle, status: int, what: str) -> None:
    if status == 0:
        return
    log = ""
    if handle:
        size = ctypes.c_size_t()
        if _jitlink("nvJitLinkGetErrorLogSize")(handle, ctypes.byref(size)) == 0 and size.value:
            buf = ctypes.create_string_buffer(size.value)
            _jitlink("nvJitLinkGetErrorLog")(handle, buf)
            log = buf.value.decode(errors="replace")
    raise LinkError(f"{what} failed (nvJitLinkResult {status}){':' if log else ''}\n{log}")


# ---- the linked modules on disk ------------------------------------------------------------------

_HOOK_PREFIX = '#define FLASHFLEX_MOD_FN __device__\n#define FLASHFLEX_MOD_LINKAGE extern "C"\n'
_CACHE_VERSION = b"flashflex-linked-hook-2"  # bumped with the link options


def cache_dir() -> str:
    """$FLASHFLEX_CACHE_DIR, else $XDG_CACHE_HOME/flashflex/score_mods (~/.cache/...)."""
    root = os.environ.get("FLASHFLEX_CACHE_DIR")
    if root:
        return root
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "flashflex", "score_mods")


@functools.lru_cache(maxsize=None)
def _versions() -> bytes:
    """The compiler and linker versions: a newer one may link differently."""
    major, minor = ctypes.c_int(), ctypes.c_int()
    _load("nvrtc").nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    jmajor, jminor = ctypes.c_uint(), ctypes.c_uint()
    _jitlink("nvJitLinkVersion")(ctypes.byref(jmajor), ctypes.byref(jminor))
    return f"nvrtc {major.value}.{minor.value} nvjitlink {jmajor.value}.{jminor.value}".encode()


def linked_hook(hook_source: str, arch: str, kernels: Sequence[Tuple[str, bytes]],
                info: Optional[List[str]] = None) -> Tuple[bytes, bool]:
    """(cubin, from_cache): hook_source (a _score_mod_codegen source) compiled and linked with the
    kernels' LTO-IR modules [(name, bytes)] for arch, through the disk cache (`info`: as
    link_cubin's, filled only when the link runs). The key covers the
    hook's source, every kernel module's bytes, the architecture and the tool versions; an entry is
    written whole (a temporary file renamed) and checked against its own digest when read, so a
    crashed or concurrent writer never leaves a half file that is trusted."""
    key = hashlib.sha256()
    for part in (_CACHE_VERSION, _versions(), arch.encode(), hook_source.encode()):
        key.update(len(part).to_bytes(8, "little") + part)
    for name, data in kernels:
        key.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    digest = key.hexdigest()
    folder = cache_dir()
    path = os.path.join(folder, f"{digest}.cubin")
    try:
        with open(path, "rb") as f:
            blob = f.read()
        stored, cubin = blob[:32], blob[32:]
        if hashlib.sha256(cubin).digest() == stored:
            return cubin, True
    except OSError:
        pass
    hook = compile_ltoir(_HOOK_PREFIX + hook_source, arch, "score_mod_hook.cu")
    cubin = link_cubin(arch, [data for _, data in kernels] + [hook], info)
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(hashlib.sha256(cubin).digest() + cubin)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache's entries from other users
        os.replace(tmp, path)
    except OSError:
        # a read-only or full cache directory: the module is still linked, only not kept
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return cubin, False
