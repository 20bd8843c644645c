"""Wan image-to-video through the family seam (ditflow_fast.families.wan.image): the tiny WanImageToVideoPipeline
folders of each kind, the conditioning against diffusers' own pipeline, and where the image enters the model (CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from ditflow_fast.errors import ModelError  # noqa: E402
from ditflow_fast.families import detect  # noqa: E402
from ditflow_fast.families.base import ImageCondition  # noqa: E402
from ditflow_fast.families.wan import WanFamily as W  # noqa: E402
from ditflow_fast.families.wan import image as i2v  # noqa: E402
from ditflow_fast.families.wan import tiny  # noqa: E402
from ditflow_fast.guidance.config import GuidanceConfig  # noqa: E402
from ditflow_fast.guidance.loop import Guide  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore")]
KINDS = ("wan21", "a14b", "ti2v")
SIZE = {"wan21": (48, 80), "a14b": (48, 80), "ti2v": (64, 96)}  # ti2v: the 16x VAE and 2x2 patches


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan_i2v")
    return {k: tiny.save_tiny_wan_i2v(root / k, k) for k in KINDS}


@pytest.fixture(scope="module")
def loaded(folders):
    return {k: W.load(str(p), torch.float32) for k, p in folders.items()}


def _image(kind, seed=0):
    h, w = SIZE[kind]
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _pipe(folder):
    from diffusers import WanImageToVideoPipeline

    # the tiny folders have no text encoder (null entries, as the text-to-video ones): say so to from_pretrained
    return WanImageToVideoPipeline.from_pretrained(str(folder), tokenizer=None, text_encoder=None)


def test_each_kind_is_a_wan_folder_with_its_inputs(folders, loaded):
    for path in folders.values():
        index = json.loads((path / "model_index.json").read_text())
        assert index["_class_name"] == "WanImageToVideoPipeline" and W.matches(index, None)
        assert detect(str(path)) is W
    c = {k: v["transformer"].config for k, v in loaded.items()}
    assert [W.image_model(dict(c[k])) for k in KINDS] == [True, True, False]  # TI2V: --image optional
    assert [i2v.kind(c[k], loaded[k]["expand_timesteps"]) for k in KINDS] == ["clip", "concat", "clean_first"]
    assert (c["wan21"].in_channels, c["wan21"].out_channels, c["wan21"].image_dim) == (12, 4, tiny.IMAGE_DIM)
    assert type(loaded["wan21"]["image_encoder"]).__name__ == "CLIPVisionModel"
    assert loaded["wan21"]["image_encoder"].dtype == torch.float32
    assert "image_processor" in loaded["wan21"] and "image_encoder" not in loaded["a14b"]
    assert loaded["a14b"]["transformer_2"] is not None and loaded["a14b"]["boundary_ratio"] == 0.9
    assert loaded["ti2v"]["expand_timesteps"] is True
    # the text a transformer with CLIP tokens takes: exactly 512 tokens (diffusers splits the context at len - 512)
    assert W.text_spec(loaded["wan21"]["transformer"]) == (512, tiny.TEXT_DIM)
    assert W.text_spec(loaded["a14b"]["transformer"]) == (None, tiny.TEXT_DIM)


def _guide(comps, sched, cond, pe, frames, h, w, **kw):
    vae = comps["vae"]
    s, z = vae.config.scale_factor_spatial, vae.config.z_dim
    ref = torch.zeros(1, z, (frames - 1) // 4 + 1, h // s, w // s)  # only its shape matters to an unguided run
    cfg = GuidanceConfig(model="tiny", steps=4, guided_steps=0, guidance=False, injection=False, frames=frames,
                         height=h, width=w, **kw).resolve(comps["transformer"], device="cpu")
    return Guide(comps["transformer"], sched, ref_latent=ref, prompt_embeds=pe["prompt"],
                 negative_embeds=pe["negative"], config=cfg, family=W, transformer_2=comps["transformer_2"],
                 boundary_ratio=comps["boundary_ratio"], image=cond)


@pytest.mark.parametrize("kind", KINDS)
def test_an_unguided_run_equals_the_pipeline_bit_for_bit(folders, loaded, kind):
    """One run of ours, no guidance and no injection, against WanImageToVideoPipeline.__call__ with the same image,
    noise (latents=), scheduler, steps and CFG scales: the same latent, exactly."""
    from diffusers import UniPCMultistepScheduler
    from PIL import Image
    from safetensors.torch import load_file

    pipe, comps = _pipe(folders[kind]), loaded[kind]
    pe = load_file(str(folders[kind] / "prompt_embeds.safetensors"))
    (h, w), frames = SIZE[kind], 9
    scale_2 = 4.0 if kind == "a14b" else None
    img = _image(kind)
    cond = W.image_condition(comps, img, device="cpu", dtype=torch.float32)
    g = _guide(comps, UniPCMultistepScheduler.from_config(pipe.scheduler.config), cond, pe, frames, h, w,
               cfg_scale=5.0, cfg_scale_2=scale_2)
    used = []
    for name, tr in g.experts.items():
        tr.register_forward_pre_hook(lambda m, a, name=name: used.append(name))
    ours = g.run(progress=False).latents
    theirs = pipe(image=Image.fromarray(img), prompt_embeds=pe["prompt"], negative_prompt_embeds=pe["negative"],
                  height=h, width=w, num_frames=frames, num_inference_steps=4, guidance_scale=5.0,
                  guidance_scale_2=scale_2, latents=g.noise.clone(), output_type="latent", return_dict=False)[0]
    assert torch.equal(ours, theirs)
    if kind == "a14b":  # both experts ran (boundary 0.9 of timesteps 999, 900, 750, 500)
        assert set(used) == {"transformer", "transformer_2"}
    # the image matters: another one gives another result
    other = W.image_condition(comps, _image(kind, seed=1), device="cpu", dtype=torch.float32)
    again = _guide(comps, UniPCMultistepScheduler.from_config(pipe.scheduler.config), other, pe, frames, h, w,
                   cfg_scale=5.0, cfg_scale_2=scale_2).run(progress=False).latents
    assert not torch.equal(again, theirs)


def test_the_inputs_are_the_pipelines(folders, loaded):
    """The condition and CLIP tokens against the pipeline's own prepare_latents and encode_image."""
    from PIL import Image

    pipe, comps = _pipe(folders["wan21"]), loaded["wan21"]
    img = _image("wan21")
    pix = pipe.video_processor.preprocess(Image.fromarray(img), height=48, width=80).to(dtype=torch.float32)
    _, condition = pipe.prepare_latents(pix, 1, 4, 48, 80, 9, torch.float32, torch.device("cpu"))
    ours = i2v.concat_condition(comps["vae"], img, 9, "cpu")
    assert torch.equal(ours, condition) and ours.shape == (1, 8, 3, 6, 10)
    assert (ours[:, :4, 0] == 1).all() and (ours[:, :4, 1:] == 0).all()  # the mask: the first latent frame
    # the condition encoded for 81 frames and cut (what a run takes): the same first latent frames, exactly
    long = i2v.concat_condition(comps["vae"], img, i2v.CONDITION_FRAMES, "cpu")
    assert long.shape[2] == 21 and torch.equal(i2v.fit_condition(long, torch.zeros(1, 4, 3, 6, 10)), ours)
    tokens = i2v.clip_tokens(comps["image_encoder"], comps["image_processor"], img, "cpu")
    assert torch.equal(tokens, pipe.encode_image(Image.fromarray(img), torch.device("cpu")))
    assert tokens.shape == (1, (tiny.CLIP_SIZE // tiny.CLIP_PATCH) ** 2 + 1, tiny.IMAGE_DIM)
    ti2v = _pipe(folders["ti2v"])
    img = _image("ti2v")
    pix = ti2v.video_processor.preprocess(Image.fromarray(img), height=64, width=96).to(dtype=torch.float32)
    _, first, mask = ti2v.prepare_latents(pix, 1, 6, 64, 96, 9, torch.float32, torch.device("cpu"))
    assert torch.equal(i2v.first_frame_latent(loaded["ti2v"]["vae"], img, "cpu"), first)
    assert (mask[:, :, 0] == 0).all() and (mask[:, :, 1:] == 1).all()


def test_the_image_condition_per_kind(loaded):
    c = {k: W.image_condition(loaded[k], _image(k), device="cpu", dtype=torch.float32) for k in KINDS}
    assert set(c["wan21"].forward_kw) == {"condition", "image_embeds"} and c["wan21"].anchor is None
    assert set(c["a14b"].forward_kw) == {"condition"} and c["a14b"].anchor is None
    ti = c["ti2v"]  # TI2V: the clean first frame, held by the loop and given timestep 0 by the forward
    assert set(ti.forward_kw) == {"first_frame"} and ti.anchor_noised is False
    assert torch.equal(ti.anchor, ti.forward_kw["first_frame"]) and ti.anchor.shape == (1, 6, 1, 4, 6)
    # a text-to-video Wan model keeps the default first-frame anchoring (noised per step)
    t2v = dict(loaded["a14b"], transformer=tiny.tiny_transformer(), transformer_2=None, boundary_ratio=None)
    t2v["vae"] = tiny.tiny_vae()
    got = W.image_condition(t2v, _image("a14b"), device="cpu", dtype=torch.float32)
    assert isinstance(got, ImageCondition) and got.forward_kw == {} and got.anchor_noised is True
    assert got.anchor.shape == (1, 4, 1, 6, 10)


def test_the_image_encoder_goes_back_to_the_cpu_after_use(loaded):
    enc = loaded["wan21"]["image_encoder"]
    moves = []
    real = enc.to

    def to(*a, **k):
        moves.append(str(a[0]))
        return real(*a, **k)

    enc.to = to
    try:
        i2v.clip_tokens(enc, loaded["wan21"]["image_processor"], _image("wan21"), "cpu")
    finally:
        del enc.to
    assert moves == ["cpu", "cpu"] and next(enc.parameters()).device.type == "cpu"
    with pytest.raises(ModelError, match="image_encoder"):
        W.image_condition(dict(loaded["wan21"], image_encoder=None), _image("wan21"), device="cpu",
                          dtype=torch.float32)


def _capture(tr, x, text, blocks, **kw):
    with torch.no_grad():
        ctrl = W.run_until(tr, x, text, 500, stop_after=max(blocks), qk_blocks=blocks, **kw)
    got = {b: tuple(t.clone() for t in ctrl.qk[b]) for b in blocks}
    ctrl.clear_captures()
    return got


def test_the_amf_sees_the_latents_tokens_and_clip_tokens_only_in_cross_attention(loaded):
    comps = loaded["wan21"]
    tr = comps["transformer"]
    cond = W.image_condition(comps, _image("wan21"), device="cpu", dtype=torch.float32).forward_kw
    x = torch.randn(1, 4, 3, 6, 10, generator=torch.Generator().manual_seed(3))
    text = torch.randn(1, 512, tiny.TEXT_DIM, generator=torch.Generator().manual_seed(4))
    seen = {"attn1": [], "attn2": []}
    W.install(tr)
    try:
        hooks = [b.attn1.register_forward_pre_hook(lambda m, a, k: seen["attn1"].append(
                     (a[0].shape[1], k.get("encoder_hidden_states", a[1] if len(a) > 1 else None))), with_kwargs=True)
                 for b in tr.blocks]
        hooks += [b.attn2.register_forward_pre_hook(lambda m, a, k: seen["attn2"].append(
                      (a[0].shape[1], (a[1] if len(a) > 1 else k["encoder_hidden_states"]).shape[1])),
                      with_kwargs=True) for b in tr.blocks]
        base = _capture(tr, x, text, [0, 1], **cond)
        other_img = _capture(tr, x, text, [0, 1], condition=cond["condition"],
                             image_embeds=torch.randn_like(cond["image_embeds"]))
        other_cond = _capture(tr, x, text, [0], image_embeds=cond["image_embeds"],
                              condition=torch.randn_like(cond["condition"]))
        for h in hooks:
            h.remove()
    finally:
        W.uninstall(tr)
    n = 3 * 3 * 5  # the latent's F' x h x w patches: the concatenated channels add no token
    assert base[0][0].shape == (1, 2, n, 16) and base[1][1].shape == (1, 2, n, 16)
    assert all(tokens == n and ctx is None for tokens, ctx in seen["attn1"])  # self-attention: video tokens only
    n_img = (tiny.CLIP_SIZE // tiny.CLIP_PATCH) ** 2 + 1
    assert seen["attn2"] and all(s == (n, n_img + 512) for s in seen["attn2"])  # CLIP tokens + the text
    # the CLIP tokens reach the self-attention only through earlier blocks' cross-attention
    assert all(torch.equal(a, b) for a, b in zip(base[0], other_img[0], strict=True))
    assert not torch.equal(base[1][0], other_img[1][0])
    assert not torch.equal(base[0][0], other_cond[0][0])  # the condition enters at the patch embedding


def test_ti2v_first_frame_tokens_get_timestep_zero(loaded):
    tr = loaded["ti2v"]["transformer"]
    x = torch.randn(1, 6, 3, 4, 6, generator=torch.Generator().manual_seed(5))
    ts = W.timestep_input(tr, x, torch.tensor(700), clean_frames=1)
    assert ts.shape == (1, 3 * 2 * 3) and (ts[:, :6] == 0).all() and (ts[:, 6:] == 700).all()
    first = torch.randn(1, 6, 1, 4, 6, generator=torch.Generator().manual_seed(6))
    text = torch.randn(1, 7, tiny.TEXT_DIM)
    with torch.no_grad():
        ours = W.forward(tr, x, text, 700, first_frame=first)
        clean = torch.cat([first, x[:, :, 1:]], dim=2)
        theirs = tr(hidden_states=clean, timestep=ts, encoder_hidden_states=text, return_dict=False)[0]
        plain = W.forward(tr, clean, text, 700)
    assert torch.equal(ours, theirs) and not torch.equal(ours, plain)


def test_folders_the_family_cannot_run_are_refused_naming_the_model(tmp_path, folders):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(folders["a14b"], bad)
    cfg_path = bad / "transformer" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps(dict(cfg, in_channels=10)))
    with pytest.raises(ModelError, match=r"--model .*in_channels 10"):
        W.load(str(bad), torch.float32)
    cfg_path.write_text(json.dumps(dict(cfg, pos_embed_seq_len=34, image_dim=24, added_kv_proj_dim=32)))
    with pytest.raises(ModelError, match="first-last-frame"):
        W.load(str(bad), torch.float32)
    noclip = tmp_path / "noclip"
    shutil.copytree(folders["wan21"], noclip)
    shutil.rmtree(noclip / "image_encoder")
    with pytest.raises(ModelError, match=r"--model .*no image_encoder/"):
        W.load(str(noclip), torch.float32)


def test_the_condition_covers_the_runs_frames_beyond_81(loaded):
    from ditflow_fast.transfer_api.checks import with_config

    tcfg, vcfg = dict(loaded["a14b"]["transformer"].config), dict(loaded["a14b"]["vae"].config)
    assert W.geometry(with_config(tcfg), with_config(vcfg), 85, 48, 80)[2] == 22
    cond = W.image_condition(loaded["a14b"], _image("a14b"), device="cpu", dtype=torch.float32, frames=85)
    assert cond.forward_kw["condition"].shape[2] == 22  # the loop tells the run's length: no 81-frame cap
