"""The bench's SVG chart (ditflow_fast/bench/chart.py) and ``bench --from`` / ``--chart`` (re-reporting a record)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
import torch

from ditflow_fast.bench.chart import chart_svg
from ditflow_fast.cli.main import main

_SVG = "{http://www.w3.org/2000/svg}"


def _row(impl, mode, status="ok", x=None, paired=None, median=0.05):
    return {"impl": impl, "mode": mode, "status": status, "x_floor": x, "x_floor_paired": paired, "median_s": median,
            "predicted_bytes": 26e9 if status == "predicted" else None}


def _record(rows, preset="smoke") -> dict:
    return {"preset": {"name": preset, "tokens": 1320, "heads": 2, "head_dim": 8, "frames": 2, "height": 3,
                       "width": 4, "text_tokens": 0},
            "dtype": "float32", "device": "cpu", "machine": {"gpu": None, "cpu": "Test CPU", "cores": 2},
            "git": {"commit": "abcdef1234567", "dirty": True}, "settings": {"repeats": 3, "warmup": 1},
            "rows": [_row("gemm", "gemm", x=1.0), *rows]}


def _bars(svg: str) -> dict[str, float]:
    """Bar widths by the label left of them (the text element just before each bar)."""
    items = list(ET.fromstring(svg))
    return {items[i - 1].text: float(el.get("width")) for i, el in enumerate(items)
            if el.tag == _SVG + "rect" and el.get("fill") != "#fff"}


def test_bars_are_the_rows_ratios_to_the_gemm_and_refused_rows_say_why():
    rec = _record([_row("research", "argmax", "predicted"), _row("cpu", "argmax", x=0.7, paired=0.5),
                   _row("torch", "argmax", x=2.0), _row("triton", "argmax", "skipped"),
                   _row("sdpa", "soft", "wrong")])
    svg = chart_svg(rec)
    bars = _bars(svg)
    assert set(bars) == {"cpu", "torch"}  # skipped rows are left out; refused ones get no bar
    assert bars["torch"] / bars["cpu"] == pytest.approx(2.0 / 0.5, rel=1e-3)  # paired where the row has it
    assert "0.50x (50.0 ms)" in svg and "2.00x" in svg
    assert "not run: predicted peak 26.0 GB" in svg and "WRONG" in svg
    assert "abcdef1234 (dirty)" in svg and "Test CPU" in svg
    assert "paired" in svg  # the legend says which ratio the bars are


def test_medians_ratio_when_no_row_is_paired():
    svg = chart_svg(_record([_row("cpu", "soft", x=1.1), _row("torch", "soft", x=2.2)]))
    assert "paired" not in svg and "medians" in svg
    bars = _bars(svg)
    assert bars["torch"] / bars["cpu"] == pytest.approx(2.0, rel=1e-3)


def test_a_record_without_amf_rows_is_an_error():
    with pytest.raises(ValueError, match="nothing to chart"):
        chart_svg(_record([_row("cpu", "soft", "skipped")]))


def _write(path, *records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_from_prints_the_last_record_of_the_preset_and_charts_it(tmp_path, capsys):
    older = _record([_row("cpu", "soft", x=1.5)], preset="cpu-5b")
    newer = _record([_row("cpu", "soft", x=1.2)], preset="cpu-5b")
    other = _record([_row("cpu", "soft", x=9.0)], preset="cogvideox-5b-f6")
    for r in (older, newer, other):
        r["rows"][1].update(refcheck={"status": "n/a"}, flops_per_s=1e9, min_s=0.04, max_s=0.06)
        r["rows"][0].update(refcheck={"status": "n/a"}, flops_per_s=1e9, min_s=0.04, max_s=0.06, median_s=0.04)
    results = _write(tmp_path / "r.jsonl", older, newer, other)
    chart = tmp_path / "charts" / "c.svg"
    assert main(["bench", "--from", str(results), "--preset", "cpu-5b", "--chart", str(chart)]) == 0
    printed = capsys.readouterr().out
    assert "preset smoke" not in printed and "1.20x" in printed and "1.50x" not in printed
    assert "1.20x" in chart.read_text()
    assert main(["bench", "--from", str(results)]) == 0  # no --preset: the file's last record
    assert "9.00x" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--chart", "c.png"], "--chart must name an .svg file"),
    (["--from", "{tmp}/missing.jsonl"], "no such file"),
    (["--from", "{tmp}/bad.jsonl"], "line 2 is not a JSON record"),
    (["--from", "{tmp}/good.jsonl", "--preset", "cpu-5b"], "no record of preset 'cpu-5b'"),
    (["--from", "{tmp}/good.jsonl", "--modes", "soft"], "--modes would be ignored"),
    (["--from", "{tmp}/good.jsonl", "--repeats", "3"], "--repeats would be ignored"),
    (["--from", "{tmp}/good.jsonl", "--no-refcheck"], "--[no-]refcheck would be ignored"),
])
def test_from_and_chart_errors_name_the_option(tmp_path, capsys, args, message):
    _write(tmp_path / "good.jsonl", _record([_row("cpu", "soft", x=1.0)]))
    (tmp_path / "bad.jsonl").write_text(json.dumps(_record([])) + "\n{oops\n")
    assert main(["bench", *[a.format(tmp=tmp_path) for a in args]]) == 2
    assert message in capsys.readouterr().err


def test_a_run_with_chart_draws_what_it_appended(tmp_path):
    out, chart = tmp_path / "b.jsonl", tmp_path / "b.svg"
    assert main(["bench", "--preset", "smoke", "--no-memory", "--repeats", "1", "--warmup", "0", "--backends", "torch",
                 "--modes", "soft", "--out", str(out), "--chart", str(chart)]) == 0
    record = json.loads(out.read_text())
    assert chart.read_text() == chart_svg(record)
    assert "torch" in _bars(chart.read_text())


def test_layout_bthd_times_the_same_values_laid_out_as_diffusers_processors_hand_them_over(tmp_path, capsys):
    from ditflow_fast.bench.spec import CaseSpec, make_inputs

    plain = make_inputs(CaseSpec("cpu", "soft", "smoke"))
    q, k = make_inputs(CaseSpec("cpu", "soft_fwd_bwd", "smoke", layout="bthd"), requires_grad=True)
    assert torch.equal(q, plain[0]) and torch.equal(k, plain[1])
    assert q.is_leaf and not q.is_contiguous() and q.transpose(1, 2).is_contiguous()
    out = tmp_path / "b.jsonl"
    assert main(["bench", "--preset", "smoke", "--no-memory", "--repeats", "1", "--warmup", "0", "--backends",
                 "cpu,torch", "--layout", "bthd", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["settings"]["layout"] == "bthd" and "--layout bthd" in capsys.readouterr().out
    checked = [r for r in record["rows"] if r["status"] == "ok" and r["refcheck"]["status"] not in ("n/a",)]
    assert checked and all(r["refcheck"]["passed"] for r in checked)  # gradients included, in fwd+bwd
    assert "bthd layout" in chart_svg(record)
    assert main(["bench", "--preset", "smoke", "--layout", "bhdt"]) == 2
    assert "--layout must be one of bhtd, bthd" in capsys.readouterr().err
