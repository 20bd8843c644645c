"""A tiny CogVideoX 1.5-style pipeline (``patch_size_t=2``, saved with ``save_pretrained``) end to end: the command
line and ``ditflow_fast.transfer``; latent, emb, zero-shot; exact resume; the frames asked; the offline dry run."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("av")

from _transfer_helpers import interrupted_and_whole  # noqa: E402

import ditflow_fast  # noqa: E402
from ditflow_fast.cli.main import main  # noqa: E402
from ditflow_fast.families.cogvideox import tiny  # noqa: E402
from ditflow_fast.video_io import read_video  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return tiny.write_tiny_assets(tmp_path_factory.mktemp("cog15"), v15=True, frames=17)


def _args(assets, out, *extra):
    return ["transfer", "--model", str(assets / "model"), "--video", str(assets / "video.mp4"), "--prompt-embeds",
            str(assets / "model" / "prompt_embeds.safetensors"), "--steps", "4", "--guided-steps", "2",
            "--opt-iters", "2", "--out", str(out), "--quiet", "--format", "frames", *extra]


@pytest.mark.parametrize("frames", [9, 16])  # 3 latent frames (padded to 4 per forward), 4 (no padding)
def test_latent_emb_and_zero_shot_write_exactly_the_asked_frames(assets, tmp_path, frames):
    n = str(frames)
    assert main(_args(assets, tmp_path / "lat", "--frames", n)) == 0
    assert read_video(tmp_path / "lat" / "result_frames").shape == (frames, 48, 64, 3)
    rec = json.loads((tmp_path / "lat" / "config.json").read_text())
    assert rec["family"] == "cogvideox" and rec["config"]["scheduler"] == "dpm" and len(rec["losses"]) == 2
    assert main(_args(assets, tmp_path / "emb", "--frames", n, "--opt-mode", "emb")) == 0
    assert read_video(tmp_path / "emb" / "result_frames").shape[0] == frames
    saved = sorted((tmp_path / "emb" / "embeds").glob("emb_t*.safetensors"))
    assert len(saved) == 2
    assert main(_args(assets, tmp_path / "zs", "--frames", n, "--opt-mode", "emb", "--inject-embeds",
                      str(tmp_path / "emb" / "embeds"))) == 0
    assert json.loads((tmp_path / "zs" / "config.json").read_text())["losses"] == {}
    assert read_video(tmp_path / "zs" / "result_frames").shape[0] == frames


def test_the_api_in_memory_and_a_pipeline_give_what_the_command_line_writes(assets, tmp_path):
    import torch
    from diffusers import CogVideoXPipeline

    assert main(_args(assets, tmp_path / "cli", "--seed", "3")) == 0  # the tiny model's defaults: 9 frames, 48x64
    cli = read_video(tmp_path / "cli" / "result_frames")
    kw = dict(prompt_embeds=str(assets / "model" / "prompt_embeds.safetensors"), steps=4, guided_steps=2,
              opt_iters=2, seed=3)
    mem = ditflow_fast.transfer(str(assets / "model"), str(assets / "video.mp4"), **kw)
    assert mem.frames.shape == (9, 48, 64, 3) and len(mem.losses) == 2
    assert mem.record["config"]["frames"] == 9 and mem.amf_reference.shape[:2] == (2, 2)  # 2 patch frames
    np.testing.assert_array_equal(mem.frames, cli)
    pipe = CogVideoXPipeline.from_pretrained(str(assets / "model"), tokenizer=None, text_encoder=None,
                                             dtype=torch.float32)  # saved without a T5: --prompt-embeds
    got = ditflow_fast.transfer(pipe, str(assets / "video.mp4"), **kw)
    np.testing.assert_array_equal(got.frames, cli)


def test_an_interrupted_run_resumes_exactly(assets, tmp_path, monkeypatch):
    """DPM's previous x0 lives outside the scheduler: the saved state carries it (1.5's folder config)."""
    args = ("--frames", "9", "--steps", "6", "--guided-steps", "3", "--opt-mode", "emb")
    (rec, a), (full, b) = interrupted_and_whole(lambda out: _args(assets, out, *args), tmp_path, monkeypatch,
                                                interrupt_at=5)
    assert rec["resumed_from_step"] == 4 and rec["losses"] == full["losses"]
    np.testing.assert_array_equal(a, b)


def test_a_prompt_goes_through_the_folders_t5(tmp_path):
    pytest.importorskip("transformers")
    root = tiny.write_tiny_assets(tmp_path / "a", v15=True, text_encoder=True)
    args = ["transfer", "--model", str(root / "model"), "--video", str(root / "video.mp4"), "--steps", "3",
            "--guided-steps", "1", "--opt-iters", "1", "--quiet", "--format", "frames"]
    assert main([*args, "--prompt", "a dog running on a beach", "--out", str(tmp_path / "dog")]) == 0
    assert main([*args, "--prompt", "a car driving down a road at night", "--out", str(tmp_path / "car")]) == 0
    dog, car = (read_video(tmp_path / d / "result_frames") for d in ("dog", "car"))
    assert dog.shape == (9, 48, 64, 3) and not np.array_equal(dog, car)


@pytest.mark.parametrize("extra, message", [
    (("--frames", "10"), "--frames 10: this model's VAE would write 9 frames, not 10; .*nearest: 9 or 16"),
    (("--height", "64"), "--height/--width 64x64: this model's RoPE grid covers at most 48x64"),
])
def test_sizes_it_cannot_give_are_refused_before_anything_runs(assets, tmp_path, capsys, extra, message):
    assert main(_args(assets, tmp_path / "bad", *extra)) == 2
    assert pytest.importorskip("re").search(message, capsys.readouterr().err)
    assert not (tmp_path / "bad").exists()


def test_the_dry_run_of_the_public_15_model_needs_no_download(capsys, monkeypatch):
    import socket

    def no_network(*a, **k):
        raise AssertionError("the dry run went to the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    assert main(["transfer", "--dry-run", "--model", "THUDM/CogVideoX1.5-5B"]) == 0
    out = capsys.readouterr().out
    assert "81 frames at 768x1360, guidance block 20" in out and "predicted peak" in out
    assert "DiTFlow's CogVideoX-5B block, taken for CogVideoX 1.5 by depth; unverified" in out
