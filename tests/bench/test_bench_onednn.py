"""The ``gemm_onednn`` yardstick of CPU float32 runs: the floor's GEMM through oneDNN, beside MKL's (the ``cpu``
backend's float32 GEMMs go there on CPUs where MKL runs its AVX2 code), and the record saying which one the ``cpu``
backend took."""

from __future__ import annotations

import json

import pytest
import torch

from ditflow_fast import _native
from ditflow_fast.bench.cases import build_case, plan_cases
from ditflow_fast.bench.spec import CaseSpec, make_inputs
from ditflow_fast.cli.main import main

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")]


def test_the_onednn_gemm_joins_cpu_float32_runs_only():
    def names(dtype, device="cpu"):
        return [s.impl for s in plan_cases("smoke", impls=["torch"], dtype=dtype, device=device)]

    assert names("float32")[:2] == ["gemm", "gemm_onednn"] and names("float32").count("gemm_onednn") == 1
    for dtype, device in [("bfloat16", "cpu"), ("float64", "cpu"), ("float32", "cuda")]:
        assert "gemm_onednn" not in names(dtype, device)


def test_the_onednn_gemm_multiplies_the_floors_vectors():
    spec = CaseSpec("gemm_onednn", "gemm", "smoke", "float32")
    g = spec.geometry
    q, k = make_inputs(spec)
    qc = q[0, :, g.text_tokens:].permute(1, 0, 2).reshape(g.tokens, g.concat_dim).double()
    kc = k[0, :, g.text_tokens:].permute(1, 0, 2).reshape(g.tokens, g.concat_dim).double()
    got = build_case(spec)().to_dense()
    assert got.dtype == torch.float32 and got.shape == (g.tokens, g.tokens)
    assert (got.double() - qc @ kc.t()).abs().max() < 1e-4


def test_a_float32_run_records_and_prints_which_gemm_the_cpu_backend_took(tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    assert main(["bench", "--preset", "smoke", "--backends", "torch", "--modes", "soft", "--repeats", "1",
                 "--warmup", "0", "--no-memory", "--out", str(out)]) == 0
    rec = json.loads(out.read_text().splitlines()[-1])
    printed = capsys.readouterr().out
    (row,) = [r for r in rec["rows"] if r["impl"] == "gemm_onednn"]
    assert row["kind"] == "yardstick" and row["status"] == "ok" and "x_floor_paired" not in row
    took = rec["settings"]["cpu_onednn_gemm"]
    if _native.why_unavailable():
        assert took is None
    else:
        assert took is bool(_native.ops().onednn_gemm_enabled())
        assert ("cpu float32 GEMMs: " + ("oneDNN" if took else "MKL")) in printed
