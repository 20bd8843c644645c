"""``ditflow-fast bench --refcheck``: every row's AMF is checked against the float64 reference before it is
timed; a row that disagrees is marked WRONG and not timed; ``--no-refcheck`` skips the check."""

from __future__ import annotations

import json

import pytest
import torch

from ditflow_fast import dispatch
from ditflow_fast.backends.reference import amf_reference
from ditflow_fast.bench import refcheck
from ditflow_fast.bench.presets import DEFAULT_PRESET
from ditflow_fast.bench.spec import CaseSpec, make_inputs, upstream_grad
from ditflow_fast.cli.main import main

amf_torch = dispatch.backends()["torch"].run


def _register(monkeypatch, name, run, calls):
    def counted(problem):
        calls.append(problem.mode)
        return run(problem)

    monkeypatch.setitem(dispatch._REGISTRY, name, dispatch.Backend(
        name=name, summary="deliberately wrong (test)", run=counted, devices=("cpu",),
        dtypes=(torch.float32, torch.bfloat16)))


def _perturbed(problem):
    """The torch backend's AMF with one entry's dx moved by one patch: wrong in both modes."""
    out = amf_torch(problem)
    bump = torch.zeros_like(out)
    bump[0, 0, -1, 0, 0] = 1.0
    return out + bump


def _wrong_backward(problem):
    """The right forward values with a gradient 1.5 times too large."""
    out = amf_torch(problem)
    return out + 0.5 * (out - out.detach())


def _bench(tmp_path, *args) -> dict:
    out = tmp_path / "bench.jsonl"
    assert main(["bench", "--repeats", "1", "--warmup", "0", "--no-memory", "--out", str(out), *args]) == 0
    return json.loads(out.read_text().splitlines()[-1])


def _row(record, impl, mode):
    (row,) = [r for r in record["rows"] if r["impl"] == impl and r["mode"] == mode]
    return row


def _assert_passed(row):
    c = row["refcheck"]
    assert row["status"] == "ok" and c["status"] == "pass" and c["passed"] is True, row
    assert 0 <= c["err"] <= c["tol"] and c["max_abs_err"] >= 0 and "median_s" in row


def _assert_wrong(row):
    c = row["refcheck"]
    assert row["status"] == "wrong" and c["status"] == "fail" and c["passed"] is False, row
    assert "median_s" not in row and "times_s" not in row and row["peak_extra_bytes"] is None
    assert "DISAGREES" in row["reason"]


def test_default_preset_marks_a_wrong_backend_wrong_and_untimed(tmp_path, monkeypatch, capsys):
    calls = []
    _register(monkeypatch, "wrong", _perturbed, calls)
    rec = _bench(tmp_path, "--backends", "torch,cpu,sdpa,wrong", "--modes", "argmax,soft")
    table = capsys.readouterr().out
    assert rec["preset"]["name"] == DEFAULT_PRESET and rec["settings"]["refcheck"] is True
    assert rec["settings"]["refcheck_note"] is None  # the CPU-sized preset is checked on itself
    for mode in ("argmax", "soft"):
        row = _row(rec, "wrong", mode)
        _assert_wrong(row)
        assert row["refcheck"]["max_abs_err"] == pytest.approx(1.0, abs=1e-4)
        assert not row["refcheck"]["problem"]["reduced"]
        for impl in ("research", "torch", "sdpa") if mode == "soft" else ("research", "torch"):
            _assert_passed(_row(rec, impl, mode))
        if _row(rec, "cpu", mode)["status"] != "skipped":
            _assert_passed(_row(rec, "cpu", mode))
    assert calls == ["argmax", "soft"]  # one checking call per mode, none timed
    assert _row(rec, "gemm", "gemm")["refcheck"]["status"] == "n/a" and "median_s" in _row(rec, "gemm", "gemm")
    assert "WRONG (max err 1" in table and "n/a" in table and "ok " in table
    wrong_line = next(line for line in table.splitlines() if line.split()[:2] == ["wrong", "soft"])
    assert "WRONG" in wrong_line


def test_gradients_are_checked_and_no_refcheck_skips_the_check(tmp_path, monkeypatch, capsys):
    calls = []
    _register(monkeypatch, "badgrad", _wrong_backward, calls)
    rec = _bench(tmp_path, "--preset", "smoke", "--backends", "torch,badgrad")
    for mode in ("argmax", "soft"):  # the forward values are right
        _assert_passed(_row(rec, "badgrad", mode))
    row = _row(rec, "badgrad", "soft_fwd_bwd")
    _assert_wrong(row)
    assert row["refcheck"]["grad_rel_err"]["q"] == pytest.approx(0.5, rel=1e-3)
    assert row["refcheck"]["max_abs_err"] < 1e-5  # forward agrees; the gradients do not
    _assert_passed(_row(rec, "torch", "soft_fwd_bwd"))
    assert _row(rec, "torch", "soft_fwd_bwd")["refcheck"]["grad_rel_err"]["k"] < 1e-5
    capsys.readouterr()

    off = _bench(tmp_path, "--preset", "smoke", "--backends", "badgrad", "--no-refcheck")
    assert off["settings"]["refcheck"] is False
    for r in off["rows"]:
        assert r["refcheck"] is None
    assert _row(off, "badgrad", "soft_fwd_bwd")["status"] == "ok"  # unchecked, so timed
    assert "refcheck: off" in capsys.readouterr().out


