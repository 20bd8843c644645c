"""The HunyuanVideo family (ditflow_fast.families.hunyuan) on tiny components built from configs (CPU): what the
conformance test does not cover (single-stream blocks, bf16, the pipeline's own sampling, the embedded guidance,
the packed prompts, the defaults)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from _sdpa_spy import SDPASpy  # noqa: E402

from ditflow_fast.errors import ModelError  # noqa: E402
from ditflow_fast.families.hunyuan import text as hy_text  # noqa: E402
from ditflow_fast.families.hunyuan import tiny  # noqa: E402
from ditflow_fast.families.hunyuan.attention import HunyuanGuidedAttnProcessor  # noqa: E402
from ditflow_fast.families.hunyuan.family import HunyuanVideoFamily as H  # noqa: E402
from ditflow_fast.guidance.config import GuidanceConfig  # noqa: E402
from ditflow_fast.guidance.loop import Guide  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
PRESET = "hunyuanvideo-community/HunyuanVideo"


def _inputs(batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, tiny.Z_DIM, 3, 6, 10, generator=g), tiny.random_prompt(g, batch)


def _run(tr, x, e, t=500.25, emb=None):
    with torch.no_grad():
        return H.forward(tr, x, e, t, emb)


def test_processor_signature_is_the_stock_ones():
    from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0

    ours = list(inspect.signature(HunyuanGuidedAttnProcessor.__call__).parameters)
    assert ours == list(inspect.signature(HunyuanVideoAttnProcessor2_0.__call__).parameters)


def test_blocks_are_dual_then_single_stream_and_all_get_the_processor():
    tr = tiny.tiny_transformer(layers=5, single=3)
    blocks = H.blocks(tr)
    assert [type(b).__name__ for b in blocks] == ["HunyuanVideoTransformerBlock"] * 2 + \
        ["HunyuanVideoSingleTransformerBlock"] * 3
    H.install(tr)
    assert all(isinstance(b.attn.processor, HunyuanGuidedAttnProcessor) for b in blocks)
    assert [b.attn.processor.block_index for b in blocks] == list(range(5))
    # the token refiner's attention keeps the stock processor
    refiner = tr.context_embedder.token_refiner.refiner_blocks[0].attn.processor
    assert not isinstance(refiner, HunyuanGuidedAttnProcessor)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_idle_processor_is_bit_identical_to_stock(dtype):
    tr = tiny.tiny_transformer(layers=4).to(dtype)
    x, e = _inputs()
    stock = _run(tr, x.to(dtype), e)
    ctrl = H.install(tr)
    ctrl.qk_blocks, ctrl.copy_kv_blocks, ctrl.armed = frozenset({1, 3}), frozenset({0, 2}), True
    armed = _run(tr, x.to(dtype), e)
    ctrl.armed = False
    H.uninstall(tr)
    assert torch.equal(stock, armed) and torch.equal(stock, _run(tr, x.to(dtype), e))


@pytest.mark.parametrize("block", [0, 2])  # dual-stream, single-stream
def test_capture_and_injection_see_the_video_tokens_only(block, monkeypatch):
    tr = tiny.tiny_transformer()
    x, e = _inputs(seed=3)
    n, text = 3 * 3 * 5, e.shape[1]
    sdpa = SDPASpy(monkeypatch, H.blocks(tr)[block].attn)
    ctrl = H.install(tr)
    plain = _run(tr, x, e)
    (q_ref, k_ref, v_ref), = sdpa.calls
    assert q_ref.shape[2] == n + text  # one joint attention: video first, the text suffix after
    with torch.no_grad():
        c = H.run_until(tr, x, e, 500.25, stop_after=block, qk_blocks=[block], copy_kv_blocks=[block])
    q, k = c.qk[block]
    assert q.shape == (1, 2, n, 16) and torch.equal(q, q_ref[-1:, :, :n]) and torch.equal(k, k_ref[-1:, :, :n])
    own_k, own_v = c.kv[block]
    assert torch.equal(own_v, v_ref[-1:, :, :n])
    sdpa.inside, sdpa.calls[:] = False, []
    ref = torch.randn(1, 2, n, 16, generator=torch.Generator().manual_seed(4))
    ctrl.inject_kv = {block: (ref, ref * 2)}
    injected = _run(tr, x, e)
    (_, k_inj, v_inj), = sdpa.calls
    assert torch.equal(k_inj[:, :, :n], ref.expand(2, -1, -1, -1))
    assert torch.equal(v_inj[:, :, :n], 2 * ref.expand(2, -1, -1, -1))
    assert torch.equal(k_inj[:, :, n:], k_ref[:, :, n:]) and torch.equal(v_inj[:, :, n:], v_ref[:, :, n:])  # text
    assert (injected - plain).abs().max() > 1e-3


def _guide(tr, scheduler, *, seed=0, **kw):
    ref = torch.randn(1, tiny.Z_DIM, 3, 6, 10, generator=torch.Generator().manual_seed(3))
    pe = tiny.tiny_prompt_embeds()
    cfg = GuidanceConfig(**dict(dict(model="tiny", steps=4, guided_steps=2, opt_iters=2, frames=9, height=48,
                                     width=80, seed=seed), **kw)).resolve(tr, device="cpu")
    return Guide(tr, scheduler, ref_latent=ref, prompt_embeds=pe["prompt"], negative_embeds=pe["negative"],
                 empty_embeds=pe["empty"], config=cfg, model_id="tiny")


def test_an_unguided_run_is_the_pipelines_own_sampling():
    """No guidance, no injection: the loop's latents are what HunyuanVideoPipeline gives from the same noise and
    prompt (its sigmas and fractional timesteps, embedded guidance 6.0 * 1000, no unconditional pass)."""
    pipe = tiny.tiny_pipeline()
    guide = _guide(pipe.transformer, pipe.scheduler, guidance=False, injection=False)
    ours = guide.run(progress=False).latents
    assert any(float(t) != int(t) for t in guide.timestep_values)  # the model saw fractional timesteps
    embeds, mask, pooled = hy_text.unpack(tiny.tiny_prompt_embeds()["prompt"], tiny.POOLED_DIM)
    theirs = pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, prompt_attention_mask=mask, height=48, width=80,
                  num_frames=9, num_inference_steps=4, latents=guide.noise.clone(), guidance_scale=6.0,
                  output_type="latent", return_dict=False)[0]
    assert torch.equal(ours, theirs)


def test_embedded_guidance_reaches_the_model_and_no_unconditional_pass_runs(monkeypatch):
    calls = []
    real = H.forward.__func__

    def counting(cls, tr, x, e, t, emb=None):
        calls.append(e)
        return real(cls, tr, x, e, t, emb)

    monkeypatch.setattr(H, "forward", classmethod(counting))
    runs = {}
    for scale in (6.0, 2.0):
        calls.clear()
        g = _guide(tiny.tiny_transformer(), tiny.tiny_scheduler(), guidance=False, injection=False, cfg_scale=scale)
        runs[scale] = g.run(progress=False).latents
        assert g.forward_inputs == {"embedded_guidance": scale}
        assert len(calls) == 4 and all(c is g.cond for c in calls)  # one conditional forward per step
    assert not torch.equal(runs[6.0], runs[2.0])


def test_the_reference_cache_keys_on_the_embedded_guidance(tmp_path):
    from ditflow_fast.guidance.ref_cache import RefCache

    cache = RefCache(tmp_path, model="tiny")
    for scale in (6.0, 2.0, 6.0):
        g = _guide(tiny.tiny_transformer(), tiny.tiny_scheduler(), cfg_scale=scale)
        g.ref_cache = cache
        g.reference_targets()
    assert [e["hit"] for e in cache.events] == [False, False, True]


def test_sampler_timesteps_are_the_pipelines():
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import retrieve_timesteps

    ours = H.make_sampler(None, GuidanceConfig()).set_timesteps(7, "cpu")
    sched = tiny.tiny_scheduler()
    theirs, _ = retrieve_timesteps(sched, 7, "cpu", sigmas=np.linspace(1.0, 0.0, 8)[:-1])
    assert torch.equal(torch.stack(ours), theirs) and float(theirs[0]) == 1000.0
    shifted = H.make_sampler({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 7.0},
                             GuidanceConfig(flow_shift=3.0))
    assert shifted.sched.config.shift == 3.0


def test_packed_prompts_round_trip_and_bad_masks_are_refused():
    g = torch.Generator().manual_seed(0)
    emb, pooled = torch.randn(1, 6, 5, generator=g), torch.randn(1, 3, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    packed = hy_text.pack(emb, pooled, mask)
    assert packed.shape == (1, 6, 5 + 1 + 3)
    e2, m2, p2 = hy_text.unpack(packed, 3)
    assert torch.equal(e2, emb) and torch.equal(m2, mask.float()) and torch.equal(p2, pooled)
    for bad in ([[1, 0, 1, 1, 0, 0]], [[0] * 6], [[1, 1, 0.5, 0, 0, 0]]):
        broken = packed.clone()
        broken[..., 5] = torch.tensor(bad, dtype=torch.float32)
        with pytest.raises(ValueError, match="mask column"):
            hy_text.unpack(broken, 3)
    with pytest.raises(ValueError, match=r"\[B, L, D \+ 1 \+ 3\]"):
        hy_text.unpack(torch.zeros(1, 6, 4), 3)


def test_the_tiny_tokenizer_is_cropped_where_llama3s_is():
    """The pipeline crops 95 template tokens (Llama-3's count); the tiny tokenizer splits as Llama-3 does, so what
    stays is the prompt and <|eot_id|>."""
    pipe = tiny.tiny_pipeline()
    _, _, empty = pipe.encode_prompt("", device="cpu", dtype=torch.float32)
    _, _, five = pipe.encode_prompt("a dog running on grass", device="cpu", dtype=torch.float32)
    assert empty.shape == (1, 256) and int(empty.sum()) == 1 and int(five.sum()) == 6


def test_encode_prompts_is_the_pipelines_encode_prompt(tmp_path):
    folder = tiny.save_tiny_hunyuan(tmp_path / "m")
    got = H.encode_prompts(str(folder), {"prompt": "a cat jumping", "empty": ""}, None, "cpu", torch.float32)
    pipe = tiny.tiny_pipeline()
    want = hy_text.pack(*pipe.encode_prompt("a cat jumping", device="cpu", dtype=torch.float32))
    assert torch.equal(got["prompt"], want) and got["prompt"].shape == (1, 256, tiny.TEXT_DIM + 1 + tiny.POOLED_DIM)
    (folder / "text_encoder_2").rename(folder / "elsewhere")
    with pytest.raises(ModelError, match="no text_encoder_2/.*--prompt-embeds"):
        H.encode_prompts(str(folder), {"prompt": "x"}, None, "cpu", torch.float32)


def test_defaults_derive_the_guidance_block_from_depth():
    d = H.defaults(H.memory_config(PRESET))
    assert H.block_count(H.memory_config(PRESET)) == 60
    assert d["guidance_blocks"] == (28,) and (d["frames"], d["height"], d["width"]) == (129, 720, 1280)
    assert d["cfg_scale"] == 6.0 and d["scheduler"] == "flow_euler" and d["block_verified"] is False
    tr = dict(PRESET and H.memory_config(PRESET)["transformer"])
    assert GuidanceConfig(guidance_blocks=(59,)).resolve(tr, "cpu", family=H).guidance_blocks == (59,)
    with pytest.raises(ValueError, match="block 60 does not exist: the model has 60"):
        GuidanceConfig(guidance_blocks=(60,)).resolve(tr, "cpu", family=H)


def test_frame_and_size_rules():
    from types import SimpleNamespace

    tr, vae = SimpleNamespace(config=dict(patch_size=2)), SimpleNamespace(config=dict(
        temporal_compression_ratio=4, spatial_compression_ratio=8, latent_channels=16))
    assert H.geometry(tr, vae, 129, 720, 1280) == (1, 16, 33, 90, 160)
    with pytest.raises(ModelError, match="--frames 128: the HunyuanVideo VAE takes 4k\\+1 frames; nearest: 125 or 129"):
        H.geometry(tr, vae, 128, 720, 1280)
    with pytest.raises(ModelError, match="multiples of 16x16"):
        H.geometry(tr, vae, 129, 720, 1272)


@pytest.mark.parametrize("change,words", [({"image_condition_type": "token_replace"}, "image-conditioned"),
                                          ({"guidance_embeds": False}, "without guidance embedding")])
def test_only_the_distilled_text_to_video_transformer_is_taken(change, words):
    cfg = dict(H.memory_config(PRESET)["transformer"], **change)
    with pytest.raises(ModelError, match=words):
        H.check_transformer(cfg, "some/model")
