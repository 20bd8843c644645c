"""CogVideoX image-to-video (5B-I2V-like and 1.5-I2V-like tiny pipelines) in the family, against diffusers' own
CogVideoXImageToVideoPipeline: the folders, the conditioning, an unguided run, the tokens the AMF sees, the
refusals, the dry run's memory (CPU, tiny)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from ditflow_fast import compute_amf  # noqa: E402
from ditflow_fast.errors import ModelError  # noqa: E402
from ditflow_fast.families import FAMILIES, detect  # noqa: E402
from ditflow_fast.families.cogvideox import tiny  # noqa: E402
from ditflow_fast.guidance.config import GuidanceConfig  # noqa: E402
from ditflow_fast.guidance.loop import Guide  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
FAM = FAMILIES["cogvideox"]
KINDS = {"5b-i2v": False, "1.5-i2v": True}  # name -> v15


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Both tiny I2V folders, saved by the pipeline's own ``save_pretrained`` (with a tiny T5, so that the folder
    is complete for ``from_pretrained``)."""
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("cog_i2v")
    return {k: tiny.save_tiny_model(root / k, i2v=True, v15=v15, text_encoder=True) for k, v15 in KINDS.items()}


@pytest.fixture(scope="module")
def pipes(folders):
    from diffusers import CogVideoXDDIMScheduler, CogVideoXImageToVideoPipeline

    out = {}
    for k, path in folders.items():
        pipe = CogVideoXImageToVideoPipeline.from_pretrained(str(path))
        # DiTFlow's sampler for these models is DPM, which draws noise from the generator at every step, so our
        # resumable per-step generators and the pipeline's one generator differ; DDIM (eta 0) is deterministic.
        pipe.scheduler = CogVideoXDDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
        out[k] = pipe
    return out


def _image():
    return tiny.first_frame()


def _pil():
    from PIL import Image

    return Image.fromarray(_image())


def test_the_folders_are_diffusers_i2v_pipelines_and_this_family_takes_them(folders, pipes):
    for k, path in folders.items():
        index = json.loads((path / "model_index.json").read_text())
        assert index["_class_name"] == "CogVideoXImageToVideoPipeline" and detect(str(path)) is FAM
        tr = pipes[k].transformer
        assert (tr.config.in_channels, tr.config.out_channels) == (8, 4) and FAM.image_model(dict(tr.config))
        assert pipes[k].vae.config.invert_scale_latents is KINDS[k]  # 1.5-I2V's VAE flag
        assert bool(tr.config.use_learned_positional_embeddings) is not KINDS[k]  # 5B-I2V's learned table
        assert (tr.config.ofs_embed_dim is not None) is KINDS[k]
        comps = FAM.load(str(path), torch.float32)
        assert FAM.geometry(comps["transformer"], comps["vae"], 9, 48, 64) == (1, 3, 4, 6, 8)  # 4 latent channels
    assert FAM.matches({"_class_name": "CogVideoXImageToVideoPipeline"}, None)  # a hub id: by its index
    assert not FAM.image_model(dict(tiny.tiny_transformer(True).config))  # text-to-video: anchoring stays


