"""A model that fails to load because an import broke says so and names the module, instead of blaming
the model's files. Reproduced as users met it: a folder named `kernels` first on sys.path shadows the
package that transformers imports."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CALLS = {
    "cogvideox load": "from ditflow_fast.families.cogvideox.components import load_components as f; "
                      "f(M['dit'], torch.float32)",
    "wan load": "from ditflow_fast.families.wan.family import WanFamily as W; W.load(M['wan'], torch.float32)",
    "configs": "from ditflow_fast.transfer_api.checks import model_configs as f; "
               "from ditflow_fast.families.cogvideox.family import CogVideoXFamily as C; f(C, M['dit'])",
    "memory": "from ditflow_fast.families.cogvideox.memory import config_for as f; f(M['dit'])",
}


@pytest.mark.parametrize("call", sorted(CALLS))
def test_a_broken_import_is_named_not_blamed_on_the_model(tmp_path, call):
    pytest.importorskip("transformers")
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("")  # shadows PyPI's kernels: no CUDAProperties
    models = {"dit": str(ROOT / "assets" / "tiny_dit"), "wan": str(ROOT / "assets" / "tiny_wan")}
    code = (f"import torch, sys; M = {json.dumps(models)}\n"
            "try:\n"
            f"    {CALLS[call]}\n"
            "except ValueError as e:\n"
            "    print(type(e).__name__, e)\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    out = res.stdout.strip()
    if res.returncode == 0 and not out:
        pytest.skip("this transformers does not import `kernels`: nothing broke")
    assert out.startswith("ModelError"), out + res.stderr[-2000:]
    assert "importing 'kernels' failed" in out and str(tmp_path / "kernels") in out
    assert "config" not in out.split("failed", 1)[1], out
