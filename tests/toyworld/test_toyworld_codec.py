"""The tiny DiT's codecs: pixels, and the learned frame autoencoder a latent model works in."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from ditflow_fast.toyworld.codec import FrameAutoencoder, PixelCodec, load_codec, save_codec  # noqa: E402
from ditflow_fast.toyworld.train_vae import _STREAM, train_vae, world_frames  # noqa: E402


def test_pixel_codec_is_the_old_scaling():
    v = torch.rand(2, 3, 3, 8, 8)
    np.testing.assert_array_equal(PixelCodec().encode(v).numpy(), (v * 2 - 1).numpy())
    torch.testing.assert_close(PixelCodec().decode(PixelCodec().encode(v)), v)
    assert PixelCodec().decode(torch.full((1,), 3.0)).item() == 1.0  # out of range latents are clamped


def test_autoencoder_shapes_save_and_load(tmp_path):
    torch.manual_seed(0)
    ae = FrameAutoencoder(channels=5, width=16).eval()
    ae.shift.fill_(0.3)
    ae.scale.fill_(2.0)
    v = torch.rand(2, 3, 3, 32, 32)
    z = ae.encode(v)
    assert z.shape == (2, 3, 5, 8, 8)
    torch.testing.assert_close(z * 2.0 + 0.3, ae.encode_frames(v.reshape(6, 3, 32, 32)).reshape(2, 3, 5, 8, 8))
    y = ae.decode(z)
    assert y.shape == v.shape and 0 <= y.min() and y.max() <= 1
    assert load_codec(tmp_path).__class__ is PixelCodec  # no vae/ folder: a pixel model
    save_codec(tmp_path, ae, extra={"note": "test"})
    back = load_codec(tmp_path)
    assert isinstance(back, FrameAutoencoder) and not back.training
    torch.testing.assert_close(back.decode(back.encode(v)), y)
    assert json.loads((tmp_path / "vae" / "config.json").read_text())["note"] == "test"
    with pytest.raises(ValueError, match="multiple of 4"):
        ae.latent_size(30)


def test_load_codec_rejects_bad_folders(tmp_path):
    save_codec(tmp_path, FrameAutoencoder(channels=2, width=8))
    cfg = tmp_path / "vae" / "config.json"
    cfg.write_text(json.dumps({"class": "Other", "channels": 2, "width": 8}))
    with pytest.raises(ValueError, match="unknown codec class"):
        load_codec(tmp_path)
    bad = FrameAutoencoder(channels=2, width=8)
    bad.scale.fill_(0.0)
    save_codec(tmp_path, bad)
    with pytest.raises(ValueError, match="latent scale"):
        load_codec(tmp_path)


def test_world_frames_streams():
    a, b = world_frames(0, 3, 1), world_frames(0, 3, 1)
    assert a.shape == (8, 3, 32, 32) and torch.equal(a, b)
    assert not torch.equal(a, world_frames(0, 4, 1)) and not torch.equal(a, world_frames(0, 3, 1, _STREAM + 1))


def test_train_vae_calibrates_the_latents(tmp_path):
    res = train_vae(tmp_path, max_steps=3, clips=1, width=8, channels=2, save_every=2, log_every=1)
    assert res["steps"] == 3 and np.isfinite(res["recon_mse"])
    ae = load_codec(tmp_path)
    z = ae.encode(world_frames(0, 0, 64, stream=_STREAM + 1).reshape(64, 8, 3, 32, 32))
    # calibrated on exactly these frames: zero mean and unit variance
    assert abs(float(z.mean())) < 1e-4 and abs(float(z.std()) - 1) < 1e-3
    log = (tmp_path / "vae" / "train_log.txt").read_text().splitlines()
    assert len([ln for ln in log if not ln.startswith("#")]) == 3
    with pytest.raises(ValueError, match="latent_noise"):
        train_vae(tmp_path, latent_noise=-1)


@pytest.mark.slow
def test_a_latent_model_trains_samples_and_runs_the_demo(tmp_path):
    from ditflow_fast.toyworld.demo import ToyTransfer
    from ditflow_fast.toyworld.model import load_model
    from ditflow_fast.toyworld.sample import sample
    from ditflow_fast.toyworld.settings import DemoSettings
    from ditflow_fast.toyworld.train import train
    from ditflow_fast.toyworld.world import reference_clips

    torch.manual_seed(0)
    ae = FrameAutoencoder(channels=4, width=8)
    save_codec(tmp_path / "ae", ae)
    with pytest.raises(ValueError, match="holds no autoencoder"):
        train(tmp_path / "m", tmp_path / "w", max_steps=1, vae=tmp_path / "nothing")
    with pytest.raises(ValueError, match="pixel-space"):
        train(tmp_path / "m", tmp_path / "w", max_steps=1, vae=tmp_path / "ae", object_weight=1.0)
    train(tmp_path / "m", tmp_path / "w", max_steps=2, save_every=1, vae=tmp_path / "ae", layers=1)
    with pytest.raises(ValueError, match="latent model's autoencoder"):
        train(tmp_path / "m", tmp_path / "w2", max_steps=1)  # a pixel model over a latent one
    tr, ce, sc = load_model(tmp_path / "m")
    codec = load_codec(tmp_path / "m")  # the model folder carries its autoencoder
    assert isinstance(codec, FrameAutoencoder) and codec.channels == 4
    c = tr.config
    assert (c.in_channels, c.out_channels, c.patch_size, c.sample_height) == (4, 4, 1, 8)
    v = sample(tr, ce, sc, [0, 5], steps=2, seed=1, codec=codec)
    with pytest.raises(ValueError, match="latent channels"):
        sample(tr, ce, sc, [0], steps=2)  # a latent model without its codec
    assert v.shape == (2, 8, 3, 32, 32) and 0 <= v.min() and v.max() <= 1
    # a batch is its videos drawn one at a time (up to the batched convolutions' rounding)
    np.testing.assert_allclose(sample(tr, ce, sc, [5], steps=2, seed=2, codec=codec)[0], v[1], atol=1e-6)
    tt = ToyTransfer(tmp_path / "m", DemoSettings(steps=2, guided_steps=1, opt_iters=1, guidance_block=0))
    video, losses = tt.generate(reference_clips(0, 1)[0], 4, "DiTFlow latent", 0)
    assert video.shape == (8, 3, 32, 32) and np.isfinite(video).all() and losses


def test_committed_autoencoder_reconstructs_the_world():
    from ditflow_fast.toyworld.model import DEFAULT_DIR, load_model
    from ditflow_fast.toyworld.quality import world_quality

    if not (DEFAULT_DIR / "vae" / "config.json").is_file():
        pytest.skip("the committed model is a pixel model")
    codec = load_codec(DEFAULT_DIR)
    assert load_model(DEFAULT_DIR)[0].config.in_channels == codec.channels
    # the DiT's best case: world clips through the autoencoder keep their shapes and kinds
    # (measured 0.82 IoU and 0.93 kind on 48 clips; the clips themselves score 0.95 and 1.0)
    got = world_quality(12, 3, codec)
    assert got["iou"] > 0.7 and got["kind_ok"] > 0.8 and got["jerk"] < 0.6
