"""Wan image-to-video end to end: ``ditflow-fast transfer --image`` and ``ditflow_fast.transfer(..., image=)`` on the
tiny WanImageToVideoPipeline folders of each kind (Wan2.1-I2V, Wan2.2-I2V-A14B, Wan2.2-TI2V), CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("av")

import ditflow_fast  # noqa: E402
from ditflow_fast.cli.main import main  # noqa: E402
from ditflow_fast.families.cogvideox import tiny as cog_tiny  # noqa: E402
from ditflow_fast.families.wan import WanFamily as W  # noqa: E402
from ditflow_fast.families.wan import tiny  # noqa: E402
from ditflow_fast.video_io import read_video, write_video  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore")]
KINDS = ("wan21", "a14b", "ti2v")
SIZE = {"wan21": (48, 80), "a14b": (48, 80), "ti2v": (64, 96), "ti2v_t2v": (64, 96)}
RUN = dict(frames=9, steps=4, guided_steps=2, opt_iters=2)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("wan_i2v_run")
    for k in KINDS:
        tiny.save_tiny_wan_i2v(root / k, k)
    tiny.save_tiny_wan(root / "ti2v_t2v", wan22_vae=True)  # TI2V-5B as diffusers ships it: a WanPipeline folder
    write_video(cog_tiny.moving_square(13, 48, 80), root / "video.mp4")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(root / "first.png")
    return root


def _args(assets, kind, out, *extra, image=True):
    h, w = SIZE[kind]
    return ["transfer", "--model", str(assets / kind), "--video", str(assets / "video.mp4"), "--prompt-embeds",
            str(assets / kind / "prompt_embeds.safetensors"), "--height", str(h), "--width", str(w), "--frames", "9",
            "--steps", "4", "--guided-steps", "2", "--opt-iters", "2", "--out", str(out), "--quiet",
            *(["--image", str(assets / "first.png")] if image else []), *extra]


def _record(out):
    return json.loads((out / "config.json").read_text())


@pytest.mark.parametrize("kind", KINDS)
def test_latent_emb_and_zero_shot_through_the_cli_write_exactly_the_frames_asked(assets, tmp_path, kind):
    h, w = SIZE[kind]
    assert main(_args(assets, kind, tmp_path / "lat", "--format", "frames")) == 0
    rec = _record(tmp_path / "lat")
    assert rec["family"] == "wan" and "image" in rec["run_key_parts"] and len(rec["losses"]) == 2
    assert rec["image"] == ("clean first frame" if kind == "ti2v" else "image inputs of the image-to-video model")
    assert read_video(tmp_path / "lat" / "result_frames").shape == (9, h, w, 3)
    assert main(_args(assets, kind, tmp_path / "emb", "--opt-mode", "emb", "--format", "frames")) == 0
    assert len(list((tmp_path / "emb" / "embeds").glob("emb_t*.safetensors"))) == 2
    assert len(list((tmp_path / "emb" / "result_frames").glob("*.png"))) == 9
    assert main(_args(assets, kind, tmp_path / "zs", "--opt-mode", "emb", "--inject-embeds",
                      str(tmp_path / "emb" / "embeds"))) == 0
    assert _record(tmp_path / "zs")["losses"] == {}
    assert read_video(tmp_path / "zs" / "result.mp4").shape == (9, h, w, 3)
    if kind == "wan21":  # another length: the condition (encoded for 81 frames) is cut to the run's
        assert main(_args(assets, kind, tmp_path / "f13", "--frames", "13", "--steps", "3", "--guided-steps", "1",
                          "--opt-iters", "1")) == 0
        assert read_video(tmp_path / "f13" / "result.mp4").shape[0] == 13


@pytest.mark.parametrize("kind", KINDS)
def test_the_api_takes_the_image_and_passes_the_references_own_first_frame(assets, tmp_path, monkeypatch, kind):
    """In memory, as the command line writes it; K/V injection and the reference AMF take the reference's own first
    frame's inputs, the other forwards the given image's; a two-expert model runs both experts."""
    from PIL import Image

    h, w = SIZE[kind]
    assert main(_args(assets, kind, tmp_path / "cli", "--format", "frames")) == 0
    calls, experts = [], set()
    real_until, real_forward = W.run_until, W.forward

    def until(*a, **k):
        calls.append(k)
        return real_until(*a, **k)

    def forward(tr, *a, **k):
        experts.add(id(tr))
        return real_forward(tr, *a, **k)

    monkeypatch.setattr(W, "run_until", staticmethod(until))
    monkeypatch.setattr(W, "forward", staticmethod(forward))
    image = np.asarray(Image.open(assets / "first.png"))
    res = ditflow_fast.transfer(str(assets / kind), str(assets / "video.mp4"), image=image, height=h, width=w,
                                prompt_embeds=str(assets / kind / "prompt_embeds.safetensors"), **RUN)
    np.testing.assert_array_equal(res.frames, read_video(tmp_path / "cli" / "result_frames"))
    assert res.frames.shape == (9, h, w, 3)
    key = "first_frame" if kind == "ti2v" else "condition"
    copies = [k[key] for k in calls if k.get("copy_kv_blocks")]
    guided = [k[key] for k in calls if k.get("qk_blocks") and not k.get("copy_kv_blocks")]
    assert len(copies) == 2  # K/V injection on (the default) in both guided steps
    ref = copies[0]
    assert all(torch.equal(c, ref) for c in copies)
    assert any(torch.equal(g, ref) for g in guided)  # the reference AMF pass
    assert any(not torch.equal(g, ref) for g in guided)  # the generation's guided passes: the given image
    assert len(experts) == (2 if kind == "a14b" else 1)


@pytest.mark.parametrize("kind", ["wan21", "a14b"])
def test_an_image_to_video_model_without_an_image_is_refused_before_loading(assets, tmp_path, monkeypatch, capsys,
                                                                              kind):
    def no_load(*a, **k):
        raise AssertionError("weights loaded")

    monkeypatch.setattr(W, "load", staticmethod(no_load))
    assert main(_args(assets, kind, tmp_path / "x", image=False)) == 2
    assert "--image is required" in capsys.readouterr().err and not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="image is required"):
        ditflow_fast.transfer(str(assets / kind), str(assets / "video.mp4"),
                              prompt_embeds=str(assets / kind / "prompt_embeds.safetensors"), **RUN)


def test_ti2v_takes_an_image_and_stays_text_to_video_without_one(assets, tmp_path):
    """TI2V-5B as a WanPipeline folder: --image gives the clean first frame; without it, text-to-video as before."""
    assert main(_args(assets, "ti2v_t2v", tmp_path / "img", "--format", "frames")) == 0
    assert main(_args(assets, "ti2v_t2v", tmp_path / "txt", "--format", "frames", image=False)) == 0
    assert _record(tmp_path / "img")["image"] == "clean first frame" and _record(tmp_path / "txt")["image"] is None
    a, b = (read_video(tmp_path / d / "result_frames") for d in ("img", "txt"))
    assert a.shape == b.shape == (9, 64, 96, 3) and not np.array_equal(a[0], b[0])


@pytest.mark.parametrize("kind,mode", [("a14b", "latent"), ("wan21", "emb"), ("ti2v", "latent")])
def test_an_interrupted_run_resumes_bit_for_bit(assets, tmp_path, monkeypatch, kind, mode):
    from _transfer_helpers import interrupted_and_whole

    (cut, cut_frames), (full, full_frames) = interrupted_and_whole(
        lambda out: _args(assets, kind, out, "--format", "frames", "--opt-mode", mode), tmp_path, monkeypatch,
        interrupt_at=3)
    assert cut["resumed_from_step"] == 2 and full["resumed_from_step"] == 0
    np.testing.assert_array_equal(cut_frames, full_frames)


def test_a_callers_wan21_i2v_pipeline_runs_with_its_own_clip(assets):
    """A loaded WanImageToVideoPipeline hands over its image encoder and processor with the other components."""
    from diffusers import WanImageToVideoPipeline

    pipe = WanImageToVideoPipeline.from_pretrained(str(assets / "wan21"), tokenizer=None, text_encoder=None)
    h, w = SIZE["wan21"]
    kw = dict(image=str(assets / "first.png"), prompt_embeds=str(assets / "wan21" / "prompt_embeds.safetensors"),
              height=h, width=w, seed=1, **RUN)
    got = ditflow_fast.transfer(pipe, str(assets / "video.mp4"), **kw)
    want = ditflow_fast.transfer(str(assets / "wan21"), str(assets / "video.mp4"), **kw)
    assert got.record["image"] == "image inputs of the image-to-video model"
    np.testing.assert_array_equal(got.frames, want.frames)


def test_the_reference_cache_keys_on_the_references_image_inputs(assets, tmp_path):
    """TI2V-5B's reference passes differ with an image (its clean first frame): a target cached without one is not
    reused with one; the same image again is a hit."""
    h, w = SIZE["ti2v"]
    kw = dict(prompt_embeds=str(assets / "ti2v" / "prompt_embeds.safetensors"), height=h, width=w,
              ref_cache=str(tmp_path / "cache"), **RUN)
    video = str(assets / "video.mp4")

    def target_hits(**more):
        res = ditflow_fast.transfer(str(assets / "ti2v"), video, **kw, **more)
        return [e["hit"] for e in res.record["ref_cache"]["events"] if e["kind"] == "targets"]

    assert target_hits() == [False]
    assert target_hits(image=str(assets / "first.png")) == [False]
    assert target_hits(image=str(assets / "first.png")) == [True]
