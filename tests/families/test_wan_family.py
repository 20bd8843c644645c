"""The Wan family (ditflow_fast.families.wan) on tiny Wan components built from configs (CPU)."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("diffusers")

from ditflow_fast import compute_amf  # noqa: E402
from ditflow_fast.errors import ModelError  # noqa: E402
from ditflow_fast.families.wan import tiny as wan_tiny  # noqa: E402
from ditflow_fast.families.wan.family import PRESETS, WanFamily, WanGuidedAttnProcessor, transformer_params  # noqa: E402
from ditflow_fast.guidance.controller import GuidanceController  # noqa: E402

W = WanFamily
pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(batch=2, frames=3, h=6, w=10, seed=1, channels=wan_tiny.Z_DIM):
    """Awkward sizes: 3 latent frames of 3 x 5 patches, batch 2."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, frames, h, w, generator=g)
    e = torch.randn(batch, wan_tiny.TEXT_LEN, wan_tiny.TEXT_DIM, generator=g)
    return x, e


def _run(tr, x, e, t=500, emb=None):
    with torch.no_grad():
        return W.forward(tr, x, e, t, emb)


def test_processor_signature_is_spelled_out():
    params = list(inspect.signature(WanGuidedAttnProcessor.__call__).parameters)
    assert params == ["self", "attn", "hidden_states", "encoder_hidden_states", "attention_mask", "rotary_emb"]


@pytest.mark.parametrize("dtype,fused", [(torch.float32, False), (torch.bfloat16, False), (torch.float32, True)])
def test_idle_processor_is_bit_identical_to_stock(dtype, fused):
    tr = wan_tiny.tiny_transformer().to(dtype)
    if fused:
        tr.fuse_qkv_projections()
    x, e = (t.to(dtype) for t in _inputs())
    stock = _run(tr, x, e)
    ctrl = W.install(tr)
    assert all(type(b.attn1.processor).__name__ == "WanGuidedAttnProcessor" for b in tr.blocks)
    assert all(type(b.attn2.processor).__name__ == "WanAttnProcessor" for b in tr.blocks)
    ours = _run(tr, x, e)
    # Armed with records asked but no stop: the output is still the stock one.
    ctrl.qk_blocks, ctrl.copy_kv_blocks, ctrl.armed = frozenset({0, 2}), frozenset({1}), True
    armed = _run(tr, x, e)
    ctrl.armed = False
    W.uninstall(tr)
    back = _run(tr, x, e)
    assert torch.equal(stock, ours) and torch.equal(stock, armed) and torch.equal(stock, back)
    assert not hasattr(tr, "_ditflow_guidance")
    if dtype == torch.bfloat16:  # the override with the model's own RoPE is exact in bf16 too
        W.install(tr)
        assert torch.equal(_run(tr, x, e, emb=W.initial_emb(tr, x)), stock)


def _rotate_pairs(x, cos, sin):
    """Manual RoPE: each channel pair (2i, 2i+1) rotated by the angle whose cos/sin sit at 2i."""
    c, s = cos[:, 0::2], sin[:, 0::2]  # [N, d/2]; the tables repeat each entry twice
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.stack([x1 * c[:, None] - x2 * s[:, None], x1 * s[:, None] + x2 * c[:, None]], dim=-1)
    return out.flatten(-2)


def test_captured_qk_equal_a_manual_recomputation():
    tr = wan_tiny.tiny_transformer()
    W.install(tr)
    x, e = _inputs(frames=2, h=4, w=14, seed=3)
    block = 1
    seen = {}
    handle = tr.blocks[block].attn1.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    with torch.no_grad():
        ctrl = W.run_until(tr, x, e, 700, stop_after=block, qk_blocks=[block])
    handle.remove()
    q, k = ctrl.qk[block]
    n = 2 * 2 * 7
    assert q.shape == k.shape == (1, 2, n, 16)
    attn = tr.blocks[block].attn1
    inp = seen["x"][-1:]  # the picked (last) batch element
    cos, sin = W.rope(tr, x)
    assert cos.shape == (n, 16) and cos.dtype == torch.float32
    with torch.no_grad():
        mq = _rotate_pairs(attn.norm_q(attn.to_q(inp)).unflatten(2, (2, -1)), cos, sin).transpose(1, 2)
        mk = _rotate_pairs(attn.norm_k(attn.to_k(inp)).unflatten(2, (2, -1)), cos, sin).transpose(1, 2)
    torch.testing.assert_close(q, mq, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(k, mk, rtol=1e-6, atol=1e-6)


class _ManualKV:
    """Stock Wan self-attention with K/V replaced by given tensors, written out by hand."""

    def __init__(self, ref_k, ref_v):
        self.ref_k, self.ref_v = ref_k, ref_v

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        b = hidden_states.shape[0]
        q = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        cos, sin = rotary_emb
        q = _rotate_pairs(q, cos[0, :, 0], sin[0, :, 0]).transpose(1, 2)  # [B, H, N, d]
        k = self.ref_k.expand(b, -1, -1, -1)
        v = self.ref_v.expand(b, -1, -1, -1)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2, 3)
        return attn.to_out[1](attn.to_out[0](out))