@pytest.mark.parametrize("kind, frames", [("5b-i2v", 9), ("1.5-i2v", 8)])
@pytest.mark.parametrize("cfg_scale", [1.0, 6.0])
def test_an_unguided_run_is_the_pipelines_call(pipes, kind, frames, cfg_scale):
    """No guidance, no injection: the loop with the family's image condition gives the latent diffusers' pipeline
    gives for the same image, noise (``latents=``), prompt embeddings, scheduler and generator seed (the image's VAE
    sample). ``cfg_scale`` 1: no unconditional pass on either side (exactly equal); 6: the pipeline batches the two
    prompts in one forward, this loop runs them apart, so equal to float32 rounding."""
    pipe = pipes[kind]
    latent_frames = (frames - 1) // 4 + 1
    noise = torch.randn(1, latent_frames, 4, 6, 8, generator=torch.Generator().manual_seed(3))
    pe = tiny.tiny_prompt_embeds()
    with torch.no_grad():
        want = pipe(image=_pil(), prompt_embeds=pe["prompt"], negative_prompt_embeds=pe["negative"],
                    num_frames=frames, height=48, width=64, num_inference_steps=4, guidance_scale=cfg_scale,
                    output_type="latent", latents=noise, generator=torch.Generator().manual_seed(5)).frames
    comps = {"transformer": pipe.transformer, "vae": pipe.vae}
    cond = FAM.image_condition(comps, _image(), device="cpu", dtype=torch.float32, seed=5)
    assert cond.anchor is None and set(cond.forward_kw) == {"image_latents"}
    cfg = GuidanceConfig(model="tiny", steps=4, guided_steps=2, frames=frames, height=48, width=64, guidance=False,
                         injection=False, scheduler="ddim", cfg_scale=cfg_scale, dynamic_cfg=False,
                         cfg_min_t=1000 if cfg_scale == 1.0 else 0, seed=0).resolve(pipe.transformer, device="cpu")
    guide = Guide(pipe.transformer, dict(pipe.scheduler.config), ref_latent=torch.zeros_like(noise),
                  prompt_embeds=pe["prompt"], negative_embeds=pe["negative"], config=cfg, model_id="tiny", image=cond)
    guide.noise = noise.clone()  # the pipeline's noise (the loop draws its own from the seed)
    got = guide.run(progress=False).latents
    assert got.shape == want.shape
    if cfg_scale == 1.0:
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _first_call_input(pipe, frames, noise, seed=5):
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda m, a, k: seen.append(k["hidden_states"].clone()), with_kwargs=True)
    try:
        with torch.no_grad():
            pipe(image=_pil(), prompt_embeds=tiny.tiny_prompt_embeds()["prompt"], num_frames=frames, height=48,
                 width=64, num_inference_steps=1, guidance_scale=1.0, output_type="latent", latents=noise,
                 generator=torch.Generator().manual_seed(seed))
    finally:
        hook.remove()
    return seen[0]


def test_15_with_an_odd_latent_count_conditions_the_transformer_as_the_pipeline(pipes):
    """9 frames: 3 latent frames. diffusers' ``__call__`` pads to 4 with a noise frame of its own in front (dropped
    at the end) and puts the image latent in that frame, zeros after; this family pads each forward with a copy of
    the first latent frame (as the CogVideoX training code does) and puts the image in the same place. Every input
    channel of the transformer but the noisy padding frame's is the pipeline's."""
    pipe = pipes["1.5-i2v"]
    noise = torch.randn(1, 4, 4, 6, 8, generator=torch.Generator().manual_seed(3))
    want = _first_call_input(pipe, 9, noise)
    lat = FAM.image_condition({"transformer": pipe.transformer, "vae": pipe.vae}, _image(), device="cpu",
                              dtype=torch.float32, seed=5).forward_kw["image_latents"]
    kw, _, pad = FAM._kwargs(pipe.transformer, noise[:, 1:], tiny.tiny_prompt_embeds()["prompt"], 999, None, lat)
    got = kw["hidden_states"]
    assert pad == 1 and got.shape == want.shape == (1, 4, 8, 6, 8)
    assert torch.equal(got[:, :, 4:], want[:, :, 4:])  # the image part: the image in frame 0, zeros after
    assert torch.equal(got[:, 0, 4:], lat[:, 0]) and not got[:, 1:, 4:].any()
    assert torch.equal(got[:, 1:, :4], want[:, 1:, :4])  # the real latent frames
    assert torch.equal(got[:, 0, :4], noise[:, 1])  # the padding: a copy of the first latent frame


