"""CogVideoX 1.5 (``patch_size_t=2``) in the CogVideoX family, against diffusers' own CogVideoXPipeline (CPU, tiny)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("diffusers")

from ditflow_fast import compute_amf  # noqa: E402
from ditflow_fast.errors import ModelError  # noqa: E402
from ditflow_fast.families import FAMILIES  # noqa: E402
from ditflow_fast.families.cogvideox import tiny  # noqa: E402
from ditflow_fast.guidance.config import GuidanceConfig  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
FAM = FAMILIES["cogvideox"]


@pytest.fixture(scope="module")
def pipe():
    return tiny.tiny_pipeline15()


def _inputs(frames, batch=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, 4, 6, 8, generator=g), torch.randn(batch, tiny.TEXT_LEN, tiny.TEXT_DIM,
                                                                           generator=g)


@pytest.mark.parametrize("frames", [2, 3, 5])
def test_rope_is_the_pipelines_on_the_padded_latent(pipe, frames):
    """diffusers' pipeline computes 1.5's RoPE for the padded latent (``latents.size(1)``): ceil(F/2) patches."""
    tr = pipe.transformer
    x, _ = _inputs(frames)
    padded = frames + frames % 2
    cos, sin = pipe._prepare_rotary_positional_embeddings(48, 64, padded, torch.device("cpu"))
    emb = FAM.initial_emb(tr, x)
    n = (padded // 2) * 3 * 4
    assert emb.shape == (2, 2, n, 16) and FAM.token_grid(tr, x) == (padded // 2, 3, 4)
    for qk in range(2):
        assert torch.equal(emb[qk, 0], cos.float()) and torch.equal(emb[qk, 1], sin.float())


def test_forward_is_the_pipelines_denoiser_call(pipe):
    """Even latent counts go in as they are; an odd count gets a copy of its first frame in front (what diffusers'
    1.5 image-to-video pipeline does to its image latents), whose prediction is dropped as the pipeline drops it."""
    tr = pipe.transformer
    t = torch.full((1,), 500)
    for frames in (2, 3):
        x, e = _inputs(frames)
        padded = torch.cat([x[:, :1], x], 1) if frames % 2 else x
        rope = pipe._prepare_rotary_positional_embeddings(48, 64, padded.shape[1], torch.device("cpu"))
        with torch.no_grad():
            want = tr(padded, e, t, image_rotary_emb=rope, return_dict=False)[0][:, padded.shape[1] - frames:]
            got = FAM.forward(tr, x, e, 500)
        assert got.shape == x.shape and torch.equal(got, want)


def test_an_ofs_embedding_gets_the_value_diffusers_image_to_video_pipeline_passes():
    tr = tiny.tiny_transformer(True, 2, 0, v15=True, ofs=True)
    x, e = _inputs(2)
    rope = FAM._tables(tr, x)[0]
    t = torch.full((1,), 500)
    with torch.no_grad():
        got = FAM.forward(tr, x, e, 500)
        two = tr(x, e, t, ofs=torch.tensor([2.0]), image_rotary_emb=rope, return_dict=False)[0]
        one = tr(x, e, t, ofs=torch.tensor([1.0]), image_rotary_emb=rope, return_dict=False)[0]
    assert torch.equal(got, two) and not torch.allclose(got, one)


@pytest.mark.parametrize("frames, patch_of", [(5, [0, 1, 1, 2, 2]), (4, [0, 0, 1, 1])])
def test_a_temporal_patch_holds_two_latent_frames(frames, patch_of):
    """The AMF's frame axis: the temporal patch whose tokens a change of each latent frame reaches (odd counts:
    the first patch is latent frame 0 and its copy, then (1, 2), (3, 4), ...; even: (0, 1), (2, 3), ...)."""
    tr = tiny.tiny_transformer(True, 1, 0, v15=True)
    x, e = _inputs(frames)
    seen = []
    tr.patch_embed.register_forward_hook(lambda m, a, out: seen.append(out[:, tiny.TEXT_LEN:].reshape(-1, 12, 32)))
    with torch.no_grad():
        FAM.forward(tr, x, e, 500)
        for j in range(frames):
            y = x.clone()
            y[:, j] += 1.0
            FAM.forward(tr, y, e, 500)
    reached = [torch.nonzero((s - seen[0]).abs().amax((1, 2)) > 0).flatten().tolist() for s in seen[1:]]
    assert reached == [[p] for p in patch_of]


def test_the_amf_runs_over_temporal_patches():
    tr = tiny.tiny_transformer(True, 2, 0, v15=True)
    x, e = _inputs(5)
    FAM.install(tr)
    with torch.no_grad():
        q, k = FAM.run_until(tr, x, e, 0, stop_after=1, qk_blocks=[1]).qk[1]
    f, h, w = FAM.token_grid(tr, x)
    assert (f, h, w) == (3, 3, 4) and q.shape == (1, 2, 36, 16)
    amf = compute_amf(q, k, frames=f, height=h, width=w, mode="argmax")
    assert amf.shape == (1, 3, 3, 12, 2)  # query patch frame i, target patch frame j, 3 x 4 patches
    with pytest.raises(ValueError):
        compute_amf(q, k, frames=5, height=h, width=w)  # 5 latent frames are not the token grid


def test_the_frame_rule_is_what_diffusers_pipeline_writes(pipe):
    """Its padding of the latent frames to patch_size_t included: the pipeline writes F frames exactly when the
    family accepts F."""
    e = torch.randn(1, tiny.TEXT_LEN, tiny.TEXT_DIM)
    for frames in range(1, 14):
        with torch.no_grad():
            out = pipe(prompt_embeds=e, num_frames=frames, height=16, width=16, num_inference_steps=1,
                       guidance_scale=1.0, output_type="np", generator=torch.Generator().manual_seed(0)).frames
        try:
            FAM.check_frames(frames)
            accepted = True
        except ModelError as exc:
            accepted = False
            assert f"--frames {frames}" in str(exc) and "nearest" in str(exc)
        assert accepted == (out.shape[1] == frames), (frames, out.shape)


def test_geometry_names_what_a_15_model_cannot_take(pipe):
    tr, vae = pipe.transformer, pipe.vae
    assert FAM.geometry(tr, vae, 9, 48, 64) == (1, 3, 4, 6, 8)  # the real latent frames: padding is per forward
    with pytest.raises(ModelError, match="--frames 10: .*nearest: 9 or 16"):
        FAM.geometry(tr, vae, 10, 48, 64)
    with pytest.raises(ModelError, match="--height/--width 64x64: this model's RoPE grid covers at most 48x64"):
        FAM.geometry(tr, vae, 9, 64, 64)
    odd = tiny.tiny_transformer(True, 1, 0, v15=True)
    odd.register_to_config(in_channels=9)  # 2x the latent channels is image-to-video (tests/i2v/); this is neither
    with pytest.raises(ModelError, match="neither text-to-video nor CogVideoXImageToVideoPipeline"):
        FAM.geometry(odd, vae, 9, 48, 64)


def test_embeddings_of_15_and_10_models_are_told_apart():
    one = tiny.tiny_transformer(True)
    assert "patch_size_t" not in json.loads(FAM.emb_fingerprint(one))  # 1.0's saved embeddings stay valid
    assert json.loads(FAM.emb_fingerprint(tiny.tiny_transformer(True, v15=True)))["patch_size_t"] == 2


def test_the_sampler_is_dpm_built_from_the_folders_ddim_config():
    cfg = GuidanceConfig(steps=5, guided_steps=2).resolve(tiny.tiny_transformer(True, v15=True), device="cpu")
    folder_cfg = dict(tiny.tiny_scheduler(True, folder=True).config)
    sampler = FAM.make_sampler(folder_cfg, cfg)
    assert type(sampler.sched).__name__ == "CogVideoXDPMScheduler" and sampler.sched.config.snr_shift_scale == 1.0
    assert sampler.set_timesteps(5, "cpu")[0] == 999  # trailing spacing


def test_the_public_15_preset_defaults_and_memory():
    config = FAM.memory_config("THUDM/CogVideoX1.5-5B")
    d = FAM.defaults(config)
    assert (d["guidance_blocks"], d["frames"], d["height"], d["width"]) == ((20,), 81, 768, 1360)
    assert "unverified" in d["note"] and "note" not in FAM.defaults(FAM.memory_config("THUDM/CogVideoX-5b"))
    est = FAM.estimate(config, frames=81, height=768, width=1360, guidance_block=20)
    n = 11 * 48 * 85  # 21 latent frames -> 11 temporal patches of 48 x 85
    assert est.components["captured q, k and grads"] == 4 * 48 * n * 64 * 2
    assert est.total < 24 * 2 ** 30
    table = FAM.dry_run_table("THUDM/CogVideoX1.5-5B", GuidanceConfig(), "none")
    assert "81 frames at 768x1360, guidance block 20" in table and "unverified" in table