def test_injection_replaces_exactly_the_video_kv():
    tr = wan_tiny.tiny_transformer()
    x, e = _inputs(seed=5)
    n = 3 * 3 * 5
    g = torch.Generator().manual_seed(9)
    ref_k, ref_v = torch.randn(1, 2, n, 16, generator=g), torch.randn(1, 2, n, 16, generator=g)
    ctrl = W.install(tr)
    plain = _run(tr, x, e)
    ctrl.inject_kv = {1: (ref_k, ref_v)}
    injected = _run(tr, x, e)
    ctrl.inject_kv = {}
    W.uninstall(tr)
    tr.blocks[1].attn1.set_processor(_ManualKV(ref_k, ref_v))
    manual = _run(tr, x, e)
    torch.testing.assert_close(injected, manual, rtol=1e-5, atol=1e-6)
    assert (injected - plain).abs().max() > 1e-3

    # Copy a reference forward's K/V and inject them into a forward of the same input: unchanged.
    tr2 = wan_tiny.tiny_transformer()
    W.install(tr2)
    with torch.no_grad():
        kv = dict(W.run_until(tr2, x[-1:], e[-1:], 500, stop_after=2, copy_kv_blocks=[0, 2]).kv)
    assert kv[0][0].shape == (1, 2, n, 16) and kv[0][0].is_contiguous()
    ctrl2 = W.install(tr2)
    base = _run(tr2, x[-1:], e[-1:])
    ctrl2.inject_kv = kv
    assert torch.equal(_run(tr2, x[-1:], e[-1:]), base)
    ctrl2.inject_kv = {0: (ref_k[:, :, :-1], ref_v[:, :, :-1])}
    with pytest.raises(ValueError, match="do not fit"):
        _run(tr2, x, e)


def test_emb_override_matches_own_rope_and_gradients_reach_it():
    tr = wan_tiny.tiny_transformer()
    x, e = _inputs(frames=2, h=6, w=8, seed=7)
    stock = _run(tr, x, e)
    W.install(tr)
    emb0 = W.initial_emb(tr, x)
    assert emb0.shape == (2, 2, 2 * 3 * 4, 16) and emb0.dtype == torch.float32
    assert torch.equal(_run(tr, x, e, emb=emb0), stock)
    with pytest.raises(ValueError, match="does not fit"):
        _run(tr, x[:, :, :1], e, emb=emb0)

    ref = compute_amf(*W.run_until(tr, x[:1], e[:1], 0, stop_after=1, qk_blocks=[1]).qk[1],
                      frames=2, height=3, width=4, mode="argmax")

    def grads(checkpointing):
        if checkpointing:
            tr.enable_gradient_checkpointing()
        else:
            tr.disable_gradient_checkpointing()
        emb = emb0.clone().requires_grad_(True)
        ctrl = W.run_until(tr, x[-1:], e[-1:], 600, emb, stop_after=1, qk_blocks=[1])
        gen = compute_amf(*ctrl.qk[1], frames=2, height=3, width=4, mode="soft", temperature=2.0)
        ((gen - ref) ** 2).mean().backward()
        ctrl.clear_captures()
        return emb.grad

    g = grads(False)
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    # The rotation reads cos at even and sin at odd channels: the other halves get no gradient.
    assert g[:, 0, :, 1::2].abs().max() == 0 and g[:, 1, :, 0::2].abs().max() == 0
    assert g[0].abs().sum() > 0 and g[1].abs().sum() > 0  # both query and key RoPE are used
    torch.testing.assert_close(grads(True), g, rtol=1e-5, atol=1e-7)
    tr.disable_gradient_checkpointing()

    # Separate q/k: moving the key RoPE changes the keys only.
    emb = emb0.clone()
    emb[1] = emb0[1].roll(1, dims=1)
    with torch.no_grad():
        c0 = W.run_until(tr, x, e, 600, emb0, stop_after=0, qk_blocks=[0]).qk[0]
        c1 = W.run_until(tr, x, e, 600, emb, stop_after=0, qk_blocks=[0]).qk[0]
    assert torch.equal(c0[0], c1[0]) and not torch.equal(c0[1], c1[1])


