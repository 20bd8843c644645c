"""Every registered family against the contract (families/base.py), on tiny random models (CPU).

A new family gets these checks by adding a :class:`Case` (its tiny models) to ``CASES``; a registered
family without one fails ``test_every_registered_family_has_a_case``. The references are the model's own:
diffusers' stock forward, and the q/k/v its stock attention hands to ``scaled_dot_product_attention``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import pytest
import torch

pytest.importorskip("diffusers")

from _sdpa_spy import SDPASpy  # noqa: E402

from ditflow_fast import compute_amf  # noqa: E402
from ditflow_fast.errors import ModelError  # noqa: E402
from ditflow_fast.families import FAMILIES, FamilyBase, register  # noqa: E402
from ditflow_fast.families.cogvideox import tiny as cog_tiny  # noqa: E402
from ditflow_fast.families.hunyuan import tiny as hy_tiny  # noqa: E402
from ditflow_fast.families.ltx import tiny as ltx_tiny  # noqa: E402
from ditflow_fast.families.wan import tiny as wan_tiny  # noqa: E402
from ditflow_fast.guidance.config import GuidanceConfig  # noqa: E402
from ditflow_fast.guidance.loop import Guide  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclasses.dataclass
class Case:
    family: str
    transformer: Callable  # (seed, layers) -> a tiny random transformer
    latent_shape: tuple  # [1, ...] in the family's layout, awkward sizes (3 latent frames of 3 x 4 or 3 x 5 patches)
    text: tuple  # (length, width) of the prompt embeddings
    vae: Callable  # () -> a tiny VAE of the family's class
    scheduler: Callable  # () -> the family's (multistep) scheduler
    save: Callable  # (path) -> a tiny diffusers folder
    grid: tuple  # token grid of ``latent_shape``
    settings: dict  # GuidanceConfig sizes matching ``latent_shape``
    text_fn: Callable | None = None  # (generator, batch) -> prompt embeddings, where random values are none


def _text(case, g, batch):
    return case.text_fn(g, batch) if case.text_fn else torch.randn(batch, *case.text, generator=g)


def _attn(block):
    """A block's self-attention (HunyuanVideo names it ``attn``, the others ``attn1``)."""
    return block.attn1 if hasattr(block, "attn1") else block.attn


CASES = {
    "cogvideox-rope": Case("cogvideox", lambda seed=0, layers=3: cog_tiny.tiny_transformer(True, layers, seed),
                           (1, 3, 4, 6, 8), (cog_tiny.TEXT_LEN, cog_tiny.TEXT_DIM), cog_tiny.tiny_vae,
                           lambda: cog_tiny.tiny_scheduler(True), cog_tiny.save_tiny_model, (3, 3, 4),
                           dict(frames=9, height=48, width=64)),
    "cogvideox-posemb": Case("cogvideox", lambda seed=0, layers=3: cog_tiny.tiny_transformer(False, layers, seed),
                             (1, 3, 4, 6, 8), (cog_tiny.TEXT_LEN, cog_tiny.TEXT_DIM), cog_tiny.tiny_vae,
                             lambda: cog_tiny.tiny_scheduler(False),
                             lambda p: cog_tiny.save_tiny_model(p, rope=False), (3, 3, 4),
                             dict(frames=9, height=48, width=64)),
    # CogVideoX 1.5: temporal patches of 2 latent frames (3 latent frames: padded to 4, 2 patch frames); the
    # sampler from the DDIM config its folders ship
    "cogvideox15": Case("cogvideox", lambda seed=0, layers=3: cog_tiny.tiny_transformer(True, layers, seed, v15=True),
                        (1, 3, 4, 6, 8), (cog_tiny.TEXT_LEN, cog_tiny.TEXT_DIM), cog_tiny.tiny_vae,
                        lambda: dict(cog_tiny.tiny_scheduler(True, folder=True).config),
                        lambda p: cog_tiny.save_tiny_model(p, v15=True), (2, 3, 4),
                        dict(frames=9, height=48, width=64)),
    "wan": Case("wan", lambda seed=0, layers=3: wan_tiny.tiny_transformer(layers, seed),
                (1, wan_tiny.Z_DIM, 3, 6, 10), (wan_tiny.TEXT_LEN, wan_tiny.TEXT_DIM), wan_tiny.tiny_vae,
                wan_tiny.tiny_scheduler, wan_tiny.save_tiny_wan, (3, 3, 5), dict(frames=9, height=48, width=80)),
    # LTX-Video: 1x1 patches over a 32x / 8x VAE (17 frames at 96x128: 3 latent frames of 3 x 4)
    "ltx": Case("ltx", lambda seed=0, layers=3: ltx_tiny.tiny_transformer(layers, seed), (1, ltx_tiny.Z, 3, 3, 4),
                (ltx_tiny.TEXT_LEN, ltx_tiny.TEXT_DIM), ltx_tiny.tiny_vae, ltx_tiny.tiny_scheduler,
                ltx_tiny.save_tiny_ltx, (3, 3, 4), dict(frames=17, height=96, width=128)),
    # HunyuanVideo: 2 dual-stream then 1 single-stream block; text a suffix; prompts packed (hunyuan/text.py)
    "hunyuanvideo": Case("hunyuanvideo", lambda seed=0, layers=3: hy_tiny.tiny_transformer(layers, seed),
                         (1, hy_tiny.Z_DIM, 3, 6, 10),
                         (hy_tiny.TEXT_LEN, hy_tiny.TEXT_DIM + 1 + hy_tiny.POOLED_DIM), hy_tiny.tiny_vae,
                         hy_tiny.tiny_scheduler, hy_tiny.save_tiny_hunyuan, (3, 3, 5),
                         dict(frames=9, height=48, width=80), lambda g, b: hy_tiny.random_prompt(g, b)),
}
NAMES = sorted(CASES)


