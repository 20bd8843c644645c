"""Tiny CogVideoX image-to-video folders (5B-I2V-like, 1.5-I2V-like; saved with ``save_pretrained``) end to end:
the command line and ``ditflow_fast.transfer``; latent, emb, zero-shot, K/V injection; the frames asked; what each
pass is conditioned on; the refusal without ``--image``; exact resume (CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("av")

from _transfer_helpers import interrupted_and_whole  # noqa: E402

import ditflow_fast  # noqa: E402
from ditflow_fast.cli.main import main  # noqa: E402
from ditflow_fast.families import FAMILIES  # noqa: E402
from ditflow_fast.families.cogvideox import tiny  # noqa: E402
from ditflow_fast.video_io import read_video  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
FAM = FAMILIES["cogvideox"]
I2V_RECORD = "image inputs of the image-to-video model"


@pytest.fixture(scope="module", params=["5b-i2v", "1.5-i2v"])
def assets(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    return tiny.write_tiny_assets(root, i2v=True, v15=request.param == "1.5-i2v", frames=17)


def _args(assets, out, *extra, image=True):
    return ["transfer", "--model", str(assets / "model"), "--video", str(assets / "video.mp4"), "--prompt-embeds",
            str(assets / "model" / "prompt_embeds.safetensors"), "--steps", "4", "--guided-steps", "2",
            "--opt-iters", "2", "--height", "48", "--width", "64", "--out", str(out), "--quiet", "--format",
            "frames", *(("--image", str(assets / "image.png")) if image else ()), *extra]


def _spy_run_until(monkeypatch):
    """Every truncated forward's ``(kind, latent, its image latents)``: ``kv`` the K/V copy, ``opt`` an optimisation
    pass (with autograd), ``t0`` a pass at timestep 0 (the reference's AMF, or the viewer's AMF of the result)."""
    calls, real = [], FAM.run_until

    def spy(tr, latent, text, t, emb=None, image_latents=None, **what):
        kind = "kv" if what.get("copy_kv_blocks") else ("opt" if torch.is_grad_enabled() else "t0")
        calls.append((kind, latent.detach().clone(), None if image_latents is None else image_latents.clone()))
        return real(tr, latent, text, t, emb, image_latents=image_latents, **what)

    monkeypatch.setattr(FAM, "run_until", spy)
    return calls


def test_latent_emb_zero_shot_and_kv_injection_write_exactly_the_asked_frames(assets, tmp_path, monkeypatch):
    """9 frames (1.5: 3 latent frames, padded to 4 per forward). The generation's forwards take the user's image, the
    passes over the reference (its AMF at t=0, the K/V copy) the reference's own first frame."""
    calls = _spy_run_until(monkeypatch)
    assert main(_args(assets, tmp_path / "lat", "--frames", "9", "--opt-mode", "latent")) == 0
    assert read_video(tmp_path / "lat" / "result_frames").shape == (9, 48, 64, 3)
    rec = json.loads((tmp_path / "lat" / "config.json").read_text())
    assert rec["image"] == I2V_RECORD and len(rec["losses"]) == 2 and rec["config"]["injection"]
    comps = FAM.load(str(assets / "model"), torch.float32)
    user = FAM.image_condition(comps, tiny.first_frame(), device="cpu", dtype=torch.float32, seed=0)
    ref_video = read_video(assets / "video.mp4", frames=9, height=48, width=64)
    own = FAM.image_condition(comps, ref_video[0], device="cpu", dtype=torch.float32, seed=0)
    user, own = user.forward_kw["image_latents"], own.forward_kw["image_latents"]
    assert not torch.equal(user, own)
    ref = FAM.encode_video(comps["vae"], ref_video, device="cpu", dtype=torch.float32, seed=0)
    seen = {"kv": 0, "opt": 0, "ref": 0, "result": 0}
    for kind, latent, lat in calls:
        if kind == "t0":
            kind = "ref" if torch.equal(latent, ref) else "result"  # the reference's AMF, the viewer's of the result
        seen[kind] += 1
        assert lat is not None and torch.equal(lat, own if kind in ("kv", "ref") else user), kind
    # 2 guided steps: a K/V copy and 2 iterations each; the reference's AMF for the loss and for the viewer
    assert seen == {"kv": 2, "opt": 4, "ref": 2, "result": 1}

    assert main(_args(assets, tmp_path / "emb", "--frames", "9", "--opt-mode", "emb")) == 0
    assert read_video(tmp_path / "emb" / "result_frames").shape[0] == 9
    assert len(sorted((tmp_path / "emb" / "embeds").glob("emb_t*.safetensors"))) == 2
    assert main(_args(assets, tmp_path / "zs", "--frames", "9", "--opt-mode", "emb", "--inject-embeds",
                      str(tmp_path / "emb" / "embeds"))) == 0
    zs = json.loads((tmp_path / "zs" / "config.json").read_text())
    assert zs["losses"] == {} and zs["image"] == I2V_RECORD
    assert read_video(tmp_path / "zs" / "result_frames").shape[0] == 9
    assert main(_args(assets, tmp_path / "noinj", "--frames", "9", "--no-injection")) == 0
    assert not np.array_equal(read_video(tmp_path / "noinj" / "result_frames"),
                              read_video(tmp_path / "lat" / "result_frames"))  # the K/V injection did something


