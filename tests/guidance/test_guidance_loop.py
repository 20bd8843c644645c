"""The guided loop end to end on tiny CogVideoX models (CPU): modes, losses, resume, embeddings."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from ditflow_fast.families.cogvideox import tiny  # noqa: E402
from ditflow_fast.guidance import losses  # noqa: E402
from ditflow_fast.guidance.config import GuidanceConfig  # noqa: E402
from ditflow_fast.guidance.embeds import EmbeddingError, load_embeddings  # noqa: E402
from ditflow_fast.guidance.loop import Guide  # noqa: E402

STEPS, GUIDED = 4, 2


pytestmark = pytest.mark.usefixtures("one_thread")


def _guide(rope=True, latent_frames=3, **kw):
    tr = tiny.tiny_transformer(rope)
    g = torch.Generator().manual_seed(7)
    ref = torch.randn(1, latent_frames, 4, 6, 8, generator=g)
    pe = tiny.tiny_prompt_embeds()
    settings = dict(model="tiny", steps=STEPS, guided_steps=GUIDED, opt_iters=2, height=48, width=64, frames=9,
                    lr=(0.05, 0.02))
    settings.update(kw)
    cfg = GuidanceConfig(**settings).resolve(tr, device="cpu")
    return Guide(tr, tiny.tiny_scheduler(rope), ref_latent=ref, prompt_embeds=pe["prompt"],
                 negative_embeds=pe["negative"], config=cfg, model_id="tiny")


@pytest.mark.parametrize("rope,opt_mode,loss", [
    (True, "latent", "flow"), (True, "emb", "flow"), (False, "latent", "flow"), (False, "emb", "flow"),
    (True, "latent", "moft"), (False, "latent", "smm"),
])
def test_guided_run_optimises_and_differs_from_unguided(rope, opt_mode, loss, tmp_path):
    res = _guide(rope, opt_mode=opt_mode, loss=loss).run(progress=False, embeds_dir=tmp_path / "emb")
    plain = _guide(rope, guidance=False).run(progress=False)
    assert res.latents.shape == (1, 3, 4, 6, 8) and torch.isfinite(res.latents).all()
    assert sorted(res.losses) == sorted(_guide(rope).guided)
    for hist in res.losses.values():
        assert len(hist) == 2 and all(torch.isfinite(torch.tensor(hist)))
    assert not torch.equal(res.latents, plain.latents)
    assert len(res.saved_embeddings) == (GUIDED if opt_mode == "emb" else 0)


def test_first_iteration_loss_drops_under_adam():
    g = _guide(True, opt_iters=6, lr=(0.2, 0.2), guided_steps=1, steps=1)
    hist = next(iter(g.run(progress=False).losses.values()))
    assert hist[-1] < hist[0]


def test_resume_equals_uninterrupted(tmp_path):
    full = _guide(True, opt_mode="emb").run(progress=False, embeds_dir=tmp_path / "e1")
    part = _guide(True, opt_mode="emb").run(progress=False, state_dir=tmp_path / "s", embeds_dir=tmp_path / "e2",
                                            max_steps=GUIDED + 1)
    assert part.latents is None
    rest = _guide(True, opt_mode="emb").run(progress=False, state_dir=tmp_path / "s", embeds_dir=tmp_path / "e2")
    assert rest.resumed_from == GUIDED + 1
    assert torch.equal(rest.latents, full.latents)
    with pytest.raises(ValueError, match="other settings"):
        _guide(True, opt_mode="emb", seed=5).run(progress=False, state_dir=tmp_path / "s")


@pytest.mark.parametrize("rope", [True, False])
def test_embedding_save_inject_round_trip(rope, tmp_path):
    saved = _guide(rope, opt_mode="emb").run(progress=False, embeds_dir=tmp_path)
    g = _guide(rope, opt_mode="emb", inject_embeds=str(tmp_path))
    injected = g.run(progress=False)
    assert injected.losses == {}  # zero-shot: nothing optimised
    assert torch.equal(injected.latents, saved.latents)  # same prompt and seed: the same video
    loaded = load_embeddings(tmp_path, timesteps=g.guided, transformer=g.tr, latent_shape=(3, 6, 8),
                             expected_shape=g.emb_shape)
    assert set(loaded) == set(g.guided)


def test_injection_validation_names_the_problem(tmp_path):
    _guide(True, opt_mode="emb").run(progress=False, embeds_dir=tmp_path / "rope")
    g = _guide(False, opt_mode="emb", inject_embeds=str(tmp_path / "rope"))
    with pytest.raises(EmbeddingError, match="kind mismatch"):
        g.run(progress=False)
    with pytest.raises(EmbeddingError, match="no such folder"):
        _guide(True, opt_mode="emb", inject_embeds=str(tmp_path / "none")).run(progress=False)
    with pytest.raises(EmbeddingError, match="no embedding for timestep"):
        _guide(True, opt_mode="emb", inject_embeds=str(tmp_path / "rope"), steps=6).run(progress=False)
    g = _guide(True, opt_mode="emb", inject_embeds=str(tmp_path / "rope"))
    with pytest.raises(EmbeddingError, match="latent size mismatch"):
        load_embeddings(tmp_path / "rope", timesteps=g.guided, transformer=g.tr, latent_shape=(4, 6, 8),
                        expected_shape=g.emb_shape)


def test_guidance_interval_limits_cfg_to_the_noisier_steps():
    kw = dict(guidance=False, dynamic_cfg=False)
    full = _guide(True, **kw).run(progress=False).latents
    cond_only = _guide(True, cfg_scale=1.0, **kw).run(progress=False).latents
    never = _guide(True, cfg_min_t=1000, **kw)  # above every timestep: no unconditional pass at all
    torch.testing.assert_close(never.run(progress=False).latents, cond_only)
    first_two = _guide(True, cfg_min_t=never.timesteps[1], **kw).run(progress=False).latents
    assert not torch.allclose(first_two, full) and not torch.allclose(first_two, cond_only)
    assert GuidanceConfig().run_key() != GuidanceConfig(cfg_min_t=500).run_key()  # a state resumes under its interval
    with pytest.raises(ValueError, match="cfg_min_t"):
        GuidanceConfig(cfg_min_t=-1).validate()


def test_config_rejects_bad_settings():
    tr = tiny.tiny_transformer(True)
    with pytest.raises(ValueError, match="multiples of 16"):
        GuidanceConfig(height=50).resolve(tr)
    with pytest.raises(ValueError, match="opt_mode"):
        GuidanceConfig(opt_mode="rope").resolve(tr)
    with pytest.raises(ValueError, match="does not exist"):
        GuidanceConfig(guidance_blocks=(9,)).resolve(tr)
    with pytest.raises(ValueError, match="needs --opt-mode emb"):
        GuidanceConfig(inject_embeds="x").resolve(tr)
    cfg = GuidanceConfig().resolve(tr, device="cpu")
    assert cfg.scheduler == "dpm" and cfg.dynamic_cfg and cfg.guidance_blocks == (1,)
    assert cfg.lr_at(0) == 0.002 and abs(cfg.lr_at(9) - 0.001) < 1e-12


def test_smm_and_moft_losses_are_zero_on_the_reference_itself():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(1, 3 * 12, 50, generator=g)
    for kind in ("smm", "moft"):
        target = losses.reference(kind, feats, frames=3, h=3, w=4, prop_motion=0.1)
        val = losses.loss(kind, feats, target, frames=3, h=3, w=4)
        assert abs(float(val)) < 1e-6
        other = losses.loss(kind, torch.randn(1, 36, 50, generator=g), target, frames=3, h=3, w=4)
        assert float(other) > 0.01
    with pytest.raises(ValueError, match="loss must be"):
        losses.reference("l2", feats, frames=3, h=3, w=4)


@pytest.mark.parametrize("rope,dtype,opt_mode", [(True, "bfloat16", "emb"), (False, "float16", "latent")])
def test_half_precision_models_run(rope, dtype, opt_mode):
    g = _guide(rope, dtype=dtype, opt_mode=opt_mode)
    g.tr.to(getattr(torch, dtype))
    res = g.run(progress=False)
    assert res.latents.dtype == getattr(torch, dtype) and torch.isfinite(res.latents).all()
    assert all(torch.isfinite(torch.tensor(v)).all() for v in res.losses.values())


@pytest.mark.parametrize("rope,frames,opt_mode", [(False, 5, "emb"), (True, 1, "latent"), (True, 4, "emb")])
def test_any_latent_frame_count(rope, frames, opt_mode):
    g = _guide(rope, latent_frames=frames, opt_mode=opt_mode)
    res = g.run(progress=False)
    assert res.latents.shape == (1, frames, 4, 6, 8) and torch.isfinite(res.latents).all()
    assert g.emb_shape[-2] == frames * 12


def test_several_guidance_blocks_average_their_losses():
    g = _guide(True, guidance_blocks=(0, 2), guided_steps=1, steps=1)
    targets = g.reference_targets()
    assert sorted(targets) == [0, 2]
    both = float(g._loss(g.noise.float(), g.timesteps[0], None, targets))
    singles = []
    for b in (0, 2):
        gb = _guide(True, guidance_blocks=(b,), guided_steps=1, steps=1)
        singles.append(float(gb._loss(gb.noise.float(), gb.timesteps[0], None, gb.reference_targets())))
    assert abs(both - sum(singles) / 2) < 1e-5


@pytest.mark.parametrize("checkpointing", [True, False])
def test_rope_emb_mode_with_and_without_checkpointing(checkpointing, tmp_path):
    # The RoPE tables' gradient needs the un-rotated q/k: an in-place RoPE write would break it
    # when no checkpointing re-runs the block.
    res = _guide(True, opt_mode="emb", gradient_checkpointing=checkpointing).run(progress=False, embeds_dir=tmp_path)
    assert len(res.saved_embeddings) == GUIDED and torch.isfinite(res.latents).all()


def test_the_cpu_kernels_buffers_are_let_go_after_the_guided_steps(monkeypatch):
    import ditflow_fast.guidance.loop as loop
    from ditflow_fast import _native

    if _native.why_unavailable() is not None:
        pytest.skip("cpu backend unavailable")
    held = []
    real = loop.release_scratch

    def spy():
        held.append(_native.ops().scratch_bytes())
        return real()

    monkeypatch.setattr(loop, "release_scratch", spy)
    _guide(True, backend="cpu").run(progress=False)
    assert held[0] > 0  # the guided steps' AMF calls kept buffers, let go after the last one
    assert _native.ops().scratch_bytes() == 0
