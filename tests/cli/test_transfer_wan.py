"""``ditflow-fast transfer`` on tiny Wan2.1 and two-expert Wan2.2 folders (save_pretrained), end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("av")

from ditflow_fast.cli.main import main  # noqa: E402
from ditflow_fast.families.cogvideox import tiny  # noqa: E402
from ditflow_fast.families.wan import tiny as wan_tiny  # noqa: E402
from ditflow_fast.guidance.config import GuidanceConfig  # noqa: E402
from ditflow_fast.guidance.loop import Guide  # noqa: E402
from ditflow_fast.video_io import read_video, write_video  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan")
    wan_tiny.save_tiny_wan(root / "wan21")
    wan_tiny.save_tiny_wan(root / "wan22", two_experts=True)
    wan_tiny.save_tiny_wan(root / "ti2v", wan22_vae=True)  # Wan2.2 TI2V-5B's layout: 16x VAE, per-token timesteps
    write_video(tiny.moving_square(13, 48, 80), root / "video.mp4")
    return root


def _args(wan, model, out, *extra):
    return ["transfer", "--model", str(wan / model), "--video", str(wan / "video.mp4"), "--prompt-embeds",
            str(wan / "wan21" / "prompt_embeds.safetensors"), "--steps", "6", "--guided-steps", "2",
            "--opt-iters", "2", "--out", str(out), "--quiet", *extra]


@pytest.mark.parametrize("model", ["wan21", "wan22"])
@pytest.mark.parametrize("frames", [9, 13])
def test_latent_emb_and_zero_shot_write_exactly_the_asked_frames(wan, tmp_path, model, frames):
    n = str(frames)
    assert main(_args(wan, model, tmp_path / "lat", "--frames", n)) == 0
    assert read_video(tmp_path / "lat" / "result.mp4").shape == (frames, 48, 80, 3)
    assert main(_args(wan, model, tmp_path / "emb", "--frames", n, "--opt-mode", "emb", "--format", "frames")) == 0
    rec = json.loads((tmp_path / "emb" / "config.json").read_text())
    assert rec["family"] == "wan" and len(rec["losses"]) == 2
    assert len(list((tmp_path / "emb" / "embeds").glob("emb_t*.safetensors"))) == 2
    assert len(list((tmp_path / "emb" / "result_frames").glob("*.png"))) == frames
    assert main(_args(wan, model, tmp_path / "zs", "--frames", n, "--opt-mode", "emb", "--inject-embeds",
                      str(tmp_path / "emb" / "embeds"), "--format", "gif")) == 0
    assert json.loads((tmp_path / "zs" / "config.json").read_text())["losses"] == {}
    assert read_video(tmp_path / "zs" / "result.gif").shape[0] == frames


def test_ti2v_layout_runs_in_emb_mode_and_refuses_sizes_its_vae_cannot_take(wan, tmp_path, capsys):
    assert main(_args(wan, "ti2v", tmp_path / "ok", "--height", "64", "--width", "96", "--opt-mode", "emb")) == 0
    assert read_video(tmp_path / "ok" / "result.mp4").shape == (9, 64, 96, 3)
    assert main(_args(wan, "ti2v", tmp_path / "bad", "--height", "48", "--width", "80")) == 2
    assert "multiples of 32x32" in capsys.readouterr().err


def test_wan_defaults_and_frame_refusal(wan, tmp_path, capsys):
    assert main(_args(wan, "wan21", tmp_path / "d")) == 0  # the tiny model's defaults: 9 frames at 48x80
    rec = json.loads((tmp_path / "d" / "config.json").read_text())
    assert (rec["config"]["frames"], rec["config"]["height"], rec["config"]["width"]) == (9, 48, 80)
    assert rec["config"]["scheduler"] == "unipc" and rec["config"]["cfg_scale"] == 5.0
    assert main(_args(wan, "wan21", tmp_path / "bad", "--frames", "10")) == 2
    assert "4k+1 frames; nearest: 9 or 13" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_interrupted_wan_run_resumes_exactly(wan, tmp_path, monkeypatch):
    """UniPC keeps its history inside the scheduler: the saved state must carry it."""
    assert main(_args(wan, "wan22", tmp_path / "full", "--format", "frames", "--steps", "8")) == 0
    real, calls = Guide._denoise, []

    def flaky(self, *a, **k):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(Guide, "_denoise", flaky)
    with pytest.raises(KeyboardInterrupt):
        main(_args(wan, "wan22", tmp_path / "cut", "--format", "frames", "--steps", "8"))
    monkeypatch.setattr(Guide, "_denoise", real)
    assert main(_args(wan, "wan22", tmp_path / "cut", "--format", "frames", "--steps", "8")) == 0
    rec = json.loads((tmp_path / "cut" / "config.json").read_text())
    full = json.loads((tmp_path / "full" / "config.json").read_text())
    assert rec["resumed_from_step"] == 4
    assert rec["losses"] == full["losses"]  # the guided steps' losses survive the interrupt
    a, b = (read_video(tmp_path / d / "result_frames") for d in ("cut", "full"))
    assert np.array_equal(a, b)


def _wan_guide(two_experts: bool, **kw):
    tr = wan_tiny.tiny_transformer(seed=1)
    tr2 = wan_tiny.tiny_transformer(seed=2) if two_experts else None
    ref = torch.randn(1, wan_tiny.Z_DIM, 3, 6, 10, generator=torch.Generator().manual_seed(3))
    pe = wan_tiny.tiny_prompt_embeds()
    settings = dict(model="tiny-wan", steps=6, guided_steps=3, opt_iters=2, frames=9, height=48, width=80)
    settings.update(kw)
    cfg = GuidanceConfig(**settings).resolve(tr, device="cpu")
    return Guide(tr, wan_tiny.tiny_scheduler(), ref_latent=ref, prompt_embeds=pe["prompt"],
                 negative_embeds=pe["negative"], config=cfg, transformer_2=tr2,
                 boundary_ratio=0.9 if two_experts else None)


def test_two_experts_each_take_their_timesteps_and_guide_with_their_own_reference():
    g = _wan_guide(True)
    chosen = []
    real = g._expert

    def spy(t):
        tr = real(t)
        chosen.append((t, tr is g.experts["transformer_2"]))
        return tr

    g._expert = spy
    res = g.run(progress=False)
    assert chosen and all(low == (t < 900) for t, low in chosen)  # boundary 0.9 of 1000 training steps
    assert {low for _, low in chosen} == {True, False}
    assert set(g._targets) == {g._expert_name(t) for t in g.guided}
    assert len(res.losses) == 3 and torch.isfinite(res.latents).all()


@pytest.mark.parametrize("loss", ["flow", "moft", "smm"])
def test_every_loss_guides_a_wan_model(loss):
    res = _wan_guide(False, loss=loss).run(progress=False)
    plain = _wan_guide(False, guidance=False).run(progress=False)
    assert all(np.isfinite(v).all() for v in res.losses.values()) and len(res.losses) == 3
    assert not torch.equal(res.latents, plain.latents)


def test_offload_modes_give_the_same_video(wan, tmp_path):
    """diffusers' group offloading and accelerate's model offload hooks, with the CPU as the onload device."""
    videos = []
    for mode in ("none", "model", "group"):
        assert main(_args(wan, "wan22", tmp_path / mode, "--offload", mode, "--format", "frames")) == 0
        videos.append(read_video(tmp_path / mode / "result_frames"))
    assert all(np.array_equal(videos[0], v) for v in videos[1:])


def test_group_offload_without_checkpointing_is_refused_early(wan, tmp_path, capsys):
    assert main(_args(wan, "wan21", tmp_path / "x", "--offload", "group", "--no-checkpointing")) == 2
    assert "needs gradient checkpointing" in capsys.readouterr().err and not (tmp_path / "x").exists()


@pytest.mark.parametrize("model,size", [
    ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", ("480", "832")), ("Wan-AI/Wan2.1-T2V-14B-Diffusers", ("720", "1280")),
    ("Wan-AI/Wan2.2-TI2V-5B-Diffusers", ("704", "1280")), ("Wan-AI/Wan2.2-T2V-A14B-Diffusers", ("720", "1280")),
])
def test_dry_run_of_the_public_wan_models_needs_no_download(capsys, monkeypatch, model, size):
    import socket

    def no_network(*a, **k):
        raise AssertionError("the dry run went to the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    assert main(["transfer", "--dry-run", "--model", model, "--frames", "81", "--height", size[0],
                 "--width", size[1]]) == 0
    out = capsys.readouterr().out
    assert "predicted peak" in out and "research code" in out and "transformer weights" in out


def test_prompt_text_through_a_tiny_umt5(wan, tmp_path):
    pytest.importorskip("transformers")
    import shutil

    from ditflow_fast.families.wan.text import save_tiny_umt5

    model = tmp_path / "wan_text"
    shutil.copytree(wan / "wan21", model)
    save_tiny_umt5(model)
    args = ["transfer", "--model", str(model), "--video", str(wan / "video.mp4"), "--prompt", "a dog running",
            "--steps", "3", "--guided-steps", "1", "--opt-iters", "1", "--out", str(tmp_path / "out"), "--quiet"]
    assert main(args) == 0
    assert read_video(tmp_path / "out" / "result.mp4").shape[0] == 9


def test_the_second_experts_reference_is_taken_without_injection():
    """Its reference AMF is computed mid-run, while the step's K/V injection is armed: it must be the
    model's own attention, as a fresh computation (and a resumed run) sees it."""
    g = _wan_guide(True, guided_steps=6)
    g.run(progress=False)
    assert set(g._targets) == {"transformer", "transformer_2"}
    fresh = _wan_guide(True, guided_steps=6).reference_targets("transformer_2")
    for b, t in fresh.items():
        assert torch.equal(t["amf"], g._targets["transformer_2"][b]["amf"])
