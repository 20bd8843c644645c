"""RoPECraft's Fréchet Tracking Distance: the discrete Fréchet distance against its recursive definition, FTD on
the toy world's colour tracks and on ``eval``'s grid tracks (0 for the same tracks, symmetric, growing with
perturbation, a reversed motion worse than the same one), and its place in the demo's tables and eval's output."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from ditflow_fast.toyworld import demo
from ditflow_fast.toyworld.metrics import anchored, frechet_tracking_distance, track_condition
from ditflow_fast.toyworld.world import make_clip, reference_clips
from ditflow_fast.viewer import motion


def _frechet_recursive(a, b):
    """Eiter and Mannila's definition, memoised recursion, for small polylines."""
    @functools.cache
    def c(i, j):
        d = float(np.linalg.norm(a[i] - b[j]))
        if i == 0 and j == 0:
            return d
        if i == 0:
            return max(c(0, j - 1), d)
        if j == 0:
            return max(c(i - 1, 0), d)
        return max(min(c(i - 1, j), c(i - 1, j - 1), c(i, j - 1)), d)
    return c(len(a) - 1, len(b) - 1)


def test_discrete_frechet_is_the_recursive_definition():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20, 6, 2))
    b = rng.normal(size=(20, 6, 2))
    got = motion.discrete_frechet(a, b)
    assert got.shape == (20,)
    np.testing.assert_allclose(got, [_frechet_recursive(x, y) for x, y in zip(a, b, strict=True)], rtol=1e-12)
    uneven = motion.discrete_frechet(a[0, :4], b[0])  # lengths may differ
    assert uneven == pytest.approx(_frechet_recursive(a[0, :4], b[0]))
    # a known case: two parallel segments one apart, and a walk that must come back
    assert motion.discrete_frechet(np.array([[0, 0], [1, 0], [2, 0]]), np.array([[0, 1], [1, 1], [2, 1]])) == 1.0
    assert motion.discrete_frechet(np.array([[0, 0], [2, 0]]), np.array([[0, 0], [2, 0], [0, 0]])) == 2.0
    with pytest.raises(ValueError, match="polylines"):
        motion.discrete_frechet(a, b[:3])


def _line(v, frames=8, start=(10.0, 12.0)):
    return np.asarray(start, float)[None] + np.arange(frames)[:, None] * np.asarray(v, float)[None]