def test_an_even_latent_count_writes_the_asked_frames(assets, tmp_path):
    assert main(_args(assets, tmp_path / "o", "--frames", "16", "--guided-steps", "1", "--opt-iters", "1")) == 0
    assert read_video(tmp_path / "o" / "result_frames").shape == (16, 48, 64, 3)


def test_the_api_and_a_pipeline_give_what_the_command_line_writes(assets, tmp_path):
    from diffusers import CogVideoXImageToVideoPipeline
    from PIL import Image

    assert main(_args(assets, tmp_path / "cli", "--frames", "9", "--seed", "3")) == 0
    cli = read_video(tmp_path / "cli" / "result_frames")
    kw = dict(prompt_embeds=str(assets / "model" / "prompt_embeds.safetensors"), steps=4, guided_steps=2,
              opt_iters=2, seed=3, frames=9, height=48, width=64)
    video = str(assets / "video.mp4")
    mem = ditflow_fast.transfer(str(assets / "model"), video, image=str(assets / "image.png"), **kw)
    assert mem.frames.shape == (9, 48, 64, 3) and mem.record["image"] == I2V_RECORD
    np.testing.assert_array_equal(mem.frames, cli)
    pipe = CogVideoXImageToVideoPipeline.from_pretrained(str(assets / "model"), tokenizer=None, text_encoder=None,
                                                         dtype=torch.float32)
    got = ditflow_fast.transfer(pipe, video, image=Image.open(assets / "image.png"), **kw)
    np.testing.assert_array_equal(got.frames, cli)
    other = ditflow_fast.transfer(str(assets / "model"), video, image=np.ascontiguousarray(tiny.first_frame()[::-1]),
                                  **kw)
    assert not np.array_equal(other.frames, cli)  # the image conditions the result


def test_an_i2v_model_without_an_image_is_refused_before_loading(assets, tmp_path, capsys, monkeypatch):
    def no_load(*a, **k):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(FAM, "load", no_load)
    assert main(_args(assets, tmp_path / "none", "--frames", "9", image=False)) == 2
    assert "--image is required" in capsys.readouterr().err and not (tmp_path / "none").exists()
    with pytest.raises(ValueError, match="image is required: .* is an image-to-video model"):
        ditflow_fast.transfer(str(assets / "model"), str(assets / "video.mp4"),
                              prompt_embeds=str(assets / "model" / "prompt_embeds.safetensors"), frames=9)


def test_an_interrupted_i2v_run_resumes_bit_for_bit(assets, tmp_path, monkeypatch):
    args = ("--frames", "9", "--steps", "5", "--guided-steps", "3", "--opt-mode", "emb")
    (cut, a), (full, b) = interrupted_and_whole(lambda out: _args(assets, out, *args), tmp_path, monkeypatch,
                                                interrupt_at=4)
    assert cut["resumed_from_step"] == 3 and full["resumed_from_step"] == 0 and cut["losses"] == full["losses"]
    np.testing.assert_array_equal(a, b)
