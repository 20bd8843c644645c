"""``ditflow-fast eval``: Motion Fidelity of any two videos (LK tracker, CoTracker refusal), and the tracker
checked against the toy world's true tracks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ditflow_fast.cli.main import main
from ditflow_fast.video_io import write_video
from ditflow_fast.viewer import motion


def _tracks(v, n=4, t=6, start=0.0):
    return np.stack([start + np.arange(t)[:, None] * np.asarray(v, float)[None] + i for i in range(n)])


def test_motion_fidelity_definition_without_nan():
    right, left, still = _tracks((1, 0)), _tracks((-1, 0)), _tracks((0, 0))
    mix = np.concatenate([right, still])
    assert motion.motion_fidelity(mix, mix)["motion_fidelity"] == pytest.approx(1.0)
    r = motion.motion_fidelity(right, left)
    assert r["motion_fidelity"] == pytest.approx(-1.0) and r["motion_fidelity_symmetric"] == pytest.approx(-1.0)
    s = motion.motion_fidelity(still, still)  # zero motion: no NaN, a static match is a match
    assert s["motion_fidelity"] == pytest.approx(1.0) and s["moving"]["motion_fidelity"] is None
    assert motion.motion_fidelity(still, right)["motion_fidelity"] == pytest.approx(0.0)
    # one-directional: every generated track finds its best reference; symmetric also asks the converse
    one = motion.motion_fidelity(mix, right)
    assert one["motion_fidelity"] == pytest.approx(1.0) and one["motion_fidelity_symmetric"] == pytest.approx(0.75)
    lost = right.copy()
    lost[0, 3:] = np.nan  # a lost track is left out, never NaN
    r = motion.motion_fidelity(right, lost)
    assert r["generated_tracks"] == 3 and r["motion_fidelity"] == pytest.approx(1.0)
    gone = np.full_like(right, np.nan)
    r = motion.motion_fidelity(right, gone)
    assert r["motion_fidelity"] is None and r["motion_fidelity_symmetric"] is None


def _toy(index=0, seed=0):
    from ditflow_fast.toyworld.world import reference_clips

    clip = reference_clips(seed, index + 1)[index]
    return clip, (np.clip(clip.video.transpose(0, 2, 3, 1), 0, 1) * 255 + 0.5).astype(np.uint8)


def test_lk_tracker_against_the_toy_worlds_true_tracks():
    pytest.importorskip("cv2")
    from ditflow_fast.toyworld.tracker_check import track_errors

    errs = [track_errors(_toy(i)[0]) for i in range(3)]
    assert np.mean([e["object_px"] for e in errs]) < 1.0
    assert np.mean([e["background_px"] for e in errs]) < 1.5
    assert np.mean([e["kept"] for e in errs]) > 0.4


def test_mf_of_a_clip_itself_its_reversal_and_another_clip():
    pytest.importorskip("cv2")
    _, v = _toy(0)
    _, w = _toy(2)
    same = motion.evaluate(v, v)
    rev = motion.evaluate(v, v[::-1].copy())
    other = motion.evaluate(v, w)
    assert same["motion_fidelity"] == pytest.approx(1.0) and same["motion_fidelity_symmetric"] == pytest.approx(1.0)
    assert rev["moving"]["motion_fidelity"] < 0 < other["moving"]["motion_fidelity"] < 1
    assert rev["motion_fidelity"] < same["motion_fidelity"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    _, v = _toy(0)
    write_video(v, root / "ref", fmt="frames")
    from PIL import Image

    big = np.stack([np.asarray(Image.fromarray(f).resize((48, 48))) for f in v])
    write_video(big[:6], root / "gen", fmt="frames")  # another size and fewer frames
    write_video(v, root / "ref.mp4", fmt="mp4")
    return root


def test_eval_json_prints_both_forms_for_any_two_videos(videos, capsys):
    pytest.importorskip("cv2")
    assert main(["eval", "--reference", str(videos / "ref"), "--generated", str(videos / "gen"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res) >= {"motion_fidelity", "motion_fidelity_symmetric", "moving", "tracker", "notes"}
    assert res["frames"] == 6 and res["size"] == [32, 32] and res["tracker"] == "lk"
    assert any("frame counts differ" in n for n in res["notes"]) and any("resized" in n for n in res["notes"])
    assert 0.5 < res["motion_fidelity"] <= 1.0 and np.isfinite(res["motion_fidelity_symmetric"])
    assert main(["eval", "--reference", str(videos / "ref.mp4"), "--generated", str(videos / "ref.mp4")]) == 0
    out = capsys.readouterr().out
    assert "motion_fidelity" in out and "nan" not in out.lower()


def test_eval_clean_errors(videos, tmp_path, monkeypatch, capsys):
    assert main(["eval", "--reference", str(tmp_path / "none.mp4"), "--generated", str(videos / "gen")]) == 2
    assert "no such file" in capsys.readouterr().err
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))  # an empty torch hub cache
    assert main(["eval", "--reference", str(videos / "ref"), "--generated", str(videos / "gen"),
                 "--tracker", "cotracker"]) == 2
    err = capsys.readouterr().err
    assert "cotracker" in err and "torch hub cache" in err and "--tracker lk" in err
    assert main(["eval", "--reference", str(videos / "ref"), "--generated", str(videos / "gen"),
                 "--frames", "9"]) == 2


def test_eval_errors_name_the_option_the_video_came_from(videos, tmp_path, capsys):
    pytest.importorskip("cv2")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video")
    assert main(["eval", "--reference", str(bad), "--generated", str(videos / "gen")]) == 2
    err = capsys.readouterr().err
    assert f"--reference {bad}: cannot decode it as a video" in err and "--video" not in err
    (tmp_path / "empty").mkdir()
    assert main(["eval", "--reference", str(videos / "ref"), "--generated", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert f"--generated {tmp_path / 'empty'}: the folder holds no frames" in err and "--video" not in err
