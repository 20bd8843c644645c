"""``ditflow-fast bench --dtype bfloat16`` on the CPU: the ratios are to a bf16 GEMM of the same shape (the
float32 GEMM stands beside it), and every row's bf16 AMF is checked against the float64 reference."""

from __future__ import annotations

import json

import pytest
import torch

from ditflow_fast import dispatch
from ditflow_fast.bench import refcheck, rows
from ditflow_fast.bench.cases import build_case, plan_cases
from ditflow_fast.bench.spec import CaseSpec, make_inputs
from ditflow_fast.cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")
BF16 = torch.bfloat16


def _bench(tmp_path, *args) -> tuple[dict, str]:
    out = tmp_path / "bench.jsonl"
    assert main(["bench", "--preset", "smoke", "--dtype", "bfloat16", "--repeats", "1", "--warmup", "0",
                 "--no-memory", "--out", str(out), *args]) == 0
    return json.loads(out.read_text().splitlines()[-1])


def _row(record, impl, mode):
    (row,) = [r for r in record["rows"] if r["impl"] == impl and r["mode"] == mode]
    return row


@pytest.mark.parametrize("dtype, device, want", [
    ("bfloat16", "cpu", BF16), ("float32", "cpu", torch.float32), ("float64", "cpu", torch.float64),
    ("float16", "cpu", torch.float32),  # no fp16 GEMM units on these CPUs: a user would upcast
    ("bfloat16", "cuda", BF16), ("float16", "cuda", torch.float16),
])
def test_the_floor_is_a_gemm_in_the_input_dtype(dtype, device, want):
    assert rows.floor_dtype(CaseSpec("gemm", "gemm", "smoke", dtype, device)) == want


def test_the_bf16_floor_and_the_float32_yardstick_multiply_the_same_vectors():
    spec = CaseSpec("gemm", "gemm", "smoke", "bfloat16")
    g = spec.geometry
    q, k = make_inputs(spec)
    qc = q[0, :, g.text_tokens:].permute(1, 0, 2).reshape(g.tokens, g.concat_dim).double()
    kc = k[0, :, g.text_tokens:].permute(1, 0, 2).reshape(g.tokens, g.concat_dim).double()
    exact = qc @ kc.t()  # bf16 products are exact in float64
    floor = build_case(spec)()
    fp32 = build_case(CaseSpec("gemm_fp32", "gemm", "smoke", "bfloat16"))()
    assert floor.dtype == BF16 and floor.shape == (g.tokens, g.tokens)
    assert fp32.dtype == torch.float32
    assert (fp32.double() - exact).abs().max() < 1e-4
    # the bf16 GEMM's output is rounded to bf16: within one bf16 unit (2^-8 relative) of the exact sums
    assert ((floor.double() - exact).abs() <= 2**-8 * exact.abs() + 1e-6).all()


def test_the_float32_gemm_joins_cpu_bf16_runs_only():
    def names(dtype, device="cpu"):
        return [s.impl for s in plan_cases("smoke", impls=["torch"], dtype=dtype, device=device)]

    bf16 = names("bfloat16")
    assert bf16[:2] == ["gemm", "gemm_fp32"] and bf16.count("gemm_fp32") == 1
    assert "gemm_fp32" not in names("float32") and "gemm_fp32" not in names("float16")
    assert "gemm_fp32" not in names("bfloat16", "cuda")  # a GPU's backends multiply bf16 itself


def test_bf16_run_ratios_are_to_the_bf16_gemm_and_every_row_is_checked(tmp_path, capsys):
    rec = _bench(tmp_path, "--backends", "torch,cpu,sdpa")
    printed = capsys.readouterr().out
    assert rec["dtype"] == "bfloat16" and rec["settings"]["floor_dtype"] == "bfloat16"
    assert "bfloat16 on cpu, GEMM floor in bfloat16" in printed and "bare bfloat16 Q_cat @ K_cat^T" in printed
    gemm, fp32 = _row(rec, "gemm", "gemm"), _row(rec, "gemm_fp32", "gemm")
    assert gemm["x_floor"] == 1.0 and gemm["refcheck"]["status"] == "n/a"
    assert fp32["kind"] == "yardstick" and fp32["status"] == "ok" and fp32["refcheck"]["status"] == "n/a"
    assert fp32["x_floor"] == pytest.approx(fp32["median_s"] / gemm["median_s"])
    assert "x_floor_paired" not in fp32 and "x_floor_paired" not in gemm  # only AMF rows are paired
    checked = 0
    for r in rec["rows"]:
        if r["kind"] in ("floor", "yardstick") or r["status"] == "skipped":
            continue
        c = r["refcheck"]
        assert r["status"] == "ok" and c["passed"] is True and 0 <= c["err"] <= c["tol"], r
        assert r["x_floor"] == pytest.approx(r["median_s"] / gemm["median_s"])
        assert len(r["floor_times_s"]) == len(r["times_s"]) and r["x_floor_paired"] > 0
        if r["impl"] == "research":
            continue  # its own tolerance (input-dtype accumulation): test_bench_refcheck.py
        checked += 1
        assert c["tol"] == (1e-4 if r["mode"] == "argmax" else 2e-2), r
        if r["mode"] == "soft":
            # the reference is the float64 AMF of the bf16 values themselves: a float32-accumulating row
            # agrees to float32 rounding, far inside the bf16 tolerance
            assert c["err"] < 1e-5, r
        if r["mode"] == "soft_fwd_bwd":
            # dq, dk come back in bf16: their rounding (2^-8 relative at most) is the error, so the
            # float32 tolerance (1e-5) would fail a correct row, and 2e-2 keeps 5x above it
            assert refcheck.SOFT_RTOL[torch.float32] < max(c["grad_rel_err"].values()) <= 2**-8, r
    assert checked >= 7  # torch in 3 modes, sdpa in 2, and the cpu backend's 3 where it is built


def _register(monkeypatch, name, run):
    monkeypatch.setitem(dispatch._REGISTRY, name, dispatch.Backend(
        name=name, summary="deliberately wrong (test)", run=run, devices=("cpu",), dtypes=(torch.float32, BF16)))


def test_bf16_tolerance_still_catches_a_wrong_row(tmp_path, monkeypatch):
    amf_torch = dispatch.backends()["torch"].run

    def off_by_one_patch(problem):
        out = amf_torch(problem)
        bump = torch.zeros_like(out)
        bump[0, 0, -1, 0, 0] = 1.0
        return out + bump

    def grad_5_percent_large(problem):
        out = amf_torch(problem)
        return out + 0.05 * (out - out.detach())

    _register(monkeypatch, "wrong", off_by_one_patch)
    _register(monkeypatch, "badgrad", grad_5_percent_large)
    rec = _bench(tmp_path, "--backends", "torch,wrong,badgrad")
    for mode in ("argmax", "soft", "soft_fwd_bwd"):
        row = _row(rec, "wrong", mode)
        assert row["status"] == "wrong" and "median_s" not in row, row
    assert _row(rec, "badgrad", "soft")["status"] == "ok"
    bad = _row(rec, "badgrad", "soft_fwd_bwd")
    assert bad["status"] == "wrong" and bad["refcheck"]["grad_rel_err"]["q"] == pytest.approx(0.05, rel=0.1)
    assert _row(rec, "torch", "soft_fwd_bwd")["status"] == "ok"