def _setup(name, seed=1, batch=1, layers=3):
    case = CASES[name]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *case.latent_shape[1:], generator=g)
    e = _text(case, g, batch)
    return FAMILIES[case.family], case.transformer(0, layers), x, e


def _forward(fam, tr, x, e, t=500, emb=None):
    with torch.no_grad():
        return fam.forward(tr, x, e, t, emb)


def _video_part(fam, t, text_len):
    """The video tokens of an attention tensor ``[B, H, T, d]``, by the family's text position."""
    return {"prefix": t[:, :, text_len:], "none": t, "suffix": t[:, :, :t.shape[2] - text_len]}[fam.text_position]


def test_every_registered_family_has_a_case():
    assert set(FAMILIES) == {c.family for c in CASES.values()}


def test_register_names_the_missing_members():
    class Half(FamilyBase):
        name, label = "half", "Half (tests)"

        @staticmethod
        def matches(model_index, transformer_class_name):
            return False

    with pytest.raises(TypeError, match=r"'half' lacks .*\bload\b.*\bestimate\b") as info:
        register(Half)
    assert "matches" not in str(info.value) and "has_second_expert" not in str(info.value)
    with pytest.raises(TypeError, match=r"has_second_expert.*subclass families.base.FamilyBase"):
        register(type("Bare", (), {n: getattr(FAMILIES["wan"], n) for n in ("name", "label", "load")}))
    assert "half" not in FAMILIES


def test_an_unknown_model_is_refused_listing_every_registered_family(tmp_path, monkeypatch):
    """The errors read the registry when they are raised: a family registered later is listed too."""
    import types

    from ditflow_fast.families import detect, family_of

    monkeypatch.setitem(FAMILIES, "extra", types.SimpleNamespace(label="Extra (tests)", matches=lambda *a: False))
    labels = [fam.label for fam in FAMILIES.values()]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "model_index.json").write_text(json.dumps({"_class_name": "FooPipeline"}))
    for call, words in ((lambda: detect(str(tmp_path)), "not a diffusers folder of a supported family"),
                        (lambda: detect(str(tmp_path / "other")), "a FooPipeline, not of a supported family"),
                        (lambda: family_of(torch.nn.Linear(1, 1)), "a Linear transformer is not of a supported")):
        with pytest.raises(ModelError, match=words) as info:
            call()
        assert str(info.value).endswith(", ".join(labels)), str(info.value)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_classes_a_family_names_exist(family):
    """What the app imports ahead of runs, by the family's names (transformer, VAE, ``lazy_classes``)."""
    import importlib

    fam = FAMILIES[family]
    for name in (f"diffusers.{fam.transformer_class}", f"diffusers.{fam.vae_class}", *fam.lazy_classes):
        package, _, cls = name.rpartition(".")
        if package == "transformers":
            pytest.importorskip("transformers")
        assert isinstance(getattr(importlib.import_module(package), cls), type), name