def test_emb_override_needs_the_guided_processors():
    tr = wan_tiny.tiny_transformer()
    x, e = _inputs()
    with pytest.raises(ValueError, match="install"):
        _run(tr, x, e, emb=W.initial_emb(tr, x))


def test_early_stop_after_the_guidance_block():
    tr = wan_tiny.tiny_transformer(layers=4)
    x, e = _inputs(seed=11)
    W.install(tr)
    ran = []
    hooks = [b.register_forward_pre_hook(lambda m, a, i=i: ran.append(i)) for i, b in enumerate(tr.blocks)]
    hooks.append(tr.proj_out.register_forward_pre_hook(lambda m, a: ran.append("proj_out")))
    with torch.no_grad():
        W.run_until(tr, x, e, 400, stop_after=1, qk_blocks=[1])
    assert ran == [0, 1]
    ran.clear()
    full_out = {}
    hooks.append(tr.blocks[2].register_forward_hook(lambda m, a, o: full_out.update(o=o)))
    _run(tr, x, e, 400)
    assert ran == [0, 1, 2, 3, "proj_out"]
    ran.clear()
    with torch.no_grad():
        ctrl = W.run_until(tr, x, e, 400, stop_after=2, out_blocks=[2])
    assert ran == [0, 1, 2]
    assert torch.equal(ctrl.out[2], full_out["o"][-1:]) and ctrl.out[2].shape == (1, 45, 32)
    for h in hooks:
        h.remove()
    with pytest.raises(ValueError, match="out of range"):
        W.run_until(tr, x, e, 400, stop_after=4)
    with pytest.raises(ValueError, match="comes before"):
        W.run_until(tr, x, e, 400, stop_after=0, qk_blocks=[1])
    assert not tr.blocks[0].attn1.processor.controller.armed


def test_expand_timesteps_gives_the_same_prediction():
    tr = wan_tiny.tiny_transformer()
    x, e = _inputs(seed=13)
    ts = W.timestep_input(tr, x, torch.tensor(321), expand_timesteps=True)
    assert ts.shape == (2, 45) and ts.dtype == torch.float32 and (ts == 321).all()
    assert W.timestep_input(tr, x, 321).tolist() == [321, 321]
    assert W.timestep_input(tr, x, torch.tensor([5, 7])).tolist() == [5, 7]
    per = W.timestep_input(tr, x, torch.tensor([5, 7]), expand_timesteps=True)
    assert per.shape == (2, 45) and (per[0] == 5).all() and (per[1] == 7).all()
    with pytest.raises(ValueError, match="batch of 2"):
        W.timestep_input(tr, x, torch.tensor([1, 2, 3]))
    with torch.no_grad():
        a = W.forward(tr, x, e, 321)
        b = W.forward(tr, x, e, 321, expand_timesteps=True)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("wan22", [False, True])
