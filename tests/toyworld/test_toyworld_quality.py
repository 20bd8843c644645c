"""The sample-quality numbers (shape IoU, kind, speed, jerk) on videos whose answer is known (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from ditflow_fast.toyworld.quality import KEYS, main, summarise, summarise_by_kind, video_quality, world_quality
from ditflow_fast.toyworld.world import RADIUS, SPEED_RANGE, condition_index, make_clip, render_object


def _clip(kind, colour, velocity=(1.5, 0.5), start=(9.0, 10.0), radius=RADIUS):
    return make_clip(np.random.default_rng(3), condition=condition_index(kind, colour), velocity=velocity,
                     start=start, radius=radius)


def test_world_clips_score_as_a_perfect_model():
    q = world_quality(12)
    assert set(q) == set(KEYS) and q["tracked"] == 8
    assert q["iou"] > 0.85 and q["kind_ok"] > 0.9 and q["jerk"] < 0.5
    assert SPEED_RANGE[0] <= q["speed"] <= SPEED_RANGE[1]


def test_every_kind_is_recognised_and_a_wrong_shape_is_not():
    for kind in ("square", "disk", "cross"):
        for colour in ("red", "blue"):
            c = _clip(kind, colour)
            q = video_quality(c.video, c.condition)
            assert q["kind_ok"] == 1.0 and q["iou"] > 0.85, (kind, colour, q)
            assert abs(q["speed"] - np.hypot(1.5, 0.5)) < 0.3 and q["jerk"] < 0.5
    disk = _clip("disk", "red")
    as_cross = video_quality(disk.video, condition_index("cross", "red"))
    assert as_cross["kind_ok"] == 0.0 and as_cross["iou"] < video_quality(disk.video, disk.condition)["iou"] - 0.15
    blob = _clip("disk", "red", radius=RADIUS * 1.6, velocity=(0.5, 0.2), start=(15.0, 15.0))  # too big: a blob
    assert video_quality(blob.video, blob.condition)["iou"] < 0.5


def test_jittery_motion_has_jerk_and_a_lost_object_is_not_tracked():
    c = _clip("square", "green")
    rng = np.random.default_rng(0)
    video = c.video.copy()
    bg = video[0] * 0 + 0.45
    for f in range(video.shape[0]):  # the object jumps around instead of sliding
        alpha, rgb = render_object(0, np.array([0.15, 0.80, 0.20]), rng.uniform(8, 24, size=2))
        video[f] = bg * (1 - alpha) + rgb * alpha
    q = video_quality(video, c.condition)
    assert q["jerk"] > 3.0 and q["kind_ok"] == 1.0
    empty = np.full_like(c.video, 0.45)
    q = video_quality(empty, c.condition)
    assert q["tracked"] == 0 and q["iou"] == 0.0 and np.isnan(q["jerk"])
    good = video_quality(c.video, c.condition)
    both = summarise([q, good])  # a lost video's NaN speed is skipped, its zero IoU counts
    assert both["speed"] == good["speed"] and both["iou"] == good["iou"] / 2 and both["tracked"] == 4


def test_summaries_by_kind_group_the_right_videos():
    clips = [_clip(kind, colour) for kind in ("square", "cross") for colour in ("red", "green", "blue")]
    rows = [video_quality(c.video, c.condition) for c in clips]
    rows[3] = {**rows[3], "iou": 0.0}  # one bad cross: it must pull down the crosses' mean only
    by_kind = summarise_by_kind(rows, [c.condition for c in clips])
    assert list(by_kind) == ["square", "cross"]  # no disks among the videos: no disk entry
    assert by_kind["square"] == summarise(rows[:3]) and by_kind["cross"] == summarise(rows[3:])
    assert by_kind["square"]["iou"] > 0.85 > by_kind["cross"]["iou"]


def test_command_line_help_renders(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--cfg" in out and "--cfg-min-t" in out
