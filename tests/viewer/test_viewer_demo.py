"""The demo's tables and pictures: row labels on the side-by-side PNG, "n/a" (never "nan") where a metric
cannot be computed, valid JSON (null) in summary.json."""

from __future__ import annotations

import csv
import json

import numpy as np

from ditflow_fast.toyworld import demo, media


def _records():
    nan = float("nan")
    base = dict(clip=0, seed=0, reference="user clip", generated="blue square", ref_velocity=[nan, nan],
                endpoint_error_px=1.5, tracked_frames=8, area_ratio=nan, final_loss=None, seconds=1.0)
    return [dict(base, row="no guidance", motion_fidelity=nan), dict(base, row="DiTFlow latent", motion_fidelity=nan)]


def test_tables_print_na_never_nan(tmp_path):
    recs = _records()
    summary = demo.summarise(recs, ["no guidance", "DiTFlow latent"])
    meta = dict(clips=1, seeds=1, clip_seed=0, settings={}, seconds=1.0)
    md = demo.summary_markdown(summary, meta)
    assert "nan" not in md.lower() and "n/a" in md
    assert "| no guidance | 1 | n/a | 1.50 ± 0.00 |" in md
    demo._write(tmp_path, recs, summary, meta)
    for name in ("results.csv", "summary.json", "summary.md"):
        assert "nan" not in (tmp_path / name).read_text().lower(), name
    with open(tmp_path / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["motion_fidelity"] == "n/a" and rows[0]["endpoint_error_px"] == "1.5"
    js = json.loads((tmp_path / "summary.json").read_text(), parse_constant=lambda c: (_ for _ in ()).throw(
        AssertionError(f"{c} in JSON")))
    assert js["rows"]["no guidance"]["mf_mean"] is None
    assert demo._fmt(float("inf"), ".2f") == "n/a" and demo._fmt(0.25, "+.3f") == "+0.250"


def test_side_by_side_png_has_row_labels(tmp_path):
    from PIL import Image

    videos = [np.full((3, 3, 8, 8), v, np.float32) for v in (0.2, 0.8)]
    plain = Image.open(media.save_strip(tmp_path / "a.png", videos))
    labelled = Image.open(media.save_strip(tmp_path / "b.png", videos, ["ref red disk", "DiTFlow latent"]))
    assert labelled.height == plain.height and labelled.width > plain.width + 6 * len("DiTFlow latent")
    left = np.asarray(labelled.convert("L"))[:, : labelled.width - plain.width]
    assert (left < 128).any(axis=1)[: plain.height // 2].any() and (left < 128).any(axis=1)[plain.height // 2:].any()
    gif = Image.open(media.save_gif(tmp_path / "c.gif", videos, ["ref red disk", "DiTFlow latent"]))
    top = np.asarray(gif.convert("L"))[:12]
    assert (top < 128).any(), "the GIF's tiles carry their labels"


def test_the_demo_writes_the_viewer_of_each_row_for_the_first_run(tmp_path):
    from ditflow_fast.viewer.output import load_amf

    demo.run_demo(tmp_path, clips=1, seeds=1, rows=["no guidance", "DiTFlow latent"],
                  settings=demo.DemoSettings(steps=3, guided_steps=1, opt_iters=1), log=lambda *a: None)
    for row in ("no_guidance", "DiTFlow_latent"):
        folder = tmp_path / "viewers" / row / "amf"
        html = (folder / "amf.html").read_text()
        assert "<script" in html and "http://" not in html and "https://" not in html
        ref, info = load_amf(folder / "amf.safetensors")
        gen, _ = load_amf(folder / "amf_generated.safetensors")
        assert ref.shape == gen.shape == (8, 8, 64, 2) and info["block"] == 3
    # the same reference field for both rows: it depends on the reference clip only
    a, _ = load_amf(tmp_path / "viewers" / "no_guidance" / "amf" / "amf.safetensors")
    b, _ = load_amf(tmp_path / "viewers" / "DiTFlow_latent" / "amf" / "amf.safetensors")
    assert np.array_equal(a, b)