def test_encode_decode_round_trip_and_normalisation(wan22):
    vae = wan_tiny.tiny_vae(wan22=wan22)
    rng = np.random.default_rng(0)
    h, w = (48, 80) if wan22 else (40, 56)
    video = rng.integers(0, 256, (9, h, w, 3), dtype=np.uint8)
    lat = W.encode_video(vae, video, "cpu", torch.float32, seed=4)
    s = vae.config.scale_factor_spatial
    assert lat.shape == (1, vae.config.z_dim, 3, h // s, w // s) and lat.dtype == torch.float32
    assert torch.equal(lat, W.encode_video(vae, video, "cpu", torch.float32, seed=4))
    x = torch.from_numpy(video).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    with torch.no_grad():
        raw = vae.encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(4))
    z = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1)
    torch.testing.assert_close(lat, (raw - mean) / std, rtol=1e-5, atol=1e-6)
    out = W.decode_latents(vae, lat)
    assert out.shape == (9, h, w, 3) and out.dtype == np.uint8
    with torch.no_grad():
        ref = vae.decode(raw).sample[0].clamp(-1, 1)
    ref = ((ref + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1


def test_frame_count_and_size_refusals():
    v21, v22 = PRESETS["Wan-AI/Wan2.1-T2V-1.3B-Diffusers"]["vae"], PRESETS["Wan-AI/Wan2.2-TI2V-5B-Diffusers"]["vae"]
    t = PRESETS["Wan-AI/Wan2.1-T2V-1.3B-Diffusers"]["transformer"]
    assert W.latent_shape(v21, t, 81, 480, 832) == (1, 16, 21, 60, 104)
    assert W.latent_shape(v22, t, 121, 704, 1280) == (1, 48, 31, 44, 80)
    with pytest.raises(ModelError, match=r"--frames 10: .*4k\+1.*nearest: 9 or 13"):
        W.latent_shape(v21, t, 10, 480, 832)
    with pytest.raises(ModelError, match="--frames 24.*21 or 25"):
        W.latent_shape(v21, t, 24, 480, 832)
    with pytest.raises(ModelError, match="--frames 0"):
        W.latent_shape(v21, t, 0, 480, 832)
    with pytest.raises(ModelError, match=r"--height/--width 480x840: must be multiples of 16x16"):
        W.latent_shape(v21, t, 81, 480, 840)
    with pytest.raises(ModelError, match="multiples of 32x32"):
        W.latent_shape(v22, t, 121, 720, 1280)
    video = np.zeros((10, 40, 56, 3), np.uint8)
    with pytest.raises(ModelError, match="nearest: 9 or 13"):
        W.encode_video(wan_tiny.tiny_vae(), video, "cpu", torch.float32)


def _denoise(tr, sched, latents, e, steps, start=0, stop=None):
    for i in range(start, steps if stop is None else stop):
        t = sched.timesteps[i]
        with torch.no_grad():
            pred = W.cfg(W.forward(tr, latents, e[-1:], t), W.forward(tr, latents, e[:1], t), 5.0)
        latents = sched.step(pred, t, latents, return_dict=False)[0]
    return latents


def test_unipc_resume_is_bit_exact(tmp_path):
    from safetensors.torch import load_file, save_file

    tr = wan_tiny.tiny_transformer()
    x, e = _inputs(batch=1, seed=17)
    e = torch.cat([e, torch.randn_like(e)])
    steps, cut = 7, 3
    sched = W.make_scheduler(dict(wan_tiny.tiny_scheduler().config))
    assert type(sched).__name__ == "UniPCMultistepScheduler" and sched.config.flow_shift == 3.0
    sched.set_timesteps(steps)
    full = _denoise(tr, sched, x.clone(), e, steps)

    first = W.make_scheduler(dict(wan_tiny.tiny_scheduler().config))
    first.set_timesteps(steps)
    mid = _denoise(tr, first, x.clone(), e, steps, stop=cut)
    state = W.scheduler_state(first)
    assert state["meta"]["step_index"] == cut and state["meta"]["lower_order_nums"] == 2
    save_file({**{f"sched.{k}": v for k, v in state["tensors"].items()}, "latents": mid}, str(tmp_path / "s.st"),
              metadata={"sched": json.dumps(state["meta"])})
    del first

    loaded = load_file(str(tmp_path / "s.st"))
    from safetensors import safe_open

    with safe_open(str(tmp_path / "s.st"), framework="pt") as f:
        meta = json.loads(f.metadata()["sched"])
    resumed = W.make_scheduler(dict(wan_tiny.tiny_scheduler().config))
    W.load_scheduler_state(resumed, {"tensors": {k[6:]: v for k, v in loaded.items() if k.startswith("sched.")},
                                     "meta": meta})
    out = _denoise(tr, resumed, loaded["latents"], e, steps, start=cut)
    assert torch.equal(out, full)

    # Without the history the continuation differs: the state is what makes resuming exact.
    naive = W.make_scheduler(dict(wan_tiny.tiny_scheduler().config))
    naive.set_timesteps(steps)
    naive._step_index = cut
    assert not torch.equal(_denoise(tr, naive, loaded["latents"], e, steps, start=cut), full)


def test_make_scheduler_shift_and_fallback():
    s = W.make_scheduler(None)
    assert s.config.prediction_type == "flow_prediction" and s.config.use_flow_sigmas and s.config.flow_shift == 3.0
    assert W.make_scheduler(dict(s.config), flow_shift=5.0).config.flow_shift == 5.0
    euler = {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 7.0, "num_train_timesteps": 1000}
    assert W.make_scheduler(euler).config.flow_shift == 7.0


def test_two_expert_selection_follows_the_pipeline():
    assert W.expert_for(875, 0.875, 1000) == "transformer"
    assert W.expert_for(874.9, 0.875, 1000) == "transformer_2"
    assert W.expert_for(torch.tensor(10), None, 1000) == "transformer"
    sched = wan_tiny.tiny_scheduler()
    sched.set_timesteps(40)
    picks = [W.expert_for(t, 0.875, sched.config.num_train_timesteps) for t in sched.timesteps]
    boundary = 0.875 * sched.config.num_train_timesteps
    assert picks == ["transformer" if t >= boundary else "transformer_2" for t in sched.timesteps]
    assert "transformer" in picks and "transformer_2" in picks and picks == sorted(picks)  # high noise first
    a, b = torch.ones(1, 2), torch.zeros(1, 2)
    assert torch.equal(W.cfg(a, b, 5.0), torch.full((1, 2), 5.0))


@pytest.mark.parametrize("two", [False, True])
def test_save_tiny_wan_loads_through_the_family(tmp_path, two):
    path = wan_tiny.save_tiny_wan(tmp_path / "m", two_experts=two)
    index = json.loads((path / "model_index.json").read_text())
    assert W.matches(index, None) and W.matches(None, "WanTransformer3DModel")
    assert not W.matches({"_class_name": "CogVideoXPipeline"}, "CogVideoXTransformer3DModel")
    got = W.load(str(path), torch.float32)
    assert set(got) == {"transformer", "transformer_2", "vae", "scheduler_config", "boundary_ratio",
                        "expand_timesteps"}
    assert type(got["vae"]).__name__ == "AutoencoderKLWan" and got["expand_timesteps"] is False
    assert got["scheduler_config"]["_class_name"] == "UniPCMultistepScheduler"
    ref = wan_tiny.tiny_transformer(seed=0).state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in got["transformer"].state_dict().items())
    assert not any(p.requires_grad for p in got["transformer"].parameters())
    if two:
        assert got["boundary_ratio"] == 0.875
        ref2 = wan_tiny.tiny_transformer(seed=1).state_dict()
        assert all(torch.equal(v, ref2[k]) for k, v in got["transformer_2"].state_dict().items())
    else:
        assert got["transformer_2"] is None and got["boundary_ratio"] is None
    from safetensors.torch import load_file

    pe = load_file(str(path / "prompt_embeds.safetensors"))
    assert pe["prompt"].shape == pe["negative"].shape == (1, wan_tiny.TEXT_LEN, wan_tiny.TEXT_DIM)


def test_ti2v_layout_and_load_errors(tmp_path):
    path = wan_tiny.save_tiny_wan(tmp_path / "ti2v", wan22_vae=True)
    got = W.load(str(path), torch.float32)
    assert got["expand_timesteps"] is True and got["transformer"]._ditflow_expand_timesteps is True
    x = torch.randn(1, got["vae"].config.z_dim, 3, 4, 6)
    assert W.timestep_input(got["transformer"], x, 500).shape == (1, 3 * 2 * 3)
    with pytest.raises(ModelError, match="--model .*no such folder"):
        W.load(str(tmp_path / "missing"), torch.float32)
    (tmp_path / "novae" / "transformer").mkdir(parents=True)
    with pytest.raises(ModelError, match=r"--model .*no vae/"):
        W.load(str(tmp_path / "novae"), torch.float32)


def test_presets_and_defaults():
    n13 = transformer_params("Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    n14 = transformer_params("Wan-AI/Wan2.1-T2V-14B-Diffusers")
    n5 = transformer_params("Wan-AI/Wan2.2-TI2V-5B-Diffusers")
    assert 1.2e9 < n13 < 1.5e9 and 13e9 < n14 < 15e9 and 4.5e9 < n5 < 5.5e9
    assert transformer_params("Wan-AI/Wan2.2-T2V-A14B-Diffusers") == n14
    assert PRESETS["Wan-AI/Wan2.2-T2V-A14B-Diffusers"]["experts"] == 2
    with pytest.raises(ModelError, match="--model"):
        transformer_params("Wan-AI/nope")
    d13 = W.defaults(PRESETS["Wan-AI/Wan2.1-T2V-1.3B-Diffusers"])
    assert d13["guidance_blocks"] == (14,) and (d13["frames"], d13["height"], d13["width"]) == (81, 480, 832)
    assert d13["dtype"] == "bfloat16" and d13["cfg_scale"] == 5.0
    assert W.defaults(PRESETS["Wan-AI/Wan2.1-T2V-14B-Diffusers"]["transformer"])["guidance_blocks"] == (19,)
    a14 = W.defaults(PRESETS["Wan-AI/Wan2.2-T2V-A14B-Diffusers"])
    assert a14["steps"] == 40 and a14["cfg_scale_2"] == 3.0
    assert W.defaults(PRESETS["Wan-AI/Wan2.2-TI2V-5B-Diffusers"])["frames"] == 121
    assert W.defaults(dict(wan_tiny.tiny_transformer().config))["guidance_blocks"] == (1,)
    fp = json.loads(W.emb_fingerprint(wan_tiny.tiny_transformer()))
    assert fp["family"] == "wan" and fp["patch_size"] == [1, 2, 2] and fp["attention_head_dim"] == 16
    assert W.token_grid(wan_tiny.tiny_transformer(), torch.zeros(1, 4, 3, 6, 10)) == (3, 3, 5)
    assert W.name == "wan" and W.text_tokens == 0 and W.latent_layout == "BCFHW"
    assert isinstance(W.blocks(wan_tiny.tiny_transformer()), list)


def test_shared_controller_across_experts():
    a, b = wan_tiny.tiny_transformer(seed=0), wan_tiny.tiny_transformer(seed=1)
    ctrl = W.install(a)
    assert W.install(b, ctrl) is ctrl
    assert isinstance(ctrl, GuidanceController)
    x, e = _inputs(seed=19)
    with torch.no_grad():
        qa = W.run_until(a, x, e, 900, stop_after=0, qk_blocks=[0]).qk[0][0].clone()
        qb = W.run_until(b, x, e, 100, stop_after=0, qk_blocks=[0]).qk[0][0]
    assert not torch.equal(qa, qb)


def test_a_resume_in_the_second_experts_range_places_it_before_its_reference_pass(tmp_path, monkeypatch):
    # on an accelerator only the placed expert is on the device: the reference pass taken before the loop
    # resumes must go through the expert's placement, not find it still on the CPU
    from ditflow_fast.guidance.config import GuidanceConfig
    from ditflow_fast.guidance.loop import Guide

    def guide():
        a, b = wan_tiny.tiny_transformer(layers=3, seed=0), wan_tiny.tiny_transformer(layers=3, seed=1)
        ref = torch.randn(1, wan_tiny.Z_DIM, 3, 6, 10, generator=torch.Generator().manual_seed(7))
        pe = wan_tiny.tiny_prompt_embeds()
        cfg = GuidanceConfig(model="tiny-wan", steps=4, guided_steps=4, opt_iters=1, frames=9, height=48,
                             width=80).resolve(a, device="cpu")
        return Guide(a, wan_tiny.tiny_scheduler(), ref_latent=ref, prompt_embeds=pe["prompt"],
                     negative_embeds=pe["negative"], config=cfg, model_id="tiny-wan", family=WanFamily,
                     transformer_2=b, boundary_ratio=0.6)

    first = guide()
    names = [first._expert_name(t) for t in first.timesteps]
    assert names[:2] == ["transformer", "transformer"] and names[3] == "transformer_2"
    first.run(progress=False, state_dir=tmp_path, max_steps=3)
    events, placed, capture = [], Guide._placed, Guide._capture
    monkeypatch.setattr(Guide, "_placed", lambda self, name: events.append(("placed", name)) or placed(self, name))
    monkeypatch.setattr(Guide, "_capture", lambda self, tr, *a, **k: events.append(
        ("capture", "transformer_2" if tr is self.experts["transformer_2"] else "transformer")) or capture(
        self, tr, *a, **k))
    second = guide()
    assert second.run(progress=False, state_dir=tmp_path).resumed_from == 3
    assert events[:2] == [("placed", "transformer_2"), ("capture", "transformer_2")]