def test_toy_ftd_zero_symmetric_grows_and_sees_reversal():
    rng = np.random.default_rng(1)
    ref = _line((1.5, -0.5))
    assert frechet_tracking_distance(ref, ref) == 0.0
    # where the object is does not enter (tracks start at one point in RoPECraft's setting)
    assert frechet_tracking_distance(ref, ref + np.array([7.0, -3.0])) == pytest.approx(0.0, abs=1e-12)
    other = _line((-0.3, 1.2), start=(20.0, 5.0))
    assert frechet_tracking_distance(ref, other) == pytest.approx(frechet_tracking_distance(other, ref))
    noise = rng.normal(size=ref.shape)
    grown = [frechet_tracking_distance(ref, ref + s * noise) for s in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert grown[0] == 0.0 and all(b > a for a, b in zip(grown, grown[1:], strict=False)), grown
    reversed_ = frechet_tracking_distance(ref, ref[::-1])
    assert reversed_ > frechet_tracking_distance(ref, ref) and reversed_ > frechet_tracking_distance(ref, ref + noise)
    # units: a whole-frame offset at the end of a 32-px frame's path is 1
    assert frechet_tracking_distance(_line((0, 0)), _line((32 / 7, 0)), size=32) == pytest.approx(1.0)


def test_toy_ftd_lost_frames():
    ref = _line((1.0, 1.0))
    gen = ref.copy()
    gen[[0, 3]] = np.nan  # lost frames hold the last found position (the first found one before it)
    np.testing.assert_allclose(anchored(gen)[[0, 1, 3]], [[0, 0], [0, 0], [1, 1]])
    assert 0 < frechet_tracking_distance(ref, gen) < frechet_tracking_distance(ref, ref[::-1])
    assert np.isnan(frechet_tracking_distance(ref, np.full_like(ref, np.nan)))  # never found: no FTD
    with pytest.raises(ValueError, match="paired"):
        frechet_tracking_distance(ref, ref[:5])


def test_toy_ftd_on_world_clips_orders_same_unrelated_reversed():
    """On rendered clips through the colour tracker: another object on the same path scores near 0, its time
    reversal worst, an unrelated motion in between (on average over clips)."""
    rng = np.random.default_rng(2)
    same, rev, unrelated = [], [], []
    for clip in reference_clips(3, 6):
        ref_track = track_condition(clip.video, clip.condition)
        cond = (clip.condition + 5) % 12
        twin = make_clip(rng, condition=cond, velocity=clip.velocity, start=clip.track[0])
        t = track_condition(twin.video, cond)
        other = make_clip(rng, condition=cond)
        same.append(frechet_tracking_distance(ref_track, t))
        rev.append(frechet_tracking_distance(ref_track, t[::-1]))
        unrelated.append(frechet_tracking_distance(ref_track, track_condition(other.video, cond)))
    assert max(same) < 0.05 and np.mean(same) < np.mean(unrelated) < np.mean(rev)


def _tracks(v, n=4, t=6):
    return np.stack([np.arange(t)[:, None] * np.asarray(v, float)[None] + 3 * i for i in range(n)])


def test_grid_ftd_pairs_tracks_by_index():
    right, still = _tracks((1, 0)), _tracks((0, 0))
    mix = np.concatenate([right, still])
    r = motion.frechet_tracking_distance(mix, mix, width=10, height=20)
    assert r["ftd"] == 0.0 and r["pairs"] == 8 and r["moving"] == {"ftd": 0.0, "pairs": 4}
    # symmetric, and in units of the frame: a 5-px horizontal miss in a 10-px-wide frame is 0.5
    a = motion.frechet_tracking_distance(right, still, width=10, height=20)
    assert a["ftd"] == pytest.approx(0.5) and motion.frechet_tracking_distance(
        still, right, width=10, height=20)["ftd"] == pytest.approx(0.5)
    assert a["moving"]["pairs"] == 4 and motion.frechet_tracking_distance(
        still, right, width=10, height=20)["moving"]["pairs"] == 0  # moving: the reference's tracks that move
    lost = right.copy()
    lost[1, 3:] = np.nan  # a pair counts only when both tracks reach the last frame
    assert motion.frechet_tracking_distance(right, lost, width=10, height=20)["pairs"] == 3
    gone = motion.frechet_tracking_distance(right, np.full_like(right, np.nan), width=10, height=20)
    assert gone["ftd"] is None and gone["pairs"] == 0
    with pytest.raises(ValueError, match="same N"):
        motion.frechet_tracking_distance(right, right[:2], width=10, height=20)


def _toy_uint8(index, seed=0):
    clip = reference_clips(seed, index + 1)[index]
    return (np.clip(clip.video.transpose(0, 2, 3, 1), 0, 1) * 255 + 0.5).astype(np.uint8)


def test_eval_ftd_itself_reversal_and_another_clip():
    pytest.importorskip("cv2")
    v, w = _toy_uint8(0), _toy_uint8(2)
    same, rev, other = motion.evaluate(v, v), motion.evaluate(v, v[::-1].copy()), motion.evaluate(v, w)
    assert same["frechet_tracking_distance"] == 0.0 and same["moving"]["frechet_tracking_distance"] == 0.0
    assert rev["moving"]["frechet_tracking_distance"] > other["moving"]["frechet_tracking_distance"] > 0
    assert rev["frechet_tracking_distance"] > 0 and same["ftd_pairs"] > 0


def test_eval_cli_prints_ftd(tmp_path, capsys):
    pytest.importorskip("cv2")
    from ditflow_fast.cli.main import main
    from ditflow_fast.video_io import write_video

    write_video(_toy_uint8(0), tmp_path / "ref", fmt="frames")
    write_video(_toy_uint8(1), tmp_path / "gen", fmt="frames")
    assert main(["eval", "--reference", str(tmp_path / "ref"), "--generated", str(tmp_path / "gen"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["frechet_tracking_distance"] > 0 and "lower is better" in res["ftd_reading"]
    assert set(res["moving"]) >= {"frechet_tracking_distance", "ftd_pairs"}
    assert main(["eval", "--reference", str(tmp_path / "ref"), "--generated", str(tmp_path / "ref")]) == 0
    out = capsys.readouterr().out
    assert "frechet_tracking_distance (RoPECraft's FTD, lower is better): 0.0000" in out


def _records():
    base = dict(reference="red disk", generated="blue square", ref_velocity=[1.0, 0.0], endpoint_error_px=1.0,
                tracked_frames=8, area_ratio=1.0, final_loss=None, seconds=1.0)
    recs = []
    for clip, (mf0, ftd0, mf1, ftd1) in enumerate([(0.1, 0.30, 0.9, 0.10), (0.2, 0.20, 0.5, 0.25),
                                                  (0.0, float("nan"), 0.7, 0.05)]):
        recs.append(dict(base, clip=clip, seed=0, row="no guidance", motion_fidelity=mf0, ftd=ftd0))
        recs.append(dict(base, clip=clip, seed=0, row="DiTFlow latent", motion_fidelity=mf1, ftd=ftd1))
    return recs


def test_demo_summary_and_tables_carry_ftd(tmp_path):
    recs = _records()
    s = demo.summarise(recs, ["no guidance", "DiTFlow latent"])
    lat = s["DiTFlow latent"]
    assert lat["ftd_mean"] == pytest.approx(np.mean([0.10, 0.25, 0.05])) and lat["ftd_n"] == 3
    assert s["no guidance"]["ftd_mean"] == pytest.approx(0.25) and s["no guidance"]["ftd_n"] == 2
    # paired where both objects were found: -0.20 and +0.05; won where FTD fell
    assert lat["d_ftd_mean"] == pytest.approx(-0.075) and lat["ftd_pairs"] == 2 and lat["ftd_wins"] == 1
    meta = dict(clips=3, seeds=1, clip_seed=0, settings={}, seconds=1.0)
    md = demo.summary_markdown(s, meta)
    assert "FTD (mean ± std; lower is better)" in md and "FTD - FTD(no guidance) (mean ± std; lower is better)" in md
    assert "| 0.250 ± 0.050 (2 of 3 runs) |" in md and "| -0.075 ± 0.125 | 0.125 | 1 / 2 |" in md
    demo._write(tmp_path, recs, s, meta)
    js = json.loads((tmp_path / "summary.json").read_text())
    assert js["rows"]["DiTFlow latent"]["ftd_mean"] == pytest.approx(lat["ftd_mean"])
    assert "ftd" in (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
    old = [{k: v for k, v in r.items() if k != "ftd"} for r in recs]  # records from before FTD: n/a, not an error
    md_old = demo.summary_markdown(demo.summarise(old, ["no guidance", "DiTFlow latent"]), meta)
    assert "nan" not in md_old.lower() and "n/a" in md_old
