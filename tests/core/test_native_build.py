"""The native build's plumbing: one source list, import never compiles, switches, the header's C++ test.

These run without the extension built; the ones that need a compiler or nvcc skip without one.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ditflow_fast import _native

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"


def _run_py(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=120)


def test_source_list_names_every_native_source_exactly_once():
    listed = sum((_native.sources(s) for s in ("cpu", "cuda", "test", "cuda_test")), [])
    assert len(listed) == len(set(listed))
    for rel in listed:
        assert (ROOT / rel).is_file(), f"csrc/sources.txt lists a missing file: {rel}"
    on_disk = {str(p.relative_to(ROOT)) for ext in ("*.cpp", "*.cu") for p in CSRC.rglob(ext)}
    assert on_disk == set(listed), "every .cpp/.cu under csrc/ must be in csrc/sources.txt (and only those)"


def test_setup_py_and_cmake_read_the_same_list():
    setup_src = (ROOT / "setup.py").read_text()
    cmake_src = (ROOT / "CMakeLists.txt").read_text()
    assert "sources.txt" in setup_src and "sources.txt" in cmake_src
    # No second hand-written list of sources in either build file.
    for text in (setup_src, cmake_src):
        assert not re.search(r"amf_\w+\.(cpp|cu)\b", text), "a build file names a source directly"


def test_cuda_sources_include_only_cuda_std_and_csrc_headers():
    # .cu files must compile with plain nvcc: no torch (or pybind/Python) header, directly or through
    # a csrc header; quoted includes must be csrc headers.
    banned = ("torch/", "ATen/", "c10/", "pybind11/", "Python.h")
    for cu in CSRC.rglob("*.cu"):
        for line in cu.read_text().splitlines():
            m = re.match(r'\s*#\s*include\s*([<"])([^>"]+)[>"]', line)
            if not m:
                continue
            name = m.group(2)
            assert not name.startswith(banned), f"{cu.name} includes <{name}>"
            if m.group(1) == '"':
                assert (CSRC / name).is_file(), f"{cu.name} includes {name}, not a csrc/ header"
                text = (CSRC / name).read_text()
                assert not any(f"<{b}" in text for b in banned), f"{name} (included by {cu.name}) pulls in torch"


def test_import_never_compiles_or_loads_native_code(tmp_path):
    code = (
        "import ditflow_fast, ditflow_fast._native as n, sys\n"
        "from ditflow_fast.dispatch import backends\n"
        "assert 'cpu' in backends()\n"
        "print(n._state['loaded'], 'torch.utils.cpp_extension' in sys.modules)\n"
    )
    out = _run_py(code, DITFLOW_FAST_JIT="1", DITFLOW_FAST_BUILD_DIR=str(tmp_path / "jit"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["None", "False"]
    assert not (tmp_path / "jit").exists()


def test_native_switch_off_makes_the_backend_unavailable_with_a_reason():
    code = (
        "import torch\n"
        "from ditflow_fast import compute_amf\n"
        "from ditflow_fast.dispatch import backends\n"
        "print(backends()['cpu'].unavailable())\n"
        "q = torch.randn(1, 2, 4, 8)\n"
        "try:\n"
        "    compute_amf(q, q, frames=1, height=2, width=2, backend='cpu')\n"
        "except ValueError as e:\n"
        "    print('refused:', e)\n"
    )
    out = _run_py(code, DITFLOW_FAST_NATIVE="0")
    assert out.returncode == 0, out.stderr
    assert "DITFLOW_FAST_NATIVE=0" in out.stdout and "refused: backend 'cpu' cannot run" in out.stdout


def test_missing_build_gives_instructions_not_an_error(tmp_path):
    # A package dir without the prebuilt module: copy nothing, just point the loader elsewhere.
    code = (
        "import ditflow_fast._native as n\n"
        "from pathlib import Path\n"
        f"n.PACKAGE_DIR = Path({str(tmp_path)!r})\n"
        "print(n.why_unavailable())\n"
    )
    out = _run_py(code, DITFLOW_FAST_JIT="0")
    assert out.returncode == 0, out.stderr
    assert "not built" in out.stdout and "--no-build-isolation" in out.stdout


@pytest.mark.parametrize("value,expect", [("0", "skipping the native extension (DITFLOW_FAST_BUILD_CPU=0)")])
def test_setup_py_switch_disables_the_native_build(value, expect):
    out = subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "DITFLOW_FAST_BUILD_CPU": value}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert expect in out.stderr and out.stdout.strip() == "ditflow-fast"


def test_setup_py_rejects_a_bad_switch_value():
    out = subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "DITFLOW_FAST_BUILD_CUDA": "yes"}, timeout=120)
    assert out.returncode != 0 and "DITFLOW_FAST_BUILD_CUDA must be 0 or 1" in (out.stderr + out.stdout)


@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ on PATH")
def test_reduction_header_cpp_test_passes(tmp_path):
    # The same test ctest runs (csrc/tests/test_reduce.cpp), compiled directly: a few seconds.
    exe = tmp_path / "test_reduce"
    (src,) = _native.sources("test")
    flags = ["-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", "-fopenmp", "-fno-trapping-math", f"-I{CSRC}"]
    build = subprocess.run(["g++", *flags, str(ROOT / src), "-o", str(exe)], capture_output=True, text=True,
                           timeout=300)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "all checks passed" in run.stdout


def test_ci_script_parses_and_reads_the_source_list():
    script = ROOT / ".ci" / "native.sh"
    assert os.access(script, os.X_OK), ".ci/native.sh must be executable"
    out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "csrc/sources.txt" in script.read_text()
