"""Image-to-video on a text-to-video model: first-frame anchoring in the loop, and ``image`` through the API and CLI
(tiny CogVideoX, CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("av")

from _transfer_helpers import tiny_guide  # noqa: E402

import ditflow_fast  # noqa: E402
from ditflow_fast.cli.main import main  # noqa: E402
from ditflow_fast.families.base import ImageCondition  # noqa: E402
from ditflow_fast.families.cogvideox import tiny  # noqa: E402
from ditflow_fast.video_io import VideoError, read_image, read_video  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
OPTS = dict(frames=9, height=48, width=64, steps=4, guided_steps=2, opt_iters=2, seed=3)


def _guide(image=None, **kw):
    return tiny_guide(steps=4, image=image, **kw)


@pytest.mark.parametrize("opt_mode", ["latent", "emb"])
def test_the_result_starts_at_the_image_latent_and_the_rest_still_moves(opt_mode):
    anchor = torch.randn(1, 1, 4, 6, 8, generator=torch.Generator().manual_seed(1))
    held = _guide(ImageCondition(anchor=anchor), opt_mode=opt_mode).run(progress=False)
    plain = _guide(opt_mode=opt_mode).run(progress=False)
    torch.testing.assert_close(held.latents[:, :1].float(), anchor, rtol=0, atol=0)
    assert torch.isfinite(held.latents).all() and not torch.equal(held.latents[:, 1:], plain.latents[:, 1:])
    assert all(np.isfinite(h).all() for h in held.losses.values())


def test_anchoring_noises_the_first_frame_to_each_steps_level(monkeypatch):
    anchor = torch.zeros(1, 1, 4, 6, 8)
    g = _guide(ImageCondition(anchor=anchor), guidance=False)
    seen = []
    real = g.family.forward

    def spy(tr, x, text, t, emb=None, **kw):
        seen.append((float(t), x[:, :1].detach().clone()))
        return real(tr, x, text, t, emb, **kw)

    monkeypatch.setattr(g.family, "forward", staticmethod(spy))
    g.run(progress=False)
    for t, first in seen:  # a zero latent noised to t: exactly sqrt(1 - alpha_bar_t) times the run's own noise
        expect = g.sampler.add_noise(anchor, g.noise[:, :1].float(), int(t))
        torch.testing.assert_close(first.float(), expect.float())
    assert len({t for t, _ in seen}) == 4


def test_a_clean_anchor_is_never_noised():
    anchor = torch.randn(1, 1, 4, 6, 8, generator=torch.Generator().manual_seed(2))
    g = _guide(ImageCondition(anchor=anchor, anchor_noised=False), guidance=False)
    assert torch.equal(g._hold(torch.randn(1, 3, 4, 6, 8), g.timesteps[0])[:, :1], anchor)


def test_an_anchor_of_another_size_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        _guide(ImageCondition(anchor=torch.zeros(1, 1, 4, 6, 9)))


def test_a_nan_image_input_is_refused():
    with pytest.raises(ValueError, match="non-finite"):
        _guide(ImageCondition(forward_kw={"image_latents": torch.full((1, 3, 4, 6, 8), float("nan"))}))


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_i2v")
    tiny.write_tiny_assets(root)
    return root


def _image(seed=5):
    return np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def test_image_through_api_cli_and_resume(assets, tmp_path, capsys):
    from PIL import Image

    path = tmp_path / "first.png"
    Image.fromarray(_image()).save(path)
    common = dict(prompt_embeds=str(assets / "model" / "prompt_embeds.safetensors"), **OPTS)
    video = str(assets / "video.mp4")
    mem = ditflow_fast.transfer(str(assets / "model"), video, image=str(path), **common)
    assert "first-frame anchoring" in capsys.readouterr().err
    assert mem.record["image"].startswith("first-frame anchoring") and mem.frames.shape == (9, 48, 64, 3)
    same = ditflow_fast.transfer(str(assets / "model"), video, image=Image.open(path), **common)
    np.testing.assert_array_equal(same.frames, mem.frames)  # a path, a PIL image, an array: one image
    plain = ditflow_fast.transfer(str(assets / "model"), video, **common)
    assert not np.array_equal(plain.frames[0], mem.frames[0])
    argv = ["transfer", "--model", str(assets / "model"), "--video", video, "--prompt-embeds",
            common["prompt_embeds"], "--image", str(path), "--frames", "9", "--height", "48", "--width", "64",
            "--steps", "4", "--guided-steps", "2", "--opt-iters", "2", "--seed", "3", "--quiet", "--format",
            "frames", "--out", str(tmp_path / "cli")]
    assert main(argv) == 0
    np.testing.assert_array_equal(read_video(tmp_path / "cli" / "result_frames"), mem.frames)
    rec = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert "image" in rec["run_key_parts"]
    Image.fromarray(_image(6)).save(path)  # another image into the same folder: refused, naming it
    with pytest.raises(ValueError, match="other image"):
        ditflow_fast.transfer(str(assets / "model"), video, image=str(path), out=tmp_path / "cli", **common)


@pytest.mark.parametrize("bad,match", [
    ("missing.png", "no such file"), (".", "a folder"), (np.zeros((4, 4), np.uint8), "uint8 \\[H, W, 3\\]"),
    (np.zeros((4, 4, 3), np.float32), "uint8"), (3, "must be a path"),
])
def test_bad_images_are_named(bad, match, tmp_path):
    with pytest.raises((VideoError, TypeError), match=match) as err:
        read_image(bad)
    assert "--image" in str(err.value)


def test_a_file_that_is_no_image_is_refused_before_loading(assets, tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png")
    with pytest.raises(VideoError, match="not a readable image"):
        ditflow_fast.transfer(str(assets / "model"), str(assets / "video.mp4"), image=str(junk),
                              prompt_embeds=str(assets / "model" / "prompt_embeds.safetensors"), **OPTS)


def test_an_anchored_run_resumes_bit_for_bit(assets, tmp_path, monkeypatch):
    from _transfer_helpers import interrupted_and_whole, transfer_args
    from PIL import Image

    Image.fromarray(_image()).save(tmp_path / "first.png")
    (cut, cut_frames), (full, full_frames) = interrupted_and_whole(
        lambda out: transfer_args(assets, out, "--image", str(tmp_path / "first.png"), "--format", "frames"),
        tmp_path, monkeypatch, interrupt_at=3)
    assert cut["resumed_from_step"] == 2 and full["resumed_from_step"] == 0
    np.testing.assert_array_equal(cut_frames, full_frames)


@pytest.mark.parametrize("family", ["wan", "ltx", "hunyuan", "cogvideox15"])
def test_every_text_to_video_family_anchors_its_first_frame(family, tmp_path, monkeypatch):
    """First-frame anchoring through each family's own sampler and VAE: the run takes the image and writes exactly
    the frames asked, and the latent it decodes starts with the image's clean latent (the family's one-frame
    encoding, seeded with the run's seed)."""
    from PIL import Image

    pytest.importorskip("transformers")
    from ditflow_fast.families import FAMILIES
    from ditflow_fast.families.hunyuan.tiny import save_tiny_hunyuan
    from ditflow_fast.families.ltx.tiny import save_tiny_ltx
    from ditflow_fast.families.wan.tiny import save_tiny_wan
    from ditflow_fast.transfer_api import HeldModel
    from ditflow_fast.video_io import write_video

    write, (h, w) = {"wan": (save_tiny_wan, (48, 80)), "ltx": (save_tiny_ltx, (64, 96)),
                     "hunyuan": (save_tiny_hunyuan, (64, 64)),
                     "cogvideox15": (lambda p: tiny.save_tiny_model(p, v15=True), (48, 64))}[family]
    fam = FAMILIES[{"cogvideox15": "cogvideox", "hunyuan": "hunyuanvideo"}.get(family, family)]
    model = write(tmp_path / "model")
    write_video(tiny.moving_square(9, h, w), tmp_path / "video.mp4")
    img = np.random.default_rng(3).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "i.png")
    decoded, real = [], fam.decode_latents

    def spy(vae, lat):
        decoded.append(lat.float().clone())
        return real(vae, lat)
    monkeypatch.setattr(fam, "decode_latents", spy)
    held = HeldModel(str(model))
    res = ditflow_fast.transfer(held, str(tmp_path / "video.mp4"), image=str(tmp_path / "i.png"), seed=4, frames=9,
                                prompt_embeds=str(model / "prompt_embeds.safetensors"), height=h, width=w, steps=4,
                                guided_steps=2, opt_iters=1)
    assert res.frames.shape == (9, h, w, 3) and res.record["image"].startswith("first-frame anchoring")
    anchor = fam.image_condition(held.load(torch.float32), img, device="cpu", dtype=torch.float32, seed=4).anchor
    axis = 1 if fam.latent_layout == "BFCHW" else 2
    torch.testing.assert_close(decoded[0].narrow(axis, 0, 1), anchor, rtol=0, atol=0)
