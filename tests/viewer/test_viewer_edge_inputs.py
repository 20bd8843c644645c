"""Inputs a review found the viewer and ``eval`` mishandled: ``--static-px 0``, a name that opens an HTML comment
in the page's data, metadata strings that look like JSON, and ``eval --frames`` decoding whole videos."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from ditflow_fast.cli.main import main
from ditflow_fast.video_io import write_video
from ditflow_fast.viewer import motion


def test_static_px_zero_scores_still_tracks_as_static_not_nan():
    still = np.zeros((5, 4, 2))  # five tracks that never move
    moving = np.cumsum(np.ones((5, 4, 2)), axis=1)
    for a, b in ((still, still), (still, moving), (moving, moving)):
        sim = motion.similarity(a, b, static_px=0.0)
        assert np.isfinite(sim).all()
    assert np.allclose(motion.similarity(still, still, static_px=0.0), 1.0)
    assert not motion.moving_tracks(still, static_px=0.0).any() and motion.moving_tracks(moving, static_px=0.0).all()


def test_a_name_that_opens_an_html_comment_cannot_swallow_the_viewer_script():
    from ditflow_fast.viewer.page import render_page

    rng = np.random.default_rng(0)
    fields = [("reference", rng.normal(size=(2, 2, 6, 2)).astype(np.float32),
               rng.integers(0, 256, (2, 16, 24, 3), dtype=np.uint8))]
    name = "AMF of <!--<script>clip & </script>.mp4"
    page = render_page(fields, {"height": 2, "width": 3, "video": name}, scale=1.0, title=name)
    data = re.search(r'<script type="application/json" id="ditflow-data">(.*?)</script>', page, re.S).group(1)
    assert "<" not in data and ">" not in data and "&" not in data  # nothing the HTML parser can act on
    parsed = json.loads(data)
    assert parsed["info"]["video"] == name and parsed["title"] == name


def test_metadata_strings_that_look_like_json_stay_strings(tmp_path):
    from ditflow_fast.viewer.output import load_amf, save_amf

    info = {"height": 2, "width": 3, "video": "2024", "model": "null", "frames": 2}
    save_amf(tmp_path / "a.safetensors", np.zeros((2, 2, 6, 2), np.float32), info)
    _, got = load_amf(tmp_path / "a.safetensors")
    assert {k: got[k] for k in info} == info


def test_eval_decodes_only_the_frames_it_compares(tmp_path, monkeypatch, capsys):
    pytest.importorskip("cv2")
    from ditflow_fast import video_io

    frames = np.random.default_rng(1).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    write_video(frames, tmp_path / "v", fmt="frames")
    asked, real = [], video_io._read_frames
    monkeypatch.setattr(video_io, "_read_frames", lambda path, n, option: asked.append(n) or real(path, n, option))
    assert main(["eval", "--reference", str(tmp_path / "v"), "--generated", str(tmp_path / "v"), "--frames", "3",
                 "--json", "--grid", "4"]) == 0
    assert asked == [3, 3] and json.loads(capsys.readouterr().out)["frames"] == 3


def test_eval_help_names_ftd(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "Fréchet Tracking Distance (FTD)" in " ".join(capsys.readouterr().out.split())


def test_amf_on_a_clip_shorter_than_the_models_default_says_so(tmp_path, capsys):
    frames = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    write_video(frames, tmp_path / "short", fmt="frames")
    assert main(["amf", "--video", str(tmp_path / "short"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "has 3 frames" in err and "this model's default; pass --frames N" in err and "(--frames)" not in err


def test_amf_refuses_a_name_that_is_not_utf8_before_any_work(tmp_path, capsys):
    import os

    frames = np.random.default_rng(3).integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)
    bad = os.fsdecode(os.fsencode(str(tmp_path)) + b"/clip\xff")
    try:
        write_video(frames, bad, fmt="frames")
    except OSError:
        pytest.skip("this file system refuses a name that is not UTF-8")
    assert main(["amf", "--video", bad, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--video" in err and "not valid UTF-8" in err and not (tmp_path / "out").exists()
