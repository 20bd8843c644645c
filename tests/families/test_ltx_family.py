"""The LTX-Video family (ditflow_fast.families.ltx) on tiny components built from configs (CPU), checked against
diffusers' own LTXPipeline where the pipeline defines the answer (denoising, prompts, latent packing)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from ditflow_fast.errors import ModelError  # noqa: E402
from ditflow_fast.families import detect, family_of, preset_family  # noqa: E402
from ditflow_fast.families.ltx import LTXFamily, geometry, tiny  # noqa: E402
from ditflow_fast.families.ltx.memory import transformer_counts  # noqa: E402
from ditflow_fast.families.ltx.presets import PRESETS, defaults  # noqa: E402
from ditflow_fast.guidance.config import GuidanceConfig  # noqa: E402

L = LTXFamily
pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(batch=2, frames=3, h=3, w=4, seed=1, text=tiny.TEXT_LEN):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, tiny.Z, frames, h, w, generator=g),
            torch.randn(batch, text, tiny.TEXT_DIM, generator=g))


def _cfg(frames=17, height=96, width=128, **kw):
    return GuidanceConfig(frames=frames, height=height, width=width, **kw).resolve(tiny.tiny_transformer(), "cpu")


def test_tokens_are_the_latent_grid_frame_major():
    x, _ = _inputs(batch=1)
    tokens = geometry.pack(x, {"patch_size": 1, "patch_size_t": 1})
    assert tokens.shape == (1, 3 * 3 * 4, tiny.Z)
    for f, h, w in ((0, 0, 0), (1, 2, 3), (2, 1, 0)):
        assert torch.equal(tokens[0, (f * 3 + h) * 4 + w], x[0, :, f, h, w])
    assert torch.equal(geometry.unpack(tokens, (3, 3, 4), {"patch_size": 1, "patch_size_t": 1}), x)
    assert L.token_grid(tiny.tiny_transformer(), x) == (3, 3, 4) and L.latent_layout == "BCFHW"


def _pipeline(tr, sched):
    from diffusers import LTXPipeline

    return LTXPipeline(scheduler=sched, vae=tiny.tiny_vae(), text_encoder=None, tokenizer=None, transformer=tr)


def test_denoising_equals_ltx_pipeline_with_padded_masked_prompts():
    """Four CFG steps of LTXPipeline (padded prompts and their masks, 17 frames at 96x128) against the family's
    forward (real tokens only, no mask) and sampler, from the same noise: the same latents."""
    tr = tiny.tiny_transformer()
    g = torch.Generator().manual_seed(3)
    cond, uncond = torch.randn(1, 10, tiny.TEXT_DIM, generator=g), torch.randn(1, 10, tiny.TEXT_DIM, generator=g)
    mask_c, mask_u = torch.zeros(1, 10), torch.zeros(1, 10)
    mask_c[:, :7], mask_u[:, :4] = 1, 1
    noise = torch.randn(1, tiny.Z, 3, 3, 4, generator=g)
    pipe = _pipeline(tr, tiny.tiny_scheduler())
    got = pipe(prompt_embeds=cond, prompt_attention_mask=mask_c, negative_prompt_embeds=uncond,
               negative_prompt_attention_mask=mask_u, height=96, width=128, num_frames=17, num_inference_steps=4,
               guidance_scale=3.0, latents=geometry.pack(noise, tr.config), output_type="latent").frames
    ref_ts = pipe.scheduler.timesteps.clone()

    sampler = L.make_sampler(tiny.tiny_scheduler(), _cfg())
    ts = sampler.set_timesteps(4, "cpu")
    assert torch.equal(torch.stack(ts), ref_ts) and float(ts[0]) == 1000.0 and float(ts[1]) % 1 != 0
    x = noise.clone()
    with torch.no_grad():
        for i, t in enumerate(ts):
            pred = L.guide_cfg(L.forward(tr, x, cond[:, :7], float(t)), L.forward(tr, x, uncond[:, :4], float(t)),
                               3.0, t, None)
            x = sampler.step(i, t, pred, x, None)
    torch.testing.assert_close(geometry.pack(x, tr.config), got, rtol=1e-5, atol=1e-6)
    # the padded tokens would change the result if they were attended (what the mask prevents)
    with torch.no_grad():
        assert (L.forward(tr, noise, cond, 500.0) - L.forward(tr, noise, cond[:, :7], 500.0)).abs().max() > 1e-4


def test_sampler_resumes_from_its_state_and_noises_by_the_schedule():
    from diffusers import FlowMatchEulerDiscreteScheduler

    cfg = _cfg()
    a = L.make_sampler(None, cfg)  # no folder scheduler: LTX-Video's
    assert isinstance(a.sched, FlowMatchEulerDiscreteScheduler) and a.sched.config.shift_terminal == 0.1
    ts = a.set_timesteps(6, "cpu")
    x, pred = torch.randn(1, 8, 3, 3, 4), torch.randn(1, 8, 3, 3, 4)
    for i in range(3):
        x = a.step(i, ts[i], pred, x, None)
    tensors, meta = a.state()
    assert meta == {"step_index": 3, "num_inference_steps": 6} and json.dumps(meta)
    b = L.make_sampler(dict(tiny.tiny_scheduler().config), cfg)
    b.set_timesteps(6, "cpu")
    b.load_state(tensors, meta, "cpu")
    assert torch.equal(b.step(3, ts[3], pred, x, None), a.step(3, ts[3], pred, x, None))
    # the forward process at a fractional timestep, also by the loop's integer key of it
    sigma = float(a.sched.sigmas[2])
    want = sigma * pred + (1 - sigma) * x
    torch.testing.assert_close(a.add_noise(x, pred, float(ts[2])), want)
    torch.testing.assert_close(a.add_noise(x, pred, int(ts[2])), want)
    with pytest.raises(ValueError, match="not one of this schedule"):
        a.add_noise(x, pred, 3)
    # the shift follows the token count, as the pipeline's mu does
    big = L.make_sampler(None, _cfg(frames=121, height=512, width=768))
    assert big.seq_len == 16 * 16 * 24 and float(big.set_timesteps(6, "cpu")[1]) > float(ts[1])
    with pytest.raises(ValueError, match="--flow-shift"):
        L.make_sampler(None, _cfg(flow_shift=3.0))


def test_emb_override_separates_query_and_key_rope_and_every_entry_gets_gradient():
    tr = tiny.tiny_transformer()
    x, e = _inputs(seed=7)
    with torch.no_grad():
        stock = L.forward(tr, x, e, 600.0)
    L.install(tr)
    emb0 = L.initial_emb(tr, x)
    d = 2 * 16
    assert emb0.shape == (2, 2, 3 * 3 * 4, d) and emb0.dtype == torch.float32
    assert (emb0[:, 0, :, :d % 6] == 1).all() and (emb0[:, 1, :, :d % 6] == 0).all()  # the padding channels
    with torch.no_grad():
        assert torch.equal(L.forward(tr, x, e, 600.0, emb0), stock)
        with pytest.raises(ValueError, match="does not fit"):
            L.forward(tr, x[:, :, :2], e, 600.0, emb0)
    emb = emb0.clone().requires_grad_(True)
    q, k = L.run_until(tr, x[-1:], e[-1:], 600.0, emb, stop_after=1, qk_blocks=[1]).qk[1]
    w = torch.randn(2, *q.shape, generator=torch.Generator().manual_seed(1))
    ((q * w[0]).sum() + (k * w[1]).sum()).backward()
    # LTX's rotation reads every entry of both tables (out = x cos + rot(x) sin): no dead halves, unlike Wan's
    assert (emb.grad[:, :, :, d % 6:] != 0).float().mean() > 0.99 and emb.grad[0].abs().sum() > 0
    moved = emb0.clone()
    moved[1] = emb0[1].roll(1, dims=1)
    with torch.no_grad():
        c0 = L.run_until(tr, x, e, 600.0, emb0, stop_after=0, qk_blocks=[0]).qk[0]
        c1 = L.run_until(tr, x, e, 600.0, moved, stop_after=0, qk_blocks=[0]).qk[0]
    assert torch.equal(c0[0], c1[0]) and not torch.equal(c0[1], c1[1])
    L.uninstall(tr)
    with pytest.raises(ValueError, match="install"):
        L.forward(tr, x, e, 600.0, emb0)


@pytest.mark.parametrize("timestep_conditioning", [False, True])
def test_encode_decode_round_trip_and_normalisation(timestep_conditioning):
    vae = tiny.tiny_vae(timestep_conditioning=timestep_conditioning)
    video = np.random.default_rng(0).integers(0, 256, (9, 64, 96, 3), dtype=np.uint8)
    lat = L.encode_video(vae, video, "cpu", torch.float32, seed=4)
    assert lat.shape == (1, tiny.Z, 2, 2, 3) and torch.equal(lat, L.encode_video(vae, video, "cpu", torch.float32, 4))
    x = torch.from_numpy(video).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    with torch.no_grad():
        raw = vae.encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(4))
    mean, std = (torch.tensor(v).view(1, -1, 1, 1, 1) for v in (tiny.LATENTS_MEAN, tiny.LATENTS_STD))
    torch.testing.assert_close(lat, (raw - mean) / std, rtol=1e-5, atol=1e-6)
    out = L.decode_latents(vae, lat)
    assert out.shape == (9, 64, 96, 3) and out.dtype == np.uint8
    with torch.no_grad():  # the pipeline's decode: decode_timestep 0, no noise
        ref = vae.decode(raw, torch.zeros(1) if timestep_conditioning else None).sample[0].clamp(-1, 1)
    ref = ((ref + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1


def test_frame_count_and_size_refusals():
    vae, tr = PRESETS["Lightricks/LTX-Video"]["vae"], PRESETS["Lightricks/LTX-Video"]["transformer"]
    assert L.latent_shape(vae, tr, 121, 512, 768) == (1, 128, 16, 16, 24)
    assert L.geometry(tiny.tiny_transformer(), tiny.tiny_vae(), 9, 64, 96) == (1, tiny.Z, 2, 2, 3)
    with pytest.raises(ModelError, match=r"--frames 10: the LTX VAE takes 8k\+1 frames; nearest: 9 or 17"):
        L.latent_shape(vae, tr, 10, 512, 768)
    with pytest.raises(ModelError, match=r"--frames 0: .*nearest: 1$"):
        L.check_frames(0)
    with pytest.raises(ModelError, match=r"--height/--width 496x768: must be multiples of 32"):
        L.latent_shape(vae, tr, 121, 496, 768)
    with pytest.raises(ModelError, match="16x spatially and 8x in time"):
        L.latent_shape(dict(vae, spatial_compression_ratio=16), tr, 121, 512, 768)
    with pytest.raises(ModelError, match="nearest: 9 or 17"):
        L.encode_video(tiny.tiny_vae(), np.zeros((12, 64, 96, 3), np.uint8), "cpu", torch.float32)


@pytest.mark.parametrize("text_encoder", [False, True])
def test_save_tiny_ltx_loads_and_is_recognised(tmp_path, text_encoder):
    path = tiny.save_tiny_ltx(tmp_path / "m", text_encoder=text_encoder)
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == "LTXPipeline" and L.matches(index, None) and detect(str(path)) is L
    assert not L.matches({"_class_name": "WanPipeline"}, "WanTransformer3DModel")
    got = L.load(str(path), torch.float32)
    assert got["transformer_2"] is None and got["boundary_ratio"] is None and not got["expand_timesteps"]
    assert got["scheduler_config"]["_class_name"] == "FlowMatchEulerDiscreteScheduler"
    ref = tiny.tiny_transformer().state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in got["transformer"].state_dict().items())
    assert torch.equal(got["vae"].latents_std, torch.tensor(tiny.LATENTS_STD))  # the statistics travel
    assert family_of(got["transformer"]) is L and not any(p.requires_grad for p in got["transformer"].parameters())
    assert (path / "text_encoder").is_dir() == text_encoder


def test_load_refusals(tmp_path):
    with pytest.raises(ModelError, match="--model .*no such folder"):
        L.load(str(tmp_path / "missing"), torch.float32)
    (tmp_path / "novae" / "transformer").mkdir(parents=True)
    with pytest.raises(ModelError, match=r"--model .*no vae/"):
        L.load(str(tmp_path / "novae"), torch.float32)
    path = tiny.save_tiny_ltx(tmp_path / "i2v")
    index = json.loads((path / "model_index.json").read_text())
    (path / "model_index.json").write_text(json.dumps(dict(index, _class_name="LTXImageToVideoPipeline")))
    with pytest.raises(ModelError, match="a LTXImageToVideoPipeline folder; the LTX guidance loop takes"):
        L.load(str(path), torch.float32)


def test_prompts_through_the_pipelines_own_encode_prompt(tmp_path):
    """Prompts from a folder (the family's encoder) and from a caller's LTXPipeline (pipeline_prompt) agree, and
    hold exactly the tokens the pipeline's mask keeps (the words and T5's ``</s>``; the empty prompt: ``</s>``)."""
    from diffusers import LTXPipeline

    path = tiny.save_tiny_ltx(tmp_path / "m", text_encoder=True)
    texts = {"prompt": "a dog running on a beach", "negative": "a red boat", "empty": ""}
    got = L.encode_prompts(str(path), texts, None, "cpu", torch.float32)
    assert {k: v.shape for k, v in got.items()} == {"prompt": (1, 7, tiny.TEXT_DIM), "negative": (1, 4, tiny.TEXT_DIM),
                                                    "empty": (1, 1, tiny.TEXT_DIM)}
    pipe = LTXPipeline.from_pretrained(str(path))
    padded, mask, _, _ = pipe.encode_prompt(texts["prompt"], do_classifier_free_guidance=False, device="cpu")
    assert padded.shape[1] == 128 and int(mask.sum()) == 7
    with torch.no_grad():
        for name, text in texts.items():
            torch.testing.assert_close(L.pipeline_prompt(pipe, text, pipe.transformer, "cpu", torch.float32),
                                       got[name])
    torch.testing.assert_close(got["prompt"], padded[:, :7])
    with pytest.raises(ModelError, match="--prompt: the model folder .* has no tokenizer/ or text_encoder/"):
        L.encode_prompts(str(tiny.save_tiny_ltx(tmp_path / "bare")), texts, None, "cpu", torch.float32)


def test_presets_defaults_and_the_unverified_block(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    entry = PRESETS["Lightricks/LTX-Video"]
    total, per_block, n = transformer_counts(json.dumps(entry["transformer"], sort_keys=True))
    assert n == 28 and 1.9e9 < total < 1.95e9 and per_block == 16 * 2048 ** 2 + 23 * 2048
    d = defaults(entry)
    assert d["guidance_blocks"] == (13,) and (d["frames"], d["height"], d["width"]) == (121, 512, 768)
    assert d["scheduler"] == "flow_euler" and d["cfg_scale"] == 3.0 and d["dtype"] == "bfloat16"
    big = {"num_layers": 48, "num_attention_heads": 32, "attention_head_dim": 128}  # LTX-Video 13B's depth
    assert defaults(big)["guidance_blocks"] == (23,)
    assert defaults(dict(tiny.tiny_transformer().config))["guidance_blocks"] == (1,)
    assert preset_family("Lightricks/LTX-Video") is L
    table = L.dry_run_table("Lightricks/LTX-Video", GuidanceConfig(), "none")
    assert "121 frames at 512x768, guidance block 13" in table and "not verified on LTX weights" in table
    assert "guidance block 13: the LTX default" not in L.dry_run_table("Lightricks/LTX-Video",
                                                                       GuidanceConfig(guidance_blocks=(13,)), "none")
    config = L.memory_config("Lightricks/LTX-Video")
    est = L.estimate(config, frames=121, height=512, width=768, guidance_block=13)
    assert 5 * 2**30 < est.total < 6 * 2**30  # the target: under 12 GiB (5.67)
    assert "about 4.48 GiB of activations untiled, with 4.36 GiB of weights" in table
    emb = L.estimate(config, frames=121, height=512, width=768, guidance_block=13, opt_mode="emb")
    assert emb.components["optimised tensor + Adam (fp32)"] == 16 * 4 * 6144 * 2048
    group = L.estimate(config, frames=121, height=512, width=768, guidance_block=13, offload="group",
                       offload_activations=True)
    assert group.total < est.total and group.host_bytes == 14 * 6144 * 2048 * 2
    fp = json.loads(L.emb_fingerprint(tiny.tiny_transformer()))
    assert fp["family"] == "ltx" and fp["rope_scale"] == [8 / 25, 32, 32] and fp["attention_head_dim"] == 16


def test_idle_processor_and_own_rope_are_exact_in_bf16():
    tr = tiny.tiny_transformer().to(torch.bfloat16)
    x, e = (t.bfloat16() for t in _inputs(seed=11))
    with torch.no_grad():
        stock = L.forward(tr, x, e, 917.31)
        L.install(tr)
        assert torch.equal(L.forward(tr, x, e, 917.31), stock)
        assert torch.equal(L.forward(tr, x, e, 917.31, L.initial_emb(tr, x)), stock)
        assert not torch.equal(L.forward(tr, x, e, 917.0), stock)  # the fractional timestep reaches the model
