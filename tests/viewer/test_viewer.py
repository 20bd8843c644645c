"""``ditflow-fast amf``: the reference AMF of a video (toy model, tiny CogVideoX and Wan folders), its files,
and the viewer that ``transfer`` writes for the reference and the result."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from ditflow_fast.cli.main import main
from ditflow_fast.video_io import write_video
from ditflow_fast.viewer.colour import flow_to_rgb, legend
from ditflow_fast.viewer.output import load_amf

pytestmark = pytest.mark.usefixtures("one_thread")


def toy_clip_uint8(seed: int = 0, index: int = 0):
    from ditflow_fast.toyworld.world import reference_clips

    clip = reference_clips(seed, index + 1)[index]
    return clip, (np.clip(clip.video.transpose(0, 2, 3, 1), 0, 1) * 255 + 0.5).astype(np.uint8)


@pytest.fixture(scope="module")
def toy_video(tmp_path_factory):
    root = tmp_path_factory.mktemp("toyclip")
    clip, frames = toy_clip_uint8()
    write_video(frames, root / "clip", fmt="frames")
    return root / "clip", clip, frames


@pytest.fixture(scope="module")
def toy_amf(toy_video, tmp_path_factory):
    out = tmp_path_factory.mktemp("amf") / "out"
    assert main(["amf", "--video", str(toy_video[0]), "--out", str(out), "--device", "cpu"]) == 0
    return out


def test_colour_wheel_directions_and_no_nan():
    right, down, left, up = flow_to_rgb(np.array([1, 0, -1, 0.]), np.array([0, 1, 0, -1.]), 1.0)
    assert right[0] == 255 and right[1] < 40 and right[2] < 40  # red
    assert down[0] > 200 and down[1] > 150 and down[2] < 40  # orange-yellow
    assert left[0] < 40 and left[1] > 200 and left[2] > 150  # cyan-green
    assert up[2] > 200 and up[1] < 60  # blue-violet
    assert (flow_to_rgb(np.zeros(3), np.zeros(3), 0.0) == 255).all()  # no motion is white, scale 0 no NaN
    lg = legend(32)
    assert lg.shape == (32, 32, 4) and lg[0, 0, 3] == 0 and lg[16, 16, 3] == 255


def test_amf_of_a_toy_clip_writes_three_files(toy_amf):
    for name in ("amf.safetensors", "amf.html", "amf.png"):
        assert (toy_amf / name).is_file(), name
    amf, info = load_amf(toy_amf / "amf.safetensors")
    assert amf.shape == (8, 8, 64, 2) and amf.dtype == np.float32 and np.isfinite(amf).all()
    assert (info["frames"], info["height"], info["width"], info["block"]) == (8, 8, 8, 3)
    assert info["mode"] == "argmax" and info["timestep"] == 0 and info["prompt"] == "empty"
    assert info["family"] == "toy" and info["patch_px_x"] == 4
    assert np.abs(amf[np.arange(8), np.arange(8)]).max() == 0  # a frame against itself: no motion
    from PIL import Image

    im = Image.open(toy_amf / "amf.png")
    assert im.width > 8 * 48 and im.height > 8 * 48


def test_amf_is_the_guidance_loops_reference(toy_video, toy_amf, tmp_path):
    """The same numbers as Guide.reference_targets() (the DiTFlow loop's reference) on the same latent, with RoPE
    in the AMF (the command's default) and before it (``--amf-no-rope``, the toy model's demo setting)."""
    from dataclasses import replace

    from ditflow_fast.guidance.loop import Guide
    from ditflow_fast.toyworld.demo import ToyTransfer

    _, clip, frames = toy_video
    tt = ToyTransfer()
    x = torch.from_numpy(frames).float().div(255).permute(0, 3, 1, 2)[None]
    ref = tt.codec.encode(x)
    emb = tt.cond_embed(torch.tensor([0, 12]))
    plain = tmp_path / "plain"
    assert main(["amf", "--video", str(toy_video[0]), "--out", str(plain), "--device", "cpu", "--amf-no-rope"]) == 0
    for rope, folder in ((True, toy_amf), (False, plain)):
        cfg = replace(tt._config("DiTFlow latent", 0), amf_rope=rope)
        guide = Guide(tt.transformer, tt.scheduler, ref_latent=ref, prompt_embeds=emb[:1], negative_embeds=emb[1:],
                      empty_embeds=emb[1:], config=cfg, model_id="toy")
        want = guide.reference_targets()[3]["amf"][0].numpy()
        got, _ = load_amf(folder / "amf.safetensors")
        np.testing.assert_array_equal(got, want)


def test_amf_page_is_self_contained(toy_amf):
    html = (toy_amf / "amf.html").read_text()
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", html), "no network resources"
    assert "http://" not in html and "https://" not in html
    data = json.loads(re.search(r'id="ditflow-data">(.*?)</script>', html, re.S).group(1))
    assert data["F"] == 8 and data["h"] == 8 and len(data["frames"][0]) == 8 and len(data["amf"]) == 1
    assert all(s.startswith("data:image/") for s in data["frames"][0])
    assert 'id="first"' in html and 'id="second"' in html and 'id="arrows"' in html and 'id="legend"' in html


def test_amf_random_smoke_test_and_clean_errors(toy_video, tmp_path, capsys):
    assert main(["amf", "--random", "--frames", "2", "--height", "3", "--width", "4"]) == 0
    assert "backend:" in capsys.readouterr().out
    assert main(["amf", "--out", str(tmp_path / "x")]) == 2
    assert "--video is required" in capsys.readouterr().err
    assert main(["amf", "--video", str(toy_video[0]), "--block", "9", "--out", str(tmp_path / "x")]) == 2
    assert "--block 9" in capsys.readouterr().err
    assert main(["amf", "--video", str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    from ditflow_fast.families.cogvideox import tiny
    from ditflow_fast.families.wan import tiny as wan_tiny

    root = tmp_path_factory.mktemp("tinyfam")
    tiny.write_tiny_assets(root / "cog")
    wan_tiny.save_tiny_wan(root / "wan")
    write_video(tiny.moving_square(13, 48, 80), root / "wan_video.mp4")
    return root


def test_amf_of_a_tiny_cogvideox_folder(tiny_folders, tmp_path):
    cog = tiny_folders / "cog"
    assert main(["amf", "--video", str(cog / "video.mp4"), "--model", str(cog / "model"), "--prompt-embeds",
                 str(cog / "model" / "prompt_embeds.safetensors"), "--frames", "9", "--height", "48", "--width", "64",
                 "--out", str(tmp_path / "o"), "--device", "cpu"]) == 0
    amf, info = load_amf(tmp_path / "o" / "amf.safetensors")
    assert amf.shape == (3, 3, 12, 2) and info["family"] == "cogvideox" and (info["height"], info["width"]) == (3, 4)
    assert (tmp_path / "o" / "amf.html").is_file() and (tmp_path / "o" / "amf.png").is_file()


def test_amf_of_a_tiny_wan_folder(tiny_folders, tmp_path):
    wan = tiny_folders / "wan"
    assert main(["amf", "--video", str(tiny_folders / "wan_video.mp4"), "--model", str(wan), "--prompt-embeds",
                 str(wan / "prompt_embeds.safetensors"), "--frames", "9", "--height", "48", "--width", "80",
                 "--out", str(tmp_path / "o"), "--device", "cpu"]) == 0
    amf, info = load_amf(tmp_path / "o" / "amf.safetensors")
    assert info["family"] == "wan" and amf.shape[0] == 3 and amf.shape[2] == info["height"] * info["width"]
    assert main(["amf", "--video", str(tiny_folders / "wan_video.mp4"), "--model", str(wan), "--prompt-embeds",
                 str(wan / "prompt_embeds.safetensors"), "--frames", "9", "--height", "48", "--width", "80",
                 "--out", str(tmp_path / "plain"), "--device", "cpu", "--amf-no-rope"]) == 0
    plain, plain_info = load_amf(tmp_path / "plain" / "amf.safetensors")  # q/k before RoPE: another field
    assert plain.shape == amf.shape and not np.array_equal(plain, amf)
    assert (info["amf_rope"], plain_info["amf_rope"]) == (True, False)


def test_transfer_writes_the_side_by_side_viewer(tiny_folders, tmp_path, capsys):
    cog = tiny_folders / "cog"
    out = tmp_path / "run"
    assert main(["transfer", "--model", str(cog / "model"), "--video", str(cog / "video.mp4"), "--prompt-embeds",
                 str(cog / "model" / "prompt_embeds.safetensors"), "--frames", "9", "--height", "48", "--width", "64",
                 "--steps", "3", "--guided-steps", "1", "--opt-iters", "1", "--out", str(out), "--quiet",
                 "--format", "frames"]) == 0
    assert "AMF viewer:" in capsys.readouterr().out
    ref, info = load_amf(out / "amf" / "amf.safetensors")
    gen, ginfo = load_amf(out / "amf" / "amf_generated.safetensors")
    assert ref.shape == gen.shape == (3, 3, 12, 2) and info["field"] == "reference" and ginfo["field"] == "generated"
    assert info["block"] == ginfo["block"]
    html = (out / "amf" / "amf.html").read_text()
    data = json.loads(re.search(r'id="ditflow-data">(.*?)</script>', html, re.S).group(1))
    assert data["names"] == ["reference", "generated"] and len(data["errors"]) == 9
    err = np.linalg.norm(ref - gen, axis=-1).mean(-1).ravel()
    np.testing.assert_allclose(data["errors"], err, atol=1e-4)
    assert (out / "amf" / "amf.png").is_file() and (out / "config.json").is_file()


def test_amf_checks_the_video_before_loading_the_model(toy_video, tmp_path, monkeypatch, capsys):
    from ditflow_fast.toyworld import amf_model
    from ditflow_fast.viewer import reference

    def no_load(*a, **k):
        pytest.fail("the model was loaded before --video was checked")

    monkeypatch.setattr(reference, "open_model", no_load)
    monkeypatch.setattr(amf_model, "open_toy", no_load)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video")
    assert main(["amf", "--video", str(bad), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert f"--video {bad}: cannot decode it as a video" in err
    assert main(["amf", "--video", str(toy_video[0]), "--frames", "999", "--out", str(tmp_path / "x")]) == 2
    assert "fewer than the 999 asked for" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_side_by_side_png_is_composed_in_memory_and_written_once(tmp_path, monkeypatch):
    from PIL import Image

    from ditflow_fast.viewer import output

    rng = np.random.default_rng(0)
    fields = [(name, rng.normal(size=(3, 3, 6, 2)).astype(np.float32),
               rng.integers(0, 256, (3, 16, 24, 3), dtype=np.uint8)) for name in ("reference", "generated")]
    out = tmp_path / "view"
    # another writer's file under the old fixed temporary name: nothing here may collide with it
    (out / ".amf_0.grid.png").mkdir(parents=True)
    paths = output.write_viewer(out, fields, {"height": 2, "width": 3})
    scale = output.field_scale(fields[0][1], fields[1][1])
    left, right = (np.asarray(output.grid_image(a, fr, 2, 3, title=n, scale=scale)) for n, a, fr in fields)
    png = np.asarray(Image.open(paths["png"]).convert("RGB"))
    assert png.shape == (max(left.shape[0], right.shape[0]), left.shape[1] + right.shape[1] + 10, 3)
    assert np.array_equal(png[:left.shape[0], :left.shape[1]], left)
    assert np.array_equal(png[:right.shape[0], left.shape[1] + 10:], right)
    assert sorted(p.name for p in out.iterdir()) == [".amf_0.grid.png", "amf.html", "amf.png", "amf.safetensors",
                                                     "amf_generated.safetensors"]

    def broken_save(self, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="No space left"):
        output.write_viewer(out, fields, {"height": 2, "width": 3}, stem="again")
    assert not [p.name for p in out.iterdir() if p.name.startswith(".again")]  # no temporary left behind
