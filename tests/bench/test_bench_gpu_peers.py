"""The GPU-only peer rows (``keops``, ``faiss_gpu``): how they refuse, and their glue around the libraries.

No GPU here and neither package is installed, so the libraries are replaced by small dense stand-ins with
their call shapes (KeOps ``LazyTensor`` ``|`` and ``argmax(dim=1)`` giving ``[N, 1]``; faiss
``GpuIndexFlatIP.search`` giving ``(D, I)``): these tests check the slicing into frames, the index-to-patch
mapping and the layout against the float64 reference, not the libraries. The rows have not run on a GPU.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

from ditflow_fast.backends.reference import amf_reference
from ditflow_fast.bench import peers, rows
from ditflow_fast.bench.cases import resolve_impls
from ditflow_fast.bench.spec import CaseSpec, make_inputs


@pytest.fixture(autouse=True)
def _fresh_import_cache():
    peers._import_error.cache_clear()
    yield
    peers._import_error.cache_clear()


def test_the_gpu_peers_join_only_runs_that_name_them_and_never_run_on_the_cpu(monkeypatch):
    assert "keops" not in resolve_impls(None) and "faiss_gpu" not in resolve_impls(None)
    assert resolve_impls(["keops", "faiss_gpu"]) == ["keops", "faiss_gpu"]
    monkeypatch.setattr(peers.importlib.util, "find_spec", lambda name: None)
    keops = rows.get("keops").skip_reason(CaseSpec("keops", "argmax", "smoke", "bfloat16", "cpu"))
    assert "pykeops is not installed" in keops and "GPU only" in keops and "no CPU row" in keops
    on_gpu = rows.get("keops").skip_reason(CaseSpec("keops", "argmax", "smoke", "bfloat16", "cuda"))
    assert on_gpu.startswith("pykeops is not installed") and "GPU only" not in on_gpu
    faiss = rows.get("faiss_gpu").skip_reason(CaseSpec("faiss_gpu", "argmax", "smoke", "bfloat16", "cuda"))
    assert "faiss is not installed" in faiss and "cannot be carried" in faiss
    assert rows.get("keops").skip_reason(CaseSpec("keops", "soft", "smoke")) == "peer 'keops' has no 'soft' mode"


def test_an_installed_but_broken_package_is_named_with_its_error(tmp_path, monkeypatch):
    pkg = tmp_path / "pykeops"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise ImportError('no CUDA toolkit found')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "pykeops", raising=False)
    cpu = peers.keops_refusals("cpu")  # on the CPU it is not even imported
    assert cpu == ["the KeOps peer runs on a GPU only (no CPU row: 2.29 s for one CogVideoX-5B frame pair where "
                   "the GEMM took 7.4 ms)"]
    (why,) = peers.keops_refusals("cuda")
    assert why == "pykeops is installed but not importable: ImportError: no CUDA toolkit found"


def test_faiss_without_gpu_code_is_refused_on_a_gpu(monkeypatch):
    fake = types.ModuleType("faiss")  # what faiss-cpu looks like: no StandardGpuResources
    monkeypatch.setitem(sys.modules, "faiss", fake)
    monkeypatch.setattr(peers.importlib.util, "find_spec", lambda name: object())
    assert peers.faiss_gpu_refusals("cuda") == ["this faiss has no GPU code (faiss-cpu); the faiss_gpu row needs "
                                                "faiss-gpu"]
    fake.StandardGpuResources = object
    fake.get_num_gpus = lambda: 0
    assert peers.faiss_gpu_refusals("cuda") == ["faiss-gpu sees no GPU (faiss.get_num_gpus() is 0)"]
    fake.get_num_gpus = lambda: 1
    assert peers.faiss_gpu_refusals("cuda") == []


class _Lazy:
    """Dense stand-in of ``pykeops.torch.LazyTensor`` for ``(x_i | y_j).argmax(dim=1)``."""

    def __init__(self, t):
        self.t = t

    def __or__(self, other):
        return _Lazy((self.t * other.t).sum(-1))

    def argmax(self, dim):
        return self.t.argmax(dim=dim)[:, None].float()  # KeOps returns [N, 1]; the row casts to long


class _FlatIP:
    """Dense stand-in of ``faiss.GpuIndexFlatIP`` taking torch tensors."""

    def __init__(self, res, d):
        self.keys = torch.empty(0, d)

    def add(self, x):
        self.keys = torch.cat([self.keys, x])

    def search(self, q, k):
        return (q @ self.keys.t()).topk(k, dim=1)


def _fakes(monkeypatch):
    torch_mod = types.ModuleType("pykeops.torch")
    torch_mod.LazyTensor = _Lazy
    keops = types.ModuleType("pykeops")
    keops.torch = torch_mod
    faiss = types.ModuleType("faiss")
    faiss.StandardGpuResources = lambda: None
    faiss.GpuIndexFlatIP = _FlatIP
    contrib = types.ModuleType("faiss.contrib")
    utils = types.ModuleType("faiss.contrib.torch_utils")
    for name, mod in (("pykeops", keops), ("pykeops.torch", torch_mod), ("faiss", faiss), ("faiss.contrib", contrib),
                      ("faiss.contrib.torch_utils", utils)):
        monkeypatch.setitem(sys.modules, name, mod)


@pytest.mark.parametrize("name", ["keops", "faiss_gpu"])
def test_the_peer_glue_gives_the_reference_argmax(name, monkeypatch):
    _fakes(monkeypatch)
    spec = CaseSpec(name, "argmax", "smoke", "bfloat16")
    g = spec.geometry
    q, k = make_inputs(spec)
    out = rows.get(name).make_forward(spec, q, k)()
    ref = amf_reference(q, k, frames=g.frames, height=g.height, width=g.width, mode="argmax",
                        text_tokens=g.text_tokens)
    assert out.shape == ref.shape == (1, g.frames, g.frames, g.patches, 2)
    assert (out.double() == ref).float().mean().item() > 0.99  # float32 scores: a near-tie may differ
