"""The synthetic world, the colour tracker and the Motion Fidelity score (fast, numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from ditflow_fast.toyworld import media
from ditflow_fast.toyworld.metrics import (
    endpoint_error,
    motion_fidelity,
    track_colour,
    track_condition,
    tracklet_similarity,
)
from ditflow_fast.toyworld.world import (
    COLOURS,
    KINDS,
    NULL_CONDITION,
    NUM_CONDITIONS,
    RADIUS,
    SIZE,
    colour_of,
    condition_index,
    condition_name,
    condition_parts,
    make_batch,
    make_clip,
    reference_clips,
)


def test_clip_is_deterministic_and_well_formed():
    a = make_clip(np.random.default_rng(5))
    b = make_clip(np.random.default_rng(5))
    np.testing.assert_array_equal(a.video, b.video)
    np.testing.assert_array_equal(a.track, b.track)
    assert a.video.shape == (8, 3, 32, 32) and a.video.dtype == np.float32
    assert 0.0 <= a.video.min() and a.video.max() <= 1.0
    assert 0 <= a.condition < NUM_CONDITIONS and condition_parts(a.condition) == (a.kind, a.colour)
    # constant velocity, and the whole object stays inside the frame
    np.testing.assert_allclose(np.diff(a.track, axis=0), np.broadcast_to(a.velocity, (7, 2)), atol=1e-5)
    assert a.track.min() >= RADIUS + 1 - 1e-5 and a.track.max() <= SIZE - 2 - RADIUS + 1e-5


def test_fixed_parts_are_honoured_and_others_unchanged():
    base = make_clip(np.random.default_rng(1))
    other = make_clip(np.random.default_rng(1), condition=condition_index("disk", "blue"), velocity=(1.0, -0.5))
    assert other.name == "blue disk" and other.velocity == (1.0, -0.5)
    assert base.condition != other.condition or base.velocity != other.velocity
    # the background is drawn in the same order: in frame 0, pixels far from both objects agree
    far = np.ones((SIZE, SIZE), bool)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for c in (base, other):
        x, y = c.track[0]
        far &= (np.abs(xx - x) > RADIUS + 2) | (np.abs(yy - y) > RADIUS + 2)
    assert far.any()
    np.testing.assert_allclose(base.video[0][:, far], other.video[0][:, far])


def test_conditions_cover_every_kind_and_colour():
    names = {condition_name(i) for i in range(NUM_CONDITIONS)}
    assert len(names) == len(KINDS) * len(COLOURS) == NUM_CONDITIONS
    assert condition_name(NULL_CONDITION) == "empty"
    with pytest.raises(ValueError, match="condition"):
        condition_parts(NUM_CONDITIONS)
    with pytest.raises(ValueError, match="too fast"):
        make_clip(np.random.default_rng(0), velocity=(5.0, 0.0))


def test_batch_and_reference_clips():
    v, c = make_batch(np.random.default_rng(0), 3)
    assert v.shape == (3, 8, 3, 32, 32) and c.shape == (3,)
    v2, c2, alpha = make_batch(np.random.default_rng(0), 3, with_alpha=True)  # the same clips, and their coverage
    assert np.array_equal(v, v2) and np.array_equal(c, c2) and alpha.shape == (3, 8, 32, 32)
    assert 0 <= alpha.min() and alpha.max() == 1 and 0.05 < alpha.mean() < 0.3
    for k in range(3):  # where the object covers a pixel fully, the pixel is a shade of the object's colour
        full = alpha[k] == 1
        rgb = v[k].transpose(0, 2, 3, 1)[full]
        assert np.allclose(rgb / colour_of(int(c[k])), (rgb / colour_of(int(c[k])))[:, :1], atol=1e-5)
    r1, r2 = reference_clips(0, 4), reference_clips(0, 4)
    assert all(np.array_equal(x.video, y.video) for x, y in zip(r1, r2, strict=True))
    assert len({(x.condition, x.velocity) for x in r1}) == 4


def test_tracker_recovers_ground_truth():
    rng = np.random.default_rng(2)
    for _ in range(12):
        clip = make_clip(rng)
        np.testing.assert_allclose(track_condition(clip.video, clip.condition), clip.track, atol=0.6)


def test_tracker_loses_a_missing_object():
    grey = np.full((3, 3, 16, 16), 0.5, np.float32)
    assert np.isnan(track_colour(grey, COLOURS["red"])).all()
    with pytest.raises(ValueError, match="F, 3, H, W"):
        track_colour(grey[:, :2], COLOURS["red"])


def test_motion_fidelity_formula():
    t = np.cumsum(np.random.default_rng(0).normal(size=(6, 2)), axis=0)
    assert motion_fidelity(t, t) == pytest.approx(1.0)
    assert motion_fidelity(t, -t) == pytest.approx(-1.0)
    assert motion_fidelity(t, 3.0 * t + 5.0) == pytest.approx(1.0)  # scale/offset invariant
    # perpendicular motion: cosine 0
    right = np.stack([np.arange(5.0), np.zeros(5)], -1)
    down = right[:, ::-1].copy()
    assert motion_fidelity(right, down) == pytest.approx(0.0)
    # hand-computed: half the steps agree, half are opposite -> 0; lost frames contribute 0
    zig = right.copy()
    zig[2:, 0] = 2 - np.arange(3.0)
    assert motion_fidelity(right, zig) == pytest.approx((1 + 1 - 1 - 1) / 4)
    lost = right.copy()
    lost[1] = np.nan
    assert motion_fidelity(right, lost) == pytest.approx(2 / 4)


def test_motion_fidelity_sets_and_symmetry():
    rng = np.random.default_rng(3)
    ref = np.cumsum(rng.normal(size=(3, 5, 2)), axis=1)
    gen = np.concatenate([ref[:1], np.cumsum(rng.normal(size=(2, 5, 2)), axis=1)])
    sim = tracklet_similarity(ref, gen)
    assert sim.shape == (3, 3) and sim[0, 0] == pytest.approx(1.0)
    one_sided = sim.max(axis=0).mean()
    assert motion_fidelity(ref, gen, symmetric=False) == pytest.approx(one_sided)
    assert motion_fidelity(ref, gen) == pytest.approx(0.5 * (one_sided + sim.max(axis=1).mean()))
    assert motion_fidelity(ref, gen) == pytest.approx(motion_fidelity(gen, ref))
    with pytest.raises(ValueError, match="same number"):
        motion_fidelity(ref, gen[:, :4])


def test_endpoint_error():
    t = np.stack([np.arange(4.0), np.zeros(4)], -1)
    assert endpoint_error(t, t + 3) == 0.0
    assert endpoint_error(t, np.zeros((4, 2))) == pytest.approx(np.mean([1, 2, 3]))


def test_media_files(tmp_path):
    clips = reference_clips(1, 2)
    gif = media.save_gif(tmp_path / "a.gif", [c.video for c in clips], [c.name for c in clips])
    png = media.save_strip(tmp_path / "a.png", [c.video for c in clips])
    from PIL import Image

    with Image.open(gif) as im:
        assert im.n_frames == 8
    with Image.open(png) as im:
        assert im.size[1] >= 2 * 32 * 3
    assert not list(tmp_path.glob("*.tmp"))


def test_object_area():
    from ditflow_fast.toyworld.metrics import object_area
    from ditflow_fast.toyworld.world import colour_of, condition_index

    clip = make_clip(np.random.default_rng(0), condition=condition_index("square", "blue"))
    area = object_area(clip.video, colour_of(clip.condition))
    side = 2 * RADIUS + 1  # the square's side in pixels; weights <= 1 (texture and edges lower them)
    assert 0.5 * side * side < area < side * side
    assert object_area(clip.video, COLOURS["red"]) < 1.0


def test_strip_labels_keep_their_spaces(tmp_path):
    """A space must read as a gap wider than the one between letters ("no guidance", not "noguidance")."""
    from PIL import Image

    video = np.ones((2, 3, 8, 8), np.float32)
    media.save_strip(tmp_path / "s.png", [video], ["no guidance"])
    ink = (np.asarray(Image.open(tmp_path / "s.png").convert("L")) < 128).any(axis=0)
    cols = np.flatnonzero(ink[: 6 * len("no guidance") + 8])  # the label column, left of the frames
    gaps = np.diff(cols) - 1
    assert gaps.max() >= 4, gaps
