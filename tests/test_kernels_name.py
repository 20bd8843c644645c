"""The checkout's top-level kernels/ never shadows PyPI's `kernels` (which transformers imports).

kernels/ is a namespace directory (no __init__.py): a regular package of that name anywhere on
sys.path wins over it. Each test runs from the checkout's root, where the root is on sys.path.
"""

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(sysconfig.get_paths()["purelib"]).resolve()

pytest.importorskip("kernels", reason="PyPI's kernels is in the dev extra; this environment lacks it")

PRINT_KERNELS = "import kernels, pathlib; print(pathlib.Path(kernels.__file__).resolve())"


def run_from_root(*args: str) -> str:
    res = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout.strip().splitlines()[-1]


def assert_installed(path: str):
    assert Path(path).is_relative_to(SITE), f"`import kernels` from the checkout's root gave {path}"


def test_import_kernels_from_the_root_gives_the_installed_package():
    assert_installed(run_from_root("-c", PRINT_KERNELS))


def test_python_dash_m_from_the_root_gives_the_installed_package():
    # `python -m` puts the working directory first on sys.path, as `python -m pytest` (make test) does;
    # pydoc prints the FILE it imported.
    res = subprocess.run([sys.executable, "-m", "pydoc", "kernels"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    lines = res.stdout.splitlines()
    file_line = next((lines[i + 1] for i, line in enumerate(lines) if line.strip() == "FILE"), None)
    assert file_line, res.stdout[:2000] + res.stderr[-2000:]
    assert_installed(file_line.strip())


def test_diffusers_imports_its_transformers_side_from_the_root():
    # The failure users met: diffusers -> transformers -> `from kernels import ...` broke in the checkout.
    out = run_from_root("-c", "import diffusers, transformers.integrations.hub_kernels as h; print('ok')")
    assert out == "ok"


def test_ditflow_fast_kernels_still_imports():
    out = run_from_root("-c", "import ditflow_fast.kernels.amf_fwd as m, pathlib; print(pathlib.Path(m.__file__).name)")
    assert out == "amf_fwd.py"


@pytest.mark.slow
def test_a_ray_worker_started_from_the_root_gets_the_installed_package():
    pytest.importorskip("ray")
    code = (
        "import pathlib, ray\n"
        "ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)\n"
        "@ray.remote\n"
        "def where():\n"
        "    import kernels\n"
        "    return str(pathlib.Path(kernels.__file__).resolve())\n"
        "print(ray.get(where.remote()))\n"
        "ray.shutdown()\n"
    )
    assert_installed(run_from_root("-c", code))
