"""Finding and loading the native extension (the fused CPU kernel, and the CUDA kernel when built).

Importing this module never compiles anything. The extension is looked for, in order:

1. the prebuilt module ``ditflow_fast/_C*.so`` that ``setup.py`` builds
   (``pip install -e . --no-build-isolation``, see ``docs/native.md``);
2. only when asked, a just-in-time build with ``torch.utils.cpp_extension.load``: set
   ``DITFLOW_FAST_JIT=1`` (the first call that needs the kernel compiles it, under a minute on
   the 2-core CI machine) or call :func:`build` yourself. The build is cached under ``<repo>/build/native-jit``
   (or ``$DITFLOW_FAST_BUILD_DIR``), never in the home directory, and reused while the sources
   are unchanged.

``DITFLOW_FAST_NATIVE=0`` turns the native backends off whatever is built. Once loaded, the ops
are ``torch.ops.ditflow_fast_native.amf_forward`` and ``.amf_backward`` (schemas in
``csrc/amf_ops.cpp``).
"""

from __future__ import annotations

import importlib.machinery
import os
import threading
from pathlib import Path

import torch

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
SOURCES_LIST = REPO_ROOT / "csrc" / "sources.txt"
OP_NAMESPACE = "ditflow_fast_native"
ABI_VERSION = 9  # must match kAbiVersion in csrc/amf_ops.cpp
# Compiler flags of the CPU extension, shared with setup.py. -fopenmp is needed for at::parallel_for
# to run in parallel at all (its OpenMP pragmas sit in ATen headers compiled into this extension);
# -fno-trapping-math lets GCC vectorise the branch-free exp of amf_reduce.h (results are unchanged).
CXX_FLAGS = ["-O3", "-fopenmp", "-fno-trapping-math"]
LD_FLAGS = ["-fopenmp"]
NVCC_FLAGS = ["-O3", "--use_fast_math", "-lineinfo"]  # as setup.py

_lock = threading.Lock()
_state: dict[str, object] = {"loaded": None, "error": None}


def sources(section: str, root: Path = REPO_ROOT) -> list[str]:
    """Paths (relative to ``root``) listed under ``[section]`` in ``csrc/sources.txt``."""
    listing = root / "csrc" / "sources.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"{listing} not found: the native sources ship with the repository, not the wheel")
    out, current = [], None
    for raw in listing.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
        elif current == section:
            out.append(line)
    return out


def _disabled() -> bool:
    return os.environ.get("DITFLOW_FAST_NATIVE", "1").strip() == "0"