def test_the_image_latent_is_scaled_as_the_vae_says(pipes):
    """5B-I2V: times ``scaling_factor``; 1.5-I2V (``invert_scale_latents``): times its reciprocal."""
    for kind, pipe in pipes.items():
        vae = pipe.vae
        comps = {"transformer": pipe.transformer, "vae": vae}
        cond = FAM.image_condition(comps, _image(), device="cpu", dtype=torch.float32, seed=5)
        lat = cond.forward_kw["image_latents"]
        x = torch.from_numpy(_image()).permute(2, 0, 1)[None, :, None].float() / 127.5 - 1
        with torch.no_grad():
            raw = vae.encode(x).latent_dist.sample(torch.Generator().manual_seed(5)).permute(0, 2, 1, 3, 4)
        s = vae.config.scaling_factor
        torch.testing.assert_close(lat, raw / s if KINDS[kind] else raw * s)
        assert not torch.allclose(lat, raw * s if KINDS[kind] else raw / s)


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_amf_sees_the_text_to_video_tokens(pipes, kind):
    """The patch embedding takes the concatenated channels: the same video tokens as a text-to-video model of the
    same shape, whose q/k and AMF the guidance compares; the image part is constant (no gradient reaches it)."""
    pipe = pipes[kind]
    tr = pipe.transformer
    t2v = tiny.tiny_transformer(True, 3, 0, v15=KINDS[kind])
    x = torch.randn(1, 3, 4, 6, 8, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    e = tiny.tiny_prompt_embeds()["prompt"]
    lat = torch.randn(1, 1, 4, 6, 8, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    assert FAM.token_grid(tr, x) == FAM.token_grid(t2v, x)
    shapes = []
    for model, kw in ((tr, {"image_latents": lat}), (t2v, {})):
        FAM.install(model)
        try:
            q, k = FAM.run_until(model, x, e, 500, stop_after=1, qk_blocks=[1], **kw).qk[1]
        finally:
            FAM.uninstall(model)
        shapes.append((tuple(q.shape), tuple(k.shape)))
        if model is tr:
            f, h, w = FAM.token_grid(tr, x)
            assert q.shape[2] == f * h * w
            amf = compute_amf(q, k, frames=f, height=h, width=w, mode="argmax")
            assert amf.shape[:3] == (1, f, f)
            q.float().square().mean().backward()
            assert x.grad is not None and x.grad.abs().sum() > 0
    assert shapes[0] == shapes[1]


def test_forwards_without_or_with_a_wrong_image_are_refused(pipes):
    tr = pipes["5b-i2v"].transformer
    x, e = torch.randn(1, 3, 4, 6, 8), tiny.tiny_prompt_embeds()["prompt"]
    with pytest.raises(ModelError, match="--image is required"):
        FAM.forward(tr, x, e, 500)
    with pytest.raises(ValueError, match="do not fit the latent"):
        FAM.forward(tr, x, e, 500, image_latents=torch.zeros(1, 1, 4, 6, 9))
    with pytest.raises(ValueError, match="text-to-video CogVideoX transformer"):
        FAM.forward(tiny.tiny_transformer(True, 1), x, e, 500, image_latents=torch.zeros(1, 1, 4, 6, 8))


def test_a_text_to_video_model_keeps_first_frame_anchoring():
    comps = {"transformer": tiny.tiny_transformer(True, 1), "vae": tiny.tiny_vae()}
    cond = FAM.image_condition(comps, _image(), device="cpu", dtype=torch.float32)
    assert cond.forward_kw == {} and cond.anchor is not None and cond.anchor.shape == (1, 1, 4, 6, 8)


def test_other_pipelines_sharing_the_transformer_class_are_refused(folders, tmp_path):
    import shutil

    path = tmp_path / "fun"
    shutil.copytree(folders["5b-i2v"], path)
    index = json.loads((path / "model_index.json").read_text())
    (path / "model_index.json").write_text(json.dumps(dict(index, _class_name="CogVideoXFunControlPipeline")))
    with pytest.raises(ModelError, match="a CogVideoXFunControlPipeline folder; the CogVideoX family takes"):
        FAM.load(str(path), torch.float32)
    odd = tiny.tiny_transformer(True, 1)
    odd.register_to_config(in_channels=9)  # CogVideoX-Fun-InP's mask + image channels: no diffusers I2V model
    with pytest.raises(ModelError, match="neither text-to-video nor CogVideoXImageToVideoPipeline"):
        FAM.geometry(odd, tiny.tiny_vae(), 9, 48, 64)


# -- the dry run ----------------------------------------------------------------------------------------------------
I2V = {"THUDM/CogVideoX-5b-I2V": "THUDM/CogVideoX-5b", "THUDM/CogVideoX1.5-5B-I2V": "THUDM/CogVideoX1.5-5B"}


def test_the_i2v_presets_defaults():
    d = FAM.defaults(FAM.memory_config("THUDM/CogVideoX-5b-I2V"))
    # its learned position table fixes 480x720 and is used only at 49 frames
    assert (d["guidance_blocks"], d["frames"], d["height"], d["width"]) == ((20,), 49, 480, 720)
    assert d["scheduler"] == "dpm" and d["dtype"] == "bfloat16" and "image-to-video" in d["note"]
    d15 = FAM.defaults(FAM.memory_config("THUDM/CogVideoX1.5-5B-I2V"))
    assert (d15["guidance_blocks"], d15["frames"], d15["height"], d15["width"]) == ((20,), 81, 768, 1360)
    assert "unverified" in d15["note"] and "image-to-video" in d15["note"]
    for i2v, t2v in I2V.items():
        assert FAM.image_model(FAM.memory_config(i2v)) and not FAM.image_model(FAM.memory_config(t2v))


@pytest.mark.parametrize("opt_mode", ["latent", "emb"])
@pytest.mark.parametrize("i2v", list(I2V))
def test_the_i2v_memory_is_the_t2v_models_plus_the_image(i2v, opt_mode):
    """Same tokens, so the same activations, q/k and AMF rows as the text-to-video model at the same size; the
    optimised latent has the 16 latent channels; added: the extra input channels' weights (5B-I2V's learned table
    too) and the image latents."""
    frames, height, width = (49, 480, 720) if "1.5" not in i2v else (81, 768, 1360)
    kw = dict(frames=frames, height=height, width=width, guidance_block=20, opt_mode=opt_mode)
    a = FAM.estimate(FAM.memory_config(i2v), **kw).components
    b = FAM.estimate(FAM.memory_config(I2V[i2v]), **kw).components
    D = 48 * 64
    if "1.5" in i2v:  # the patch projection (a linear over 2x2x2 patches) takes 16 more channels; the ofs MLP
        extra = 16 * 8 * D + 2 * (512 * 512 + 512)
        lat_f, pad_f = 21, 22
    else:  # the patch conv (2x2) takes 16 more channels; the learned table at 49 frames, 60x90 latent pixels
        extra = 16 * 4 * D + (226 + 13 * 30 * 45) * D
        lat_f = pad_f = 13
    assert a["transformer weights"] - b["transformer weights"] == extra * 2
    lh, lw = height // 8, width // 8
    assert a["image latents"] == 3 * pad_f * 16 * lh * lw * 2 and "image latents" not in b
    for row in b:
        if row != "transformer weights":
            assert a[row] == b[row], row
    if opt_mode == "latent":
        assert a["optimised tensor + Adam (fp32)"] == 16 * lat_f * 16 * lh * lw


def test_the_dry_run_of_the_public_i2v_models_needs_no_download(capsys, monkeypatch):
    import socket

    from ditflow_fast.cli.main import main

    def no_network(*a, **k):
        raise AssertionError("the dry run went to the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    assert main(["transfer", "--dry-run", "--model", "THUDM/CogVideoX-5b-I2V"]) == 0
    out = capsys.readouterr().out
    assert "49 frames at 480x720, guidance block 20" in out and "image latents" in out
    assert "image-to-video (--image required): the image is encoded by the VAE" in out
    assert main(["transfer", "--dry-run", "--model", "THUDM/CogVideoX1.5-5B-I2V", "--opt-mode", "emb"]) == 0
    out = capsys.readouterr().out
    assert "81 frames at 768x1360, guidance block 20" in out and "for the image-to-video model; unverified" in out
    gib = [float(line.split()[-2]) for line in out.splitlines() if line.startswith("predicted peak")]
    assert len(gib) == 1 and np.isfinite(gib[0])
