"""Build script. Pure-Python metadata lives in pyproject.toml; this file decides the native builds.

The pure-Python package always installs. The native extension ``ditflow_fast._C`` (fused CPU
kernel; plus the CUDA kernel when a CUDA toolkit and a CUDA build of torch are both present) is
built only when torch is importable *in the build environment*: pip's build isolation hides the
installed torch, so build it with

    pip install -e . --no-build-isolation

Environment switches (``1`` forces: a failure is then an error; ``0`` disables; unset: build when
possible, otherwise print why not and install without it):

    DITFLOW_FAST_BUILD_CPU=0/1    the CPU extension
    DITFLOW_FAST_BUILD_CUDA=0/1   the CUDA kernels inside it

Sources come from ``csrc/sources.txt``, the list CMakeLists.txt and the JIT build read too.
Importing the package never compiles anything (see ``ditflow_fast/_native.py``).
"""

import os
import shutil
import sys
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
# Same flags as the JIT build in ditflow_fast/_native.py (which cannot be imported from here: it
# imports torch, and this file must run without it).
CXX_FLAGS = ["-O3", "-fopenmp", "-fno-trapping-math"]
LD_FLAGS = ["-fopenmp"]
NVCC_FLAGS = ["-O3", "--use_fast_math", "-lineinfo"]


def say(msg: str) -> None:
    print(f"ditflow-fast: {msg}", file=sys.stderr)


def switch(name: str) -> str:
    """'1' (force), '0' (disable) or 'auto' for an environment switch."""
    value = os.environ.get(name, "").strip()
    if value not in ("", "0", "1"):
        raise SystemExit(f"{name} must be 0 or 1, got {value!r}")
    return value or "auto"


def listed_sources(section: str) -> list[str]:
    listing = HERE / "csrc" / "sources.txt"
    if not listing.is_file():
        return []
    out, current = [], None
    for raw in listing.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
        elif line and current == section:
            out.append(line)
    return out


def native_extensions():
    """(ext_modules, cmdclass) for setup(); empty when the native build is skipped."""
    cpu = switch("DITFLOW_FAST_BUILD_CPU")
    cuda = switch("DITFLOW_FAST_BUILD_CUDA")

    def skip(reason: str, forced: bool):
        if forced:
            raise SystemExit(f"ditflow-fast: native build forced but impossible: {reason}")
        say(f"skipping the native extension ({reason}); installing the pure-Python package")
        return [], {}

    if cpu == "0":
        return skip("DITFLOW_FAST_BUILD_CPU=0", False)
    forced = cpu == "1" or cuda == "1"
    srcs = listed_sources("cpu")
    if not srcs:
        return skip("csrc/sources.txt not found", forced)
    if not (shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")):
        return skip("no C++ compiler on PATH", forced)
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        return skip("torch is not importable in the build environment; use `pip install -e . --no-build-isolation`",
                    forced)

    with_cuda = False
    if cuda != "0":
        if torch.version.cuda is None:
            if cuda == "1":
                raise SystemExit("ditflow-fast: DITFLOW_FAST_BUILD_CUDA=1 but this torch is a CPU build")
            say("CUDA kernels skipped: this torch is a CPU build")
        elif cpp_extension.CUDA_HOME is None:
            if cuda == "1":
                raise SystemExit("ditflow-fast: DITFLOW_FAST_BUILD_CUDA=1 but no CUDA toolkit (set CUDA_HOME)")
            say("CUDA kernels skipped: no CUDA toolkit found (set CUDA_HOME to the toolkit root)")
        else:
            with_cuda = True

    include = [str(HERE / "csrc")]
    if with_cuda:
        ext = cpp_extension.CUDAExtension(
            "ditflow_fast._C", srcs + listed_sources("cuda"), include_dirs=include,
            extra_compile_args={"cxx": CXX_FLAGS + ["-DDITFLOW_FAST_WITH_CUDA"], "nvcc": NVCC_FLAGS},
            extra_link_args=LD_FLAGS,
        )
    else:
        ext = cpp_extension.CppExtension(
            "ditflow_fast._C", srcs, include_dirs=include,
            extra_compile_args={"cxx": CXX_FLAGS}, extra_link_args=LD_FLAGS,
        )
    base = cpp_extension.BuildExtension.with_options(use_ninja=bool(shutil.which("ninja")))

    class BuildNative(base):
        """Turns a failed compile into a printed skip unless the build was forced."""

        def build_extensions(self):
            try:
                super().build_extensions()
            except Exception as exc:
                if forced:
                    raise
                for ext in self.extensions:  # no stale module from an earlier build may ship
                    Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
                self.extensions = []  # nothing for the install step to copy
                say(f"native build failed ({type(exc).__name__}: {exc}); installing the pure-Python package. "
                    "Set DITFLOW_FAST_BUILD_CPU=1 to make this an error.")

    say(f"building the native extension ({'CPU + CUDA' if with_cuda else 'CPU'})")
    return [ext], {"build_ext": BuildNative}


ext_modules, cmdclass = native_extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
