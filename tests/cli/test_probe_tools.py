"""``amf`` and ``eval``, the commands that probe a video: the bundled toy Wan model, what ``amf`` says about
the frames it read and the model it read them with, ``eval``'s bounds and its reading guide."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("av")

from ditflow_fast.cli.main import main  # noqa: E402
from ditflow_fast.video_io import write_video  # noqa: E402
from ditflow_fast.viewer.output import load_amf  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_WAN = Path(__file__).resolve().parents[2] / "assets" / "tiny_wan"


def _toy_frames(index: int = 0):
    from ditflow_fast.toyworld.world import reference_clips

    clip = reference_clips(0, index + 1)[index]
    return (np.clip(clip.video.transpose(0, 2, 3, 1), 0, 1) * 255 + 0.5).astype(np.uint8)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    from ditflow_fast.families.cogvideox import tiny

    root = tmp_path_factory.mktemp("probe")
    write_video(_toy_frames(0), root / "toy", fmt="frames")
    write_video(_toy_frames(2), root / "toy2", fmt="frames")
    write_video(tiny.moving_square(13, 48, 80), root / "real.mp4", fps=24)  # not a toy-world clip: 80x48
    return root


def test_amf_of_the_bundled_tiny_wan_is_the_guidance_loops_reference(clips, tmp_path, capsys):
    from ditflow_fast.guidance.loop import Guide
    from ditflow_fast.toyworld.demo import ToyTransfer
    from ditflow_fast.toyworld.model import to_family_layout
    from ditflow_fast.toyworld.world import NULL_CONDITION

    tt = ToyTransfer(TINY_WAN)
    rope = [] if tt.settings.amf_rope else ["--amf-no-rope"]  # the AMF the model's demo guides with
    assert main(["amf", "--video", str(clips / "toy"), "--model", str(TINY_WAN), "--out", str(tmp_path / "o"),
                 "--device", "cpu", *rope]) == 0
    amf, info = load_amf(tmp_path / "o" / "amf.safetensors")
    assert amf.shape == (8, 8, 64, 2) and np.isfinite(amf).all() and info["patch_px_x"] == 4
    # RoPE's same-position preference keeps a frame against itself still; q/k before RoPE need not
    if tt.settings.amf_rope:
        assert np.abs(amf[np.arange(8), np.arange(8)]).max() == 0
    x = torch.from_numpy(_toy_frames(0)).float().div(255).permute(0, 3, 1, 2)[None]
    ref = to_family_layout(tt.transformer, tt.codec.encode(x))
    emb = tt.cond_embed(torch.tensor([0, NULL_CONDITION]))
    guide = Guide(tt.transformer, tt.scheduler, ref_latent=ref, prompt_embeds=emb[:1], negative_embeds=emb[1:],
                  empty_embeds=emb[1:], config=tt._config("DiTFlow latent", 0), model_id="toy")
    targets = guide.reference_targets()
    assert list(targets) == [info["block"]]  # the demo's guidance block
    np.testing.assert_array_equal(amf, targets[info["block"]]["amf"][0].numpy())
    assert "warning" not in capsys.readouterr().err  # a toy-world clip through a toy model


def test_amf_says_which_frames_it_read_and_that_a_toy_model_only_knows_toy_clips(clips, tmp_path, capsys):
    assert main(["amf", "--video", str(clips / "real.mp4"), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert "frames 0-7 (the first 8, consecutive, no fps resampling; 0.33 s at 24 fps)" in out
    warn = [line for line in err.splitlines() if "warning" in line]
    assert len(warn) == 1 and "toy model" in warn[0] and "synthetic" in warn[0] and "80x48" in warn[0]
    assert main(["amf", "--video", str(clips / "toy"), "--out", str(tmp_path / "t"), "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert "frames 0-7 (the first 8, consecutive, no fps resampling; a folder of frames)" in out
    assert "warning" not in err


@pytest.mark.parametrize("argv, says", [
    (["--grid", "100000"], "--grid must be from 2 to 100, got 100000"),
    (["--grid", "1"], "--grid must be from 2 to 100, got 1"),
    (["--static-px", "nan"], "--static-px must be a number of pixels from 0 to 100, got nan"),
    (["--static-px", "inf"], "--static-px must be a number of pixels from 0 to 100, got inf"),
    (["--static-px", "-1"], "--static-px must be a number of pixels from 0 to 100, got -1.0"),
])
def test_eval_grid_and_static_px_are_bounded_before_any_tracking(clips, argv, says, monkeypatch, capsys):
    from ditflow_fast.viewer import motion

    monkeypatch.setattr(motion, "track", lambda *a, **k: pytest.fail("tracked despite a bad option"))
    assert main(["eval", "--reference", str(clips / "toy"), "--generated", str(clips / "toy2"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"ditflow-fast eval: error: {says}"]


def test_eval_prints_the_tracked_fractions_and_how_to_read_the_score(clips, capsys):
    pytest.importorskip("cv2")
    argv = ["eval", "--reference", str(clips / "toy"), "--generated", str(clips / "toy2")]
    assert main([*argv, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert 0 < res["reference_tracked"] <= 1 and 0 < res["generated_tracked"] <= 1
    assert "unrelated" in res["reading"] and "0.85" in res["reading"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    ref_pct, gen_pct = round(100 * res["reference_tracked"]), round(100 * res["generated_tracked"])
    assert f"tracked to the last frame: {ref_pct}% of the reference's grid points, {gen_pct}% of the generated's" \
        in out
    assert res["reading"] in out
