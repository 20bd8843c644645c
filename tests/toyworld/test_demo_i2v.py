"""``ditflow-fast demo --i2v``: the given first frames, the first-frame IoU, and the demo end to end on the tiny DiT."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("diffusers")

from ditflow_fast.toyworld.metrics import mask_iou  # noqa: E402
from ditflow_fast.toyworld.model import DEFAULT_DIR  # noqa: E402
from ditflow_fast.toyworld.world import colour_of, first_frame_elsewhere, make_clip  # noqa: E402


def test_the_first_frame_is_elsewhere_and_reproducible():
    for seed in range(20):
        clip = first_frame_elsewhere((2, seed), 5, (16.0, 16.0))
        assert clip.video.shape == (1, 3, 32, 32) and clip.condition == 5
        assert np.hypot(*(clip.track[0] - 16.0)) >= 8.0
    np.testing.assert_array_equal(first_frame_elsewhere((1, 3), 2, (9, 9)).video,
                                  first_frame_elsewhere((1, 3), 2, (9, 9)).video)


def test_mask_iou():
    a = make_clip(np.random.default_rng(0), condition=1, frames=1, start=(9.0, 9.0)).video[0]
    b = make_clip(np.random.default_rng(1), condition=1, frames=1, start=(10.0, 9.0)).video[0]
    far = make_clip(np.random.default_rng(2), condition=1, frames=1, start=(24.0, 24.0)).video[0]
    col = colour_of(1)
    assert mask_iou(a, a, col) == 1.0
    assert 0.6 < mask_iou(a, b, col) < 1.0  # a 1 px shift of a 15 px object
    assert mask_iou(a, far, col) == 0.0
    grey = np.full_like(a, 0.5)
    assert np.isnan(mask_iou(grey, grey, col))


@pytest.mark.skipif(not (DEFAULT_DIR / "transformer" / "config.json").is_file(), reason="needs assets/tiny_dit")
def test_demo_i2v_keeps_the_first_frame(tmp_path):
    from ditflow_fast.cli.main import main

    out = tmp_path / "demo"
    assert main(["demo", "--i2v", "--out", str(out), "--clips", "1", "--seeds", "1", "--rows",
                 "no guidance,DiTFlow latent", "--steps", "6", "--guided-steps", "2", "--opt-iters", "1",
                 "--threads", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta"]["i2v"].startswith("first-frame anchoring")
    for row in ("no guidance", "DiTFlow latent"):
        assert summary["rows"][row]["first_frame_iou"] >= 0.5  # the anchored first frame is the given object
    assert "first-frame IoU" in (out / "summary.md").read_text()
    assert (out / "side_by_side_clip0_seed0.png").is_file()
