"""LTX-Video end to end on a tiny LTXPipeline folder (save_pretrained): ``ditflow-fast transfer`` and
``ditflow_fast.transfer`` in latent mode, emb mode, zero-shot, with ``--prompt`` through the tiny T5, an
interrupted run resuming exactly, a caller's pipeline, and the dry run."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("av")

from _transfer_helpers import interrupted_and_whole  # noqa: E402

import ditflow_fast  # noqa: E402
from ditflow_fast.cli.main import main  # noqa: E402
from ditflow_fast.families.cogvideox.tiny import moving_square  # noqa: E402
from ditflow_fast.families.ltx import tiny  # noqa: E402
from ditflow_fast.video_io import read_video, write_video  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ltx(tmp_path_factory):
    root = tmp_path_factory.mktemp("ltx")
    tiny.save_tiny_ltx(root / "model", text_encoder=True)
    write_video(moving_square(17, 64, 96), root / "video.mp4")
    return root


def _args(ltx, out, *extra, embeds=True):
    text = ["--prompt-embeds", str(ltx / "model" / "prompt_embeds.safetensors")] if embeds else []
    return ["transfer", "--model", str(ltx / "model"), "--video", str(ltx / "video.mp4"), *text, "--steps", "5",
            "--guided-steps", "2", "--opt-iters", "2", "--out", str(out), "--quiet", *extra]


@pytest.mark.parametrize("frames", [9, 17])
def test_latent_emb_and_zero_shot_write_exactly_the_asked_frames(ltx, tmp_path, frames):
    n = str(frames)
    assert main(_args(ltx, tmp_path / "lat", "--frames", n)) == 0
    assert read_video(tmp_path / "lat" / "result.mp4").shape == (frames, 64, 96, 3)
    rec = json.loads((tmp_path / "lat" / "config.json").read_text())
    assert rec["family"] == "ltx" and rec["config"]["scheduler"] == "flow_euler" and len(rec["losses"]) == 2
    assert rec["config"]["guidance_blocks"] == [1]  # the tiny model's default (3 blocks)
    assert main(_args(ltx, tmp_path / "emb", "--frames", n, "--opt-mode", "emb", "--format", "frames")) == 0
    assert len(list((tmp_path / "emb" / "embeds").glob("emb_t*.safetensors"))) == 2
    assert len(list((tmp_path / "emb" / "result_frames").glob("*.png"))) == frames
    assert main(_args(ltx, tmp_path / "zs", "--frames", n, "--opt-mode", "emb", "--inject-embeds",
                      str(tmp_path / "emb" / "embeds"), "--format", "gif")) == 0
    assert json.loads((tmp_path / "zs" / "config.json").read_text())["losses"] == {}
    assert read_video(tmp_path / "zs" / "result.gif").shape[0] == frames


def test_prompt_through_the_tiny_t5_and_refusals(ltx, tmp_path, capsys):
    assert main(_args(ltx, tmp_path / "p", "--prompt", "a dog running on a beach", "--negative-prompt", "a red boat",
                      embeds=False)) == 0
    assert read_video(tmp_path / "p" / "result.mp4").shape == (9, 64, 96, 3)
    assert main(_args(ltx, tmp_path / "f", "--frames", "12")) == 2
    assert "8k+1 frames; nearest: 9 or 17" in capsys.readouterr().err
    assert main(_args(ltx, tmp_path / "s", "--height", "48")) == 2
    assert "must be multiples of 32" in capsys.readouterr().err
    assert not (tmp_path / "f").exists() and not (tmp_path / "s").exists()


def test_interrupted_run_resumes_exactly(ltx, tmp_path, monkeypatch):
    (rec, a), (full, b) = interrupted_and_whole(lambda out: _args(ltx, out, "--format", "frames", "--opt-mode", "emb"),
                                                tmp_path, monkeypatch, interrupt_at=4)
    assert rec["resumed_from_step"] == 3 and rec["losses"] == full["losses"]
    assert np.array_equal(a, b)


def test_api_in_memory_equals_the_command_line_and_takes_a_pipeline(ltx, tmp_path):
    from diffusers import LTXPipeline

    opts = dict(steps=5, guided_steps=2, opt_iters=2, opt_mode="emb")
    mem = ditflow_fast.transfer(str(ltx / "model"), str(ltx / "video.mp4"),
                                prompt_embeds=str(ltx / "model" / "prompt_embeds.safetensors"), **opts)
    assert mem.frames.shape == (9, 64, 96, 3) and mem.out is None and len(mem.losses) == 2
    assert main(_args(ltx, tmp_path / "cli", "--opt-mode", "emb", "--format", "frames")) == 0
    assert np.array_equal(mem.frames, read_video(tmp_path / "cli" / "result_frames"))

    # a caller's LTXPipeline: its own encode_prompt (pipeline_prompt), the same prompts as the folder's encoder
    pipe = LTXPipeline.from_pretrained(str(ltx / "model"))  # float32
    texts = dict(prompt="a cat jumping over a fence", negative_prompt="a car")
    by_pipe = ditflow_fast.transfer(pipe, str(ltx / "video.mp4"), **texts, **opts)
    by_folder = ditflow_fast.transfer(str(ltx / "model"), str(ltx / "video.mp4"), **texts, **opts)
    assert by_pipe.frames.shape == (9, 64, 96, 3)
    assert np.array_equal(by_pipe.frames, by_folder.frames)
    assert not any(type(b.attn1.processor).__name__ == "LTXGuidedAttnProcessor"
                   for b in pipe.transformer.transformer_blocks)  # handed back as it came


def test_dry_runs_offline(ltx, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["transfer", "--model", "Lightricks/LTX-Video", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "Lightricks/LTX-Video: 121 frames at 512x768, guidance block 13" in out
    assert "not verified on LTX weights" in out and "predicted peak" in out
    assert main(["transfer", "--model", str(ltx / "model"), "--dry-run"]) == 0
    assert "9 frames at 64x96" in capsys.readouterr().out


def test_reference_cache_gives_the_same_video(ltx, tmp_path):
    """What ``ditflow-fast batch`` shares between jobs on one reference (the latent and its guidance targets)."""
    cache = str(tmp_path / "cache")
    assert main(_args(ltx, tmp_path / "plain", "--format", "frames")) == 0
    assert main(_args(ltx, tmp_path / "fill", "--format", "frames", "--ref-cache", cache)) == 0
    assert main(_args(ltx, tmp_path / "hit", "--format", "frames", "--ref-cache", cache)) == 0
    fill, hit = (json.loads((tmp_path / d / "config.json").read_text())["ref_cache"] for d in ("fill", "hit"))
    assert fill["hits"] == 0 < fill["misses"] and hit["misses"] == 0 < hit["hits"], (fill, hit)
    videos = [read_video(tmp_path / d / "result_frames") for d in ("plain", "fill", "hit")]
    assert np.array_equal(videos[0], videos[1]) and np.array_equal(videos[0], videos[2])
