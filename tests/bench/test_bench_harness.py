"""The benchmark harness: CLI end to end on the smoke preset, the memory probe, the fit rule, errors."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest
import torch

from ditflow_fast.backends.reference import amf_reference, research_bytes
from ditflow_fast.bench import perf_model
from ditflow_fast.bench.cases import build_case
from ditflow_fast.bench.memory import predicted_bytes
from ditflow_fast.bench.presets import PRESETS, get_preset
from ditflow_fast.bench.spec import CaseSpec, make_inputs
from ditflow_fast.bench.timing import paired_ratio, time_paired
from ditflow_fast.cli.main import main


def _bench(tmp_path, *extra) -> dict:
    out = tmp_path / "results" / "bench.jsonl"
    assert main(["bench", "--preset", "smoke", "--repeats", "2", "--warmup", "1", "--out", str(out), *extra]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def _row(record, impl, mode):
    (row,) = [r for r in record["rows"] if r["impl"] == impl and r["mode"] == mode]
    return row


def test_smoke_cli_appends_well_formed_record(tmp_path, capsys):
    rec = _bench(tmp_path, "--no-memory", "--backends", "torch")
    printed = capsys.readouterr().out
    assert "[1/" in printed and "x GEMM" in printed and "research" in printed
    assert rec["preset"]["name"] == "smoke" and rec["dtype"] == "float32" and rec["device"] == "cpu"
    assert {"cpu", "cores", "ram_bytes", "gpu"} <= rec["machine"].keys() and rec["machine"]["cores"] >= 1
    assert {"python", "torch", "triton", "ditflow_fast"} <= rec["versions"].keys()
    assert rec["versions"]["torch"] == torch.__version__
    assert "commit" in rec["git"] and rec["timestamp"].endswith("+00:00")
    p = get_preset("smoke")
    fwd = 2 * p.tokens**2 * p.heads * p.head_dim
    impls = {(r["impl"], r["mode"]) for r in rec["rows"]}
    assert {("gemm", "gemm"), ("research", "argmax"), ("torch", "soft_fwd_bwd")} <= impls
    for impl in ("research", "torch"):
        for mode in ("argmax", "soft", "soft_fwd_bwd"):
            r = _row(rec, impl, mode)
            assert r["status"] == "ok", r
            assert len(r["times_s"]) == 2 and r["min_s"] <= r["median_s"] <= r["max_s"]
            assert r["flops"] == (4 * fwd if mode == "soft_fwd_bwd" else fwd)
            assert r["x_floor"] > 0 and r["speedup_vs_research"] > 0
            assert len(r["floor_times_s"]) == 2
            assert r["x_floor_paired"] == pytest.approx(statistics.median(
                t / f for t, f in zip(r["times_s"], r["floor_times_s"], strict=True)))
            assert r["flops_per_s"] == pytest.approx(r["flops"] / r["median_s"])
    assert _row(rec, "research", "soft")["speedup_vs_research"] == 1.0
    assert "x_floor_paired" not in _row(rec, "gemm", "gemm")  # the floor is not paired with itself
    # A second run appends instead of overwriting.
    out = tmp_path / "results" / "bench.jsonl"
    assert main(["bench", "--preset", "smoke", "--repeats", "1", "--warmup", "0", "--no-memory",
                 "--backends", "torch", "--modes", "argmax", "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 2


def test_paired_timing_calls_the_floor_just_before_each_timed_call():
    calls = []
    times, floor_times = time_paired(lambda: calls.append("row"), lambda: calls.append("floor"), warmup=2, repeats=3)
    assert calls == ["row", "row"] + ["floor", "row"] * 3
    assert len(times) == len(floor_times) == 3
    assert paired_ratio([2.0, 9.0, 3.0], [1.0, 3.0, 2.0]) == 2.0  # ratios 2, 3, 1.5: their median
    with pytest.raises(ValueError, match="repeats"):
        time_paired(lambda: None, lambda: None, warmup=0, repeats=0)


def test_smoke_memory_is_measured_in_fresh_processes(tmp_path):
    rec = _bench(tmp_path, "--backends", "torch", "--modes", "soft")
    for impl in ("research", "torch"):
        r = _row(rec, impl, "soft")
        assert r["memory_label"] == "measured" and r["peak_extra_bytes"] > 0, r
    assert _row(rec, "torch", "soft")["memory_ratio_vs_research"] > 0


def test_memprobe_reports_a_known_allocation():
    mib = 200
    done = subprocess.run([sys.executable, "-m", "ditflow_fast.cli.memprobe", "--alloc-mb", str(mib)],
                          capture_output=True, text=True, check=True)
    extra = json.loads(done.stdout.strip().splitlines()[-1])["peak_extra_bytes"]
    assert 0.9 * mib * 2**20 <= extra <= 1.2 * mib * 2**20, extra


def test_research_that_cannot_fit_is_predicted_not_run(tmp_path, monkeypatch, capsys):
    import ditflow_fast.bench.runner as runner

    built = []
    real_build = runner.build_case
    monkeypatch.setattr(runner, "build_case", lambda spec: built.append(spec.impl) or real_build(spec))
    rec = _bench(tmp_path, "--no-memory", "--backends", "torch", "--modes", "argmax", "--mem-limit", "1000")
    r = _row(rec, "research", "argmax")
    p = get_preset("smoke")
    assert r["status"] == "predicted" and r["memory_label"] == "predicted" and "median_s" not in r
    assert r["peak_extra_bytes"] == r["predicted_bytes"] >= research_bytes(p.heads, p.frames, p.height, p.width, 4)
    assert "research" not in built and "torch" in built  # the bounded backend still ran
    assert _row(rec, "torch", "argmax")["status"] == "ok"
    assert "(predicted)" in capsys.readouterr().out


def test_research_prediction_at_cogvideox_5b_f6():
    # fp32 5B-f6: two [48, 8100, 8100] fp32 tensors live at once, ~25 GB; never run on a 24 GB machine.
    pred = predicted_bytes(CaseSpec("research", "soft", "cogvideox-5b-f6"))
    assert pred >= 2 * 48 * 8100**2 * 4
    assert predicted_bytes(CaseSpec("torch", "soft", "cogvideox-5b-f6")) is None


@pytest.mark.parametrize("args, message", [
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--preset", "smoke", "--backends", "nope"], "unknown backend(s) 'nope'"),
    (["--preset", "smoke", "--modes", "fast"], "--modes must be among"),
    (["--preset", "smoke", "--dtype", "float8"], "dtype must be one of"),
    (["--preset", "smoke", "--repeats", "0"], "--repeats must be >= 1"),
])
def test_bad_arguments_error_clearly(args, message, capsys):
    assert main(["bench", *args, "--no-memory"]) == 2
    err = capsys.readouterr().err
    assert message in err
    if "preset" in message:
        assert "cpu-5b" in err  # the known names are listed


def test_list_presets(capsys):
    assert main(["bench", "--list-presets"]) == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in PRESETS)
    assert get_preset("cogvideox-5b-f6").tokens == 8100 and get_preset("cogvideox-2b-f13").heads == 30


def test_sdpa_peer_agrees_with_reference():
    spec = CaseSpec("sdpa", "soft", "smoke")
    p = spec.geometry
    q, k = make_inputs(spec)
    out = build_case(spec)()
    ref = amf_reference(q, k, frames=p.frames, height=p.height, width=p.width, temperature=2.0,
                        mode="soft", text_tokens=p.text_tokens)
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-5


def test_faiss_peer_agrees_with_reference():
    pytest.importorskip("faiss")
    spec = CaseSpec("faiss", "argmax", "smoke")
    p = spec.geometry
    q, k = make_inputs(spec)
    out = build_case(spec)()
    ref = amf_reference(q, k, frames=p.frames, height=p.height, width=p.width, mode="argmax",
                        text_tokens=p.text_tokens)
    assert (out.double() == ref).float().mean().item() > 0.99  # random inputs: near-ties are rare


def test_perf_model_cli(capsys):
    assert main(["bench", "--preset", "cogvideox-5b-f6", "--perf-model"]) == 0
    printed = capsys.readouterr().out
    assert "H100 SXM" in printed and "RTX 4090" in printed and "403.1 GFLOP" in printed


def test_perf_model_numbers():
    p = get_preset("cogvideox-5b-f6")
    assert perf_model.forward_flops(p) == 2 * 8100**2 * 48 * 64
    h100 = perf_model.peak_for("NVIDIA H100 80GB HBM3")
    assert h100 is not None and perf_model.peak_for("AMD EPYC") is None
    # Compute-bound: the floor is the FLOP term.
    assert perf_model.floor_seconds(p, "soft", 2, h100) == pytest.approx(perf_model.forward_flops(p) / 989e12)
    b = [perf_model.min_bytes(p, m, 2) for m in ("argmax", "soft", "soft_fwd_bwd")]
    assert 0 < b[0] < b[1] < b[2]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_smoke_on_cuda(tmp_path):
    rec = _bench(tmp_path, "--device", "cuda", "--backends", "torch")
    assert rec["dtype"] == "bfloat16" and rec["machine"]["gpu"]
    for mode in ("argmax", "soft", "soft_fwd_bwd"):
        r = _row(rec, "torch", mode)
        assert r["status"] == "ok" and r["memory_label"] == "measured" and r["peak_extra_bytes"] > 0
        if perf_model.peak_for(rec["machine"]["gpu"]):
            assert 0 < r["floor_fraction"]


@pytest.mark.parametrize("dtype, elem", [("bfloat16", 2), ("float32", 4)])
def test_research_memory_prediction_matches_a_fresh_process_on_the_cpu(dtype, elem):
    # The bench decides from this prediction whether the research row may run at all: in bf16 on the
    # CPU the head mean takes a third [H, N, N] copy, which the prediction once missed (13.0 GB predicted,
    # 19.17 GB measured at cogvideox-5b-f6 on a 23 GB machine).
    p = get_preset("cpu-2b")
    done = subprocess.run([sys.executable, "-m", "ditflow_fast.cli.memprobe", "--preset", "cpu-2b", "--impl",
                           "research", "--mode", "soft", "--dtype", dtype, "--device", "cpu"],
                          capture_output=True, text=True, check=True, timeout=300)
    extra = json.loads(done.stdout.strip().splitlines()[-1])["peak_extra_bytes"]
    predicted = research_bytes(p.heads, p.frames, p.height, p.width, elem, device="cpu")
    assert 0.9 * predicted <= extra <= 1.1 * predicted, (extra, predicted)