def test_a_wrong_row_gets_no_memory_probe(tmp_path, monkeypatch):
    import ditflow_fast.bench.runner as runner

    probed = []
    monkeypatch.setattr(runner, "measure", lambda spec: probed.append(spec.impl) or
                        {"peak_extra_bytes": 1, "method": "fake"})
    _register(monkeypatch, "wrong", _perturbed, [])
    out = tmp_path / "bench.jsonl"
    assert main(["bench", "--preset", "smoke", "--repeats", "1", "--warmup", "0", "--backends", "torch,wrong",
                 "--modes", "soft", "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    _assert_wrong(_row(rec, "wrong", "soft"))
    assert "wrong" not in probed and "torch" in probed


def test_large_presets_are_checked_on_a_reduced_problem(tmp_path, monkeypatch):
    big = 10**12  # memory out of the picture: the FLOP budget alone decides
    assert refcheck.check_shape("cogvideox-5b-f6", max_bytes=big) == (2, 30, 23)
    assert refcheck.check_shape("cogvideox-5b-f13", "bfloat16", max_bytes=big) == (2, 30, 23)
    assert refcheck.check_shape("wan2.1-1.3b-f21", max_bytes=big) == (2, 30, 26)
    assert refcheck.check_shape(DEFAULT_PRESET, max_bytes=big) == (4, 15, 22)
    note = refcheck.shape_note("cogvideox-5b-f6", (2, 30, 23))
    assert note.startswith("checked on a reduced problem: F=2, h×w=30×23") and "N=8,100" in note

    # A budget too small for the smoke preset: its rows are checked (and still caught) on 2 frames of 5x4.
    monkeypatch.setattr(refcheck, "MAX_REFERENCE_FLOPS", 2 * 40**2 * 64 * 1.5)
    _register(monkeypatch, "wrong", _perturbed, [])
    rec = _bench(tmp_path, "--preset", "smoke", "--backends", "torch,sdpa,wrong", "--modes", "argmax,soft_fwd_bwd")
    assert rec["settings"]["refcheck_shape"] == [2, 5, 4]
    assert rec["settings"]["refcheck_note"].startswith("checked on a reduced problem: F=2, h×w=5×4")
    for impl, mode in (("research", "argmax"), ("torch", "argmax"), ("research", "soft_fwd_bwd"),
                       ("torch", "soft_fwd_bwd"), ("sdpa", "soft_fwd_bwd")):
        row = _row(rec, impl, mode)
        _assert_passed(row)
        c = row["refcheck"]
        assert c["problem"] == {"frames": 2, "height": 5, "width": 4, "tokens": 40, "reduced": True}
        assert c["note"] == rec["settings"]["refcheck_note"]
        assert row["times_s"] and row["preset"] == "smoke" and "shape" not in row  # timed on the preset itself
    _assert_wrong(_row(rec, "wrong", "argmax"))
    _assert_wrong(_row(rec, "wrong", "soft_fwd_bwd"))


def test_the_check_reference_is_amf_reference():
    spec = CaseSpec("torch", "soft", "smoke")
    p = spec.geometry
    ref = refcheck.Reference(spec)
    q, k = make_inputs(spec)
    kw = dict(frames=p.frames, height=p.height, width=p.width, temperature=2.0, text_tokens=p.text_tokens)
    assert torch.equal(ref.get("argmax"), amf_reference(q, k, mode="argmax", **kw)[0])
    assert torch.allclose(ref.get("soft"), amf_reference(q, k, mode="soft", **kw)[0], rtol=0, atol=1e-12)
    qg, kg = q.double().requires_grad_(), k.double().requires_grad_()
    amf_reference(qg, kg, mode="soft", **kw).backward(upstream_grad(spec, "cpu").double())
    dq, dk = ref.get("grads")
    assert torch.allclose(dq, qg.grad, atol=1e-12) and torch.allclose(dk, kg.grad, atol=1e-12)


def test_research_tolerance_allows_for_input_dtype_accumulation(tmp_path):
    bf16 = torch.bfloat16
    assert refcheck.tolerance("research", "argmax", bf16)["tol"] == pytest.approx(16 * 2**-8)
    assert refcheck.tolerance("research", "argmax", torch.float32)["tol"] == 1e-4
    assert refcheck.tolerance("torch", "argmax", bf16)["tol"] == 1e-4
    assert refcheck.tolerance("research", "soft", bf16)["tol"] == refcheck.tolerance("sdpa", "soft", bf16)["tol"]
    assert "research" in refcheck.tolerance("research", "soft", bf16)["source"]
    rec = _bench(tmp_path, "--preset", "smoke", "--backends", "torch,sdpa", "--dtype", "bfloat16")
    for r in rec["rows"]:
        if r["kind"] not in ("floor", "yardstick") and r["status"] != "skipped":  # the GEMMs have no AMF
            _assert_passed(r)


def test_faiss_peer_is_checked():
    pytest.importorskip("faiss")
    entry = refcheck.check_case(CaseSpec("faiss", "argmax", "smoke"), {}, shape=(2, 5, 7))
    assert entry["passed"] is True and entry["err"] <= 1e-4
