"""`import ditflow_fast` (and the motion-transfer API's names) costs torch and nothing heavier: no diffusers,
transformers, gradio, ray or triton until a feature that needs them runs."""

import json
import subprocess
import sys

import pytest

HEAVY = ("diffusers", "transformers", "gradio", "ray", "triton", "cv2", "av", "accelerate")


@pytest.mark.parametrize("code", [
    "import ditflow_fast",
    "import ditflow_fast; ditflow_fast.transfer, ditflow_fast.HeldModel, ditflow_fast.TransferOptions",
    "import ditflow_fast.cli.main as m; m.build_parser()",
])
def test_importing_pulls_in_nothing_heavy(code):
    listed = f"sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})"
    probe = f"{code}\nimport json, sys; print(json.dumps({listed}))"
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    loaded = json.loads(res.stdout.strip().splitlines()[-1])
    assert not loaded, f"{code!r} imported {loaded}"


def test_the_probe_sees_a_heavy_import():
    res = subprocess.run([sys.executable, "-c", "import ditflow_fast, av, sys; print('av' in sys.modules)"],
                         capture_output=True, text=True, timeout=300)
    assert res.stdout.split() == ["True"]