@pytest.mark.parametrize("name", NAMES)
def test_idle_processor_is_bit_identical_to_diffusers(name):
    fam, tr, x, e = _setup(name, batch=2)
    stock_kind = {type(_attn(fam.blocks(tr)[0]).processor)}
    stock = _forward(fam, tr, x, e)
    ctrl = fam.install(tr)
    assert {type(_attn(b).processor) for b in fam.blocks(tr)}.isdisjoint(stock_kind)  # ours are in place
    idle = _forward(fam, tr, x, e)
    ctrl.qk_blocks, ctrl.copy_kv_blocks, ctrl.armed = frozenset({0, 2}), frozenset({1}), True
    armed = _forward(fam, tr, x, e)  # records asked, no stop: still the stock output
    ctrl.armed = False
    ctrl.clear_captures()
    fam.uninstall(tr)
    assert {type(_attn(b).processor) for b in fam.blocks(tr)} == stock_kind
    back = _forward(fam, tr, x, e)
    assert torch.equal(idle, stock) and torch.equal(armed, stock) and torch.equal(back, stock)


@pytest.mark.parametrize("name", NAMES)
def test_captured_qk_equal_what_the_stock_attention_uses(name, monkeypatch):
    fam, tr, x, e = _setup(name, seed=3, batch=2)
    block = 1
    sdpa = SDPASpy(monkeypatch, _attn(fam.blocks(tr)[block]))
    _forward(fam, tr, x, e, 700)  # stock processors
    (q_ref, k_ref, _), = sdpa.calls
    fam.install(tr)
    with torch.no_grad():
        ctrl = fam.run_until(tr, x, e, 700, stop_after=block, qk_blocks=[block])
    q, k = ctrl.qk[block]
    n = CASES[name].grid[0] * CASES[name].grid[1] * CASES[name].grid[2]
    assert q.shape == k.shape == (1, 2, n, 16)
    torch.testing.assert_close(q, _video_part(fam, q_ref, e.shape[1])[-1:], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(k, _video_part(fam, k_ref, e.shape[1])[-1:], rtol=1e-6, atol=1e-6)
    assert fam.token_grid(tr, x) == CASES[name].grid


@pytest.mark.parametrize("name", NAMES)
def test_injection_replaces_exactly_the_video_kv(name, monkeypatch):
    fam, tr, x, e = _setup(name, seed=5, batch=2)
    block = 1
    sdpa = SDPASpy(monkeypatch, _attn(fam.blocks(tr)[block]))
    ctrl = fam.install(tr)
    plain = _forward(fam, tr, x, e)
    (_, k_plain, v_plain), = sdpa.calls
    with torch.no_grad():
        own = dict(fam.run_until(tr, x[-1:], e[-1:], 500, stop_after=block, copy_kv_blocks=[block]).kv)
    sdpa.inside = False  # the stop was raised inside the block's attention: its post-hook did not run
    assert own[block][0].shape == (1, 2, k_plain.shape[2] - (e.shape[1] if fam.text_position != "none" else 0), 16)
    g = torch.Generator().manual_seed(9)
    ref_k, ref_v = (torch.randn(own[block][0].shape, generator=g) for _ in range(2))
    sdpa.calls.clear()
    ctrl.inject_kv = {block: (ref_k, ref_v)}
    injected = _forward(fam, tr, x, e)
    (_, k_inj, v_inj), = sdpa.calls
    text = e.shape[1]
    for got, want, before in ((k_inj, ref_k, k_plain), (v_inj, ref_v, v_plain)):
        assert torch.equal(_video_part(fam, got, text), want.expand(2, -1, -1, -1))
        if fam.text_position == "prefix":  # the text K/V stay the model's own
            assert torch.equal(got[:, :, :text], before[:, :, :text])
    assert (injected - plain).abs().max() > 1e-3
    ctrl.inject_kv = {block: own[block]}  # a forward's own K/V back in: the same output
    torch.testing.assert_close(_forward(fam, tr, x[-1:], e[-1:]), plain[-1:], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_emb_mode_gradients_match_finite_differences(name):
    fam, tr, x, e = _setup(name, seed=7)
    tr = tr.double()
    x, e = x.double(), e.double()
    fam.install(tr)
    emb0 = fam.initial_emb(tr, x).double()
    assert torch.equal(_forward(fam, tr, x, e, 600, emb0), _forward(fam, tr, x, e, 600))
    f, h, w = fam.token_grid(tr, x)
    with torch.no_grad():
        ref = compute_amf(*fam.run_until(tr, x, e, 0, stop_after=1, qk_blocks=[1]).qk[1], frames=f, height=h,
                          width=w, mode="argmax")

    def loss(emb):
        ctrl = fam.run_until(tr, x, e, 600, emb, stop_after=1, qk_blocks=[1])
        amf = compute_amf(*ctrl.qk.pop(1), frames=f, height=h, width=w, mode="soft", temperature=2.0)
        return ((amf - ref) ** 2).mean()

    emb = emb0.clone().requires_grad_(True)
    loss(emb).backward()
    grad = emb.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    direction = torch.randn(emb0.shape, generator=torch.Generator().manual_seed(2), dtype=emb0.dtype)
    eps = 1e-4  # the RoPE hooks hand the tables on in float32: a smaller step would difference its rounding
    with torch.no_grad():
        fd = (loss(emb0 + eps * direction) - loss(emb0 - eps * direction)) / (2 * eps)
    torch.testing.assert_close((grad * direction).sum(), fd, rtol=1e-3, atol=1e-9)


def _guide(name, model_dtype=torch.float32, **kw):
    case = CASES[name]
    tr = case.transformer(1, 3).to(model_dtype)
    ref = torch.randn(case.latent_shape, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(4)
    pe = {k: _text(case, g, 1) for k in ("prompt", "negative")}
    cfg = GuidanceConfig(**dict(model="tiny", steps=5, guided_steps=2, opt_iters=2, **case.settings, **kw))
    cfg = cfg.resolve(tr, device="cpu")
    return Guide(tr, case.scheduler(), ref_latent=ref, prompt_embeds=pe["prompt"], negative_embeds=pe["negative"],
                 config=cfg, model_id="tiny")


@pytest.mark.parametrize("name", NAMES)
def test_interrupted_run_resumes_exactly(name, tmp_path):
    full = _guide(name, opt_mode="emb").run(progress=False, embeds_dir=tmp_path / "e1")
    part = _guide(name, opt_mode="emb").run(progress=False, state_dir=tmp_path / "s", embeds_dir=tmp_path / "e2",
                                            max_steps=3)
    assert part.latents is None
    rest = _guide(name, opt_mode="emb").run(progress=False, state_dir=tmp_path / "s", embeds_dir=tmp_path / "e2")
    assert rest.resumed_from == 3
    assert torch.equal(rest.latents, full.latents) and full.latents.shape == CASES[name].latent_shape


@pytest.mark.parametrize("name", NAMES)
def test_a_bf16_model_keeps_the_latent_between_steps_as_its_pipeline_does(name):
    # CogVideoXPipeline casts its latent to the prompt's dtype after each step; the flow pipelines keep float32,
    # where a bf16 latent would round away small sampler and Adam updates
    guide = _guide(name, torch.bfloat16, dtype="bfloat16")
    latents = guide.run(progress=False).latents
    want = torch.bfloat16 if CASES[name].family == "cogvideox" else torch.float32
    assert latents.dtype == want and torch.isfinite(latents).all()


def _decoded_frames(vae, frames: int) -> int:
    x = torch.rand(1, 3, frames, 16, 16, generator=torch.Generator().manual_seed(frames)) * 2 - 1
    with torch.no_grad():
        return vae.decode(vae.encode(x).latent_dist.mode()).sample.shape[2]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_frame_rule_is_what_the_vae_gives_back(family):
    case = next(c for c in CASES.values() if c.family == family)
    fam, vae = FAMILIES[family], case.vae()
    for frames in range(1, 14):
        exact = _decoded_frames(vae, frames) == frames
        try:
            fam.check_frames(frames)
            accepted = True
        except ModelError as exc:
            accepted = False
            assert f"--frames {frames}" in str(exc) and "nearest" in str(exc)
        assert accepted == exact, f"{family}: {frames} frames decode to {_decoded_frames(vae, frames)}"


@pytest.mark.parametrize("name", NAMES)
def test_dry_run_estimate_of_a_tiny_folder_is_positive(name, tmp_path):
    case = CASES[name]
    fam = FAMILIES[case.family]
    folder = str(case.save(tmp_path / "m"))
    config = fam.memory_config(folder)
    d = fam.defaults(config)
    est = fam.estimate(config, frames=d["frames"], height=d["height"], width=d["width"],
                       guidance_block=max(d["guidance_blocks"]))
    assert est.total > 0 and est.research_total >= est.total and min(est.components.values()) >= 0
    table = fam.dry_run_table(folder, GuidanceConfig(), "none")
    assert "predicted peak" in table and folder in table


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_preset_has_a_positive_estimate(family):
    fam = FAMILIES[family]
    assert fam.PRESETS
    for model in fam.PRESETS:
        config = fam.memory_config(model)
        d = fam.defaults(config)
        est = fam.estimate(config, frames=d["frames"], height=d["height"], width=d["width"],
                           guidance_block=max(d["guidance_blocks"]))
        assert est.total > 0, model


@pytest.mark.parametrize("name", NAMES)
def test_a_folder_whose_vae_is_another_codec(name, tmp_path):
    """The toy world's folders hold a FrameAutoencoder in vae/: loading refuses them by name, and the dry run
    gives its table with a line saying the VAE rows are the family's VAE, not that codec."""
    case = CASES[name]
    fam = FAMILIES[case.family]
    folder = case.save(tmp_path / "m")
    (folder / "vae" / "config.json").write_text(json.dumps({"class": "FrameAutoencoder", "channels": 8}))
    with pytest.raises(ModelError, match=f"vae/ is a FrameAutoencoder, not the {fam.vae_class}"):
        fam.load(str(folder), torch.float32)
    table = fam.dry_run_table(str(folder), GuidanceConfig(), "none")
    assert "predicted peak" in table and f"vae/ holds a FrameAutoencoder: the VAE rows are those of the family's " \
        f"{fam.vae_class}" in table


@pytest.mark.parametrize("name", NAMES)
def test_qk_before_rope_are_recorded_on_request_and_attention_is_unchanged(name):
    """``qk_rope=False`` (``GuidanceConfig.amf_rope``) records q/k before the rotation: RoPE turns pairs of
    channels, so each token's and head's norm is kept while the vectors differ (equal where a model has no
    RoPE); the model's output is the stock one either way, and the controller is back to RoPE afterwards."""
    fam, tr, x, e = _setup(name, seed=4, batch=2)
    stock = _forward(fam, tr, x, e, 600)
    fam.install(tr)
    blocks = (1, 2)  # HunyuanVideo: a dual-stream and a single-stream block
    with torch.no_grad():
        got = {}
        for rope in (True, False):
            ctrl = fam.run_until(tr, x, e, 600, stop_after=2, qk_blocks=blocks, qk_rope=rope)
            got[rope] = [t for b in blocks for t in ctrl.qk[b]]
            ctrl.clear_captures()
        assert ctrl.qk_rope is True
        ctrl.qk_blocks, ctrl.qk_rope, ctrl.armed = frozenset({0, 2}), False, True
        armed = _forward(fam, tr, x, e, 600)  # records before RoPE asked: the attention keeps its RoPE
        ctrl.armed, ctrl.qk_rope = False, True
        ctrl.clear_captures()
    assert torch.equal(armed, stock)
    has_rope = name != "cogvideox-posemb"
    for rotated, plain in zip(got[True], got[False], strict=True):
        assert rotated.shape == plain.shape
        torch.testing.assert_close(rotated.norm(dim=-1), plain.norm(dim=-1), rtol=1e-5, atol=1e-6)
        assert torch.equal(rotated, plain) is not has_rope
    # the AMF differs where RoPE does
    f, h, w = CASES[name].grid
    amf = {r: compute_amf(*got[r][:2], frames=f, height=h, width=w, mode="soft") for r in got}
    assert torch.equal(amf[True], amf[False]) is not has_rope
