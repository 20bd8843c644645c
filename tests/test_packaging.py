"""The built wheel installs kernels/ as ditflow_fast.kernels and nothing as a top-level `kernels`."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True, capture_output=True, text=True,
    )
    (wheel,) = out.glob("ditflow_fast-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def test_kernels_ship_inside_the_package(wheel_names):
    # kernels/ has no __init__.py (a namespace package never shadows PyPI's `kernels`, which
    # transformers imports): its modules ship under ditflow_fast/kernels/.
    assert {"ditflow_fast/kernels/amf_fwd.py", "ditflow_fast/kernels/_jit.py"} <= set(wheel_names)
    assert "ditflow_fast/kernels/__init__.py" not in wheel_names


def test_no_top_level_kernels_package(wheel_names):
    tops = {name.split("/", 1)[0] for name in wheel_names if "/" in name}
    assert "kernels" not in tops
    assert all(t == "ditflow_fast" or t.endswith(".dist-info") for t in tops), tops


def test_every_subpackage_of_the_source_tree_is_in_the_wheel(wheel_names):
    source_packages = {p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "ditflow_fast").rglob("__init__.py")}
    for pkg in source_packages:
        assert f"{pkg}/__init__.py" in wheel_names, f"{pkg} is missing from pyproject's package list"


def test_importing_the_package_compiles_nothing():
    code = "import sys, ditflow_fast; print('torch.utils.cpp_extension' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.split() == ["False"]


def test_the_wheel_ships_no_module_the_source_tree_lacks(wheel_names):
    """pip builds in place and keeps stale files in build/lib: a module removed from the source (a move
    into a subpackage) must not come back in a wheel built from a used checkout."""
    roots = {"ditflow_fast/kernels/": ROOT / "kernels", "ditflow_fast/": ROOT / "ditflow_fast"}
    stale = []
    for name in wheel_names:
        if not name.endswith(".py"):
            continue
        prefix = next(p for p in roots if name.startswith(p)) if name.startswith("ditflow_fast/") else None
        if prefix is not None and not (roots[prefix] / name[len(prefix):]).is_file():
            stale.append(name)
    assert not stale, f"modules in the wheel that the source tree no longer has: {stale}"