def prebuilt_path() -> Path | None:
    """The module ``setup.py`` built next to this file, if any."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = PACKAGE_DIR / f"_C{suffix}"
        if candidate.is_file():
            return candidate
    return None


def build_dir() -> Path:
    return Path(os.environ.get("DITFLOW_FAST_BUILD_DIR") or REPO_ROOT / "build" / "native-jit")


def _register_fakes() -> None:
    """Shape-only kernels, so the ops trace under torch.compile / FakeTensor. Outputs are float64 for
    float64 input and float32 otherwise (bf16 qc, kc give float32 targets and scores), except that the
    gradients of bf16 qc, kc are bf16 where the kernel multiplies bf16 (``bf16_gemm_enabled``); other gradients
    asked for ``transposed`` are ``[B, N, D]`` views of ``[B, D, N]`` buffers, as the kernel returns them."""

    def out(t, *shape):
        return t.new_empty(*shape, dtype=torch.float64 if t.dtype == torch.float64 else torch.float32)

    @torch.library.register_fake(f"{OP_NAMESPACE}::amf_forward")
    def _(qc, kc, frames, height, width, alpha, soft):
        b, n, _ = qc.shape
        return out(qc, b, n, frames, 2), out(qc, b, n, frames) if soft else out(qc, 0)

    @torch.library.register_fake(f"{OP_NAMESPACE}::amf_forward_scores")
    def _(qc, kc, frames, height, width, alpha):
        b, n, _ = qc.shape
        return out(qc, b, n, frames, 2), out(qc, b, n, frames), out(qc, b, n, n)

    @torch.library.register_fake(f"{OP_NAMESPACE}::amf_backward")
    def _(qc, kc, target, lse, grad, frames, height, width, alpha, need_dq, need_dk, scores=None, transposed=False):
        bf16 = qc.dtype == torch.bfloat16 and getattr(torch.ops, OP_NAMESPACE).bf16_gemm_enabled()

        def grad_of(t):
            if bf16:
                return t.new_empty(t.shape, dtype=torch.bfloat16)
            b, n, d = t.shape
            return out(t, b, d, n).transpose(1, 2) if transposed else out(t, b, n, d)

        return grad_of(qc) if need_dq else out(qc, 0), grad_of(kc) if need_dk else out(kc, 0)


def _loaded(origin: str) -> str:
    found = getattr(torch.ops, OP_NAMESPACE).abi_version()
    if found != ABI_VERSION:
        raise RuntimeError(f"{origin} is a stale build (ops version {found}, this package needs {ABI_VERSION}); "
                           "rebuild it (pip install -e . --no-build-isolation, or .ci/native.sh)")
    _state["loaded"], _state["error"] = origin, None
    _register_fakes()
    return origin


def _cuda_buildable() -> bool:
    from torch.utils import cpp_extension

    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def build(verbose: bool = True, cuda: bool | None = None) -> str:
    """Compile (or reuse) the extension just in time and load it; returns where it came from.

    Needs the repository's ``csrc/`` (an editable checkout), a C++ compiler and ninja. ``cuda``
    adds the CUDA kernels (default: when torch is a CUDA build and ``CUDA_HOME`` finds a toolkit;
    the arches come from ``TORCH_CUDA_ARCH_LIST``).
    """
    with _lock:
        if _state["loaded"]:
            return str(_state["loaded"])
        from torch.utils import cpp_extension

        with_cuda = _cuda_buildable() if cuda is None else cuda
        name = "ditflow_fast_native_cuda" if with_cuda else "ditflow_fast_native_cpu"
        out = build_dir() / name
        out.mkdir(parents=True, exist_ok=True)
        srcs = [str(REPO_ROOT / s) for s in sources("cpu") + (sources("cuda") if with_cuda else [])]
        cpp_extension.load(
            name=name,
            sources=srcs,
            extra_cflags=CXX_FLAGS + (["-DDITFLOW_FAST_WITH_CUDA"] if with_cuda else []),
            extra_cuda_cflags=NVCC_FLAGS,
            extra_ldflags=LD_FLAGS,
            extra_include_paths=[str(REPO_ROOT / "csrc")],
            build_directory=str(out),
            verbose=verbose,
            with_cuda=with_cuda,
            is_python_module=False,
        )
        return _loaded(f"jit:{out}")


def load() -> str | None:
    """Load the extension if it is there (or if a JIT build was asked for); never raises.

    Returns where the ops came from, or None; :func:`why_unavailable` then says why.
    """
    if _state["loaded"]:
        return str(_state["loaded"])
    if _disabled():
        _state["error"] = "native extension disabled by DITFLOW_FAST_NATIVE=0"
        return None
    if _state["error"]:
        return None  # a failed attempt is not retried on every call
    path = prebuilt_path()
    try:
        if path is not None:
            with _lock:
                if not _state["loaded"]:
                    torch.ops.load_library(str(path))
                    _loaded(str(path))
            return str(_state["loaded"])
        if os.environ.get("DITFLOW_FAST_JIT", "0").strip() == "1":
            return build(verbose=False)
    except Exception as exc:  # a broken build must not break the pure-Python backends
        _state["error"] = f"native extension failed to load: {type(exc).__name__}: {exc}"
        return None
    _state["error"] = (
        "native extension not built: run `pip install -e . --no-build-isolation` with torch installed, "
        "or set DITFLOW_FAST_JIT=1, or call ditflow_fast._native.build() (see docs/native.md)"
    )
    return None


def is_loaded() -> bool:
    """Whether the extension is loaded now (this never loads it)."""
    return bool(_state["loaded"])


def why_unavailable() -> str | None:
    """None when the native ops are loaded (loading them if possible), else the reason."""
    return None if load() else str(_state["error"])


def ops():
    """``torch.ops.ditflow_fast_native``; raises RuntimeError with the reason when not loaded."""
    if not load():
        raise RuntimeError(str(_state["error"]))
    return getattr(torch.ops, OP_NAMESPACE)


def has_cuda_kernels() -> bool:
    """Whether the loaded extension carries the CUDA implementation of the forward."""
    if not load():
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{OP_NAMESPACE}::amf_forward", "CUDA")
