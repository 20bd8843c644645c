"""The registry of benchmark rows (``ditflow_fast.bench.rows``): what it holds, how it refuses an unknown
name, and that a registered row is benched and reference-checked like any other; and ``ditflow-fast bench
--refcheck`` on the default preset reporting every row's agreement."""

from __future__ import annotations

import json

import pytest

from ditflow_fast import compute_amf, dispatch
from ditflow_fast.bench import cases, refcheck, rows
from ditflow_fast.bench.presets import DEFAULT_PRESET
from ditflow_fast.bench.spec import MODES, TEMPERATURE, CaseSpec
from ditflow_fast.cli.main import main


def _bench(tmp_path, *args) -> dict:
    out = tmp_path / "bench.jsonl"
    assert main(["bench", "--repeats", "1", "--warmup", "0", "--no-memory", "--out", str(out), *args]) == 0
    return json.loads(out.read_text().splitlines()[-1])


def _row(record, impl, mode):
    (row,) = [r for r in record["rows"] if r["impl"] == impl and r["mode"] == mode]
    return row


def test_every_row_says_whether_it_can_run_here():
    table = rows.all_rows()
    assert {"research", "gemm", "faiss", "sdpa"} <= set(table)
    assert set(dispatch.backends()) <= set(table)  # one row per AMF backend
    for name, row in table.items():
        why = row.unavailable()
        assert why is None or (isinstance(why, str) and why.strip()), (name, why)
        assert row.name == name and row.selection in rows.SELECTIONS
        assert set(row.modes) <= set(row.planned_modes) <= set(MODES) | {"gemm"}
        for mode in row.planned_modes:
            reason = row.skip_reason(CaseSpec(name, mode, "smoke"))
            assert reason is None or (isinstance(reason, str) and reason.strip()), (name, mode, reason)
            if why is not None:
                assert reason is not None  # an unavailable row never runs
    for name, b in dispatch.backends().items():
        row = table[name]
        assert row.kind == "backend" and row.planned_modes == MODES
        assert ("soft_fwd_bwd" in row.modes) == ("soft" in b.modes and b.differentiable)
    assert not table["gemm"].computes_amf and table["research"].tolerance == "input-dtype"


def test_an_unknown_row_is_an_error_naming_the_known_rows():
    with pytest.raises(ValueError, match="unknown benchmark row 'nope'; known rows: ") as err:
        rows.get("nope")
    assert all(name in str(err.value) for name in rows.all_rows())
    with pytest.raises(ValueError, match="unknown benchmark row 'nope'"):
        cases.build_case(CaseSpec("nope", "soft", "smoke"))
    with pytest.raises(ValueError, match="name 'sdpa' is taken"):
        rows.register(rows.Row("sdpa", "peer", "a second sdpa", ("soft",), make_forward=lambda spec, q, k: None))
    with pytest.raises(ValueError, match="no registered benchmark row 'torch'"):
        rows.unregister("torch")  # a backend's row follows the dispatcher, not this registry


def _torch_amf(spec, q, k, shift=0.0):
    g = spec.geometry
    out = compute_amf(q, k, frames=g.frames, height=g.height, width=g.width, temperature=TEMPERATURE,
                      mode=spec.amf_mode, text_tokens=g.text_tokens, backend="torch")
    return out + shift


@pytest.fixture
def extra_row():
    """Register rows for one test; unregister them whatever happens."""
    added = []

    def add(name, shift, calls):
        def make_forward(spec, q, k):
            def forward():
                calls.append(spec.mode)
                return _torch_amf(spec, q, k, shift)
            return forward

        added.append(rows.register(rows.Row(name, "test", "the torch backend, shifted (test)", MODES,
                                            make_forward=make_forward, selection="on request")))

    yield add
    for row in added:
        rows.unregister(row.name)
    assert not {row.name for row in added} & set(rows.all_rows())


def test_a_registered_row_is_checked_before_it_is_timed(tmp_path, extra_row):
    wrong, right = [], []
    extra_row("test-wrong", 0.5, wrong)  # half a patch off everywhere: wrong in every mode
    extra_row("test-right", 0.0, right)
    rec = _bench(tmp_path, "--preset", "smoke", "--backends", "test-wrong,test-right")
    for mode in MODES:
        row = _row(rec, "test-wrong", mode)
        assert row["kind"] == "test" and row["status"] == "wrong" and row["refcheck"]["passed"] is False, row
        assert "median_s" not in row and "times_s" not in row and "DISAGREES" in row["reason"]
        good = _row(rec, "test-right", mode)
        assert good["status"] == "ok" and good["refcheck"]["passed"] is True and len(good["times_s"]) == 1
    assert _row(rec, "test-wrong", "argmax")["refcheck"]["detail"] == "displacements are not whole patches"
    assert wrong == list(MODES)  # one checking call per mode, none timed
    assert right == [m for m in MODES for _ in range(2)]  # checked, then timed once


def test_default_preset_refcheck_reports_every_rows_agreement(tmp_path, monkeypatch, capsys):
    # The reduced check problem (as for a full-size preset) keeps the check cheap; the timed rows still
    # run the default preset itself, once each.
    monkeypatch.setattr(refcheck, "MAX_REFERENCE_FLOPS", 1e9)
    rec = _bench(tmp_path, "--refcheck")
    printed = capsys.readouterr().out
    assert rec["preset"]["name"] == DEFAULT_PRESET and rec["settings"]["refcheck"] is True
    assert rec["settings"]["refcheck_note"].startswith("checked on a reduced problem: F=2")
    checked = 0
    for row in rec["rows"]:
        c = row["refcheck"]
        if row["kind"] in ("floor", "yardstick"):
            assert c["status"] == "n/a" and row["status"] == "ok"
        elif row["status"] == "skipped":
            assert c is None and row["reason"]
        else:
            assert row["status"] == "ok" and c["status"] == "pass" and c["problem"]["reduced"], row
            assert 0 <= c["err"] <= c["tol"] and row["times_s"] and "shape" not in row
            checked += 1
    assert checked >= 9  # research and torch in every mode, sdpa in both soft modes, at the least
    assert printed.count("refcheck agrees with the float64 reference") == checked
    assert "DISAGREES" not in printed
