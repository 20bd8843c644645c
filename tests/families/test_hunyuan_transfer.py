"""HunyuanVideo end to end on a tiny ``HunyuanVideoPipeline`` folder (save_pretrained, random weights, tokenizers
built here): the command line and ``ditflow_fast.transfer``, latent, emb, zero-shot, exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("av")

from _transfer_helpers import interrupted_and_whole  # noqa: E402

from ditflow_fast.cli.main import main  # noqa: E402
from ditflow_fast.families.cogvideox import tiny as cog_tiny  # noqa: E402
from ditflow_fast.families.hunyuan import tiny  # noqa: E402
from ditflow_fast.video_io import read_video, write_video  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def hy(tmp_path_factory):
    root = tmp_path_factory.mktemp("hy")
    tiny.save_tiny_hunyuan(root / "model")
    write_video(cog_tiny.moving_square(13, 48, 80), root / "video.mp4")
    return root


def _args(hy, out, *extra, embeds=True):
    text = ["--prompt-embeds", str(hy / "model" / "prompt_embeds.safetensors")] if embeds else \
        ["--prompt", "a dog running on a beach"]
    return ["transfer", "--model", str(hy / "model"), "--video", str(hy / "video.mp4"), *text, "--steps", "5",
            "--guided-steps", "2", "--opt-iters", "2", "--out", str(out), "--quiet", *extra]


@pytest.mark.parametrize("frames", [9, 13])
def test_latent_emb_and_zero_shot_write_exactly_the_asked_frames(hy, tmp_path, frames):
    n = str(frames)
    assert main(_args(hy, tmp_path / "lat", "--frames", n)) == 0
    assert read_video(tmp_path / "lat" / "result.mp4").shape == (frames, 48, 80, 3)
    rec = json.loads((tmp_path / "lat" / "config.json").read_text())
    assert rec["family"] == "hunyuanvideo" and rec["config"]["scheduler"] == "flow_euler" and len(rec["losses"]) == 2
    assert main(_args(hy, tmp_path / "emb", "--frames", n, "--opt-mode", "emb", "--format", "frames")) == 0
    assert len(list((tmp_path / "emb" / "embeds").glob("emb_t*.safetensors"))) == 2
    assert len(list((tmp_path / "emb" / "result_frames").glob("*.png"))) == frames
    assert main(_args(hy, tmp_path / "zs", "--frames", n, "--opt-mode", "emb", "--inject-embeds",
                      str(tmp_path / "emb" / "embeds"), "--format", "gif")) == 0
    assert json.loads((tmp_path / "zs" / "config.json").read_text())["losses"] == {}
    assert read_video(tmp_path / "zs" / "result.gif").shape[0] == frames


def test_prompt_text_through_the_pipelines_llama_and_clip(hy, tmp_path):
    assert main(_args(hy, tmp_path / "txt", embeds=False)) == 0
    rec = json.loads((tmp_path / "txt" / "config.json").read_text())
    assert rec["prompt"] == "a dog running on a beach" and rec["config"]["frames"] == 9
    assert read_video(tmp_path / "txt" / "result.mp4").shape == (9, 48, 80, 3)


def test_defaults_and_frame_refusal(hy, tmp_path, capsys):
    assert main(_args(hy, tmp_path / "bad", "--frames", "10")) == 2
    assert "4k+1 frames; nearest: 9 or 13" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_interrupted_run_resumes_exactly(hy, tmp_path, monkeypatch):
    """Flow-matching Euler counts its own steps: a resumed run must restart the count mid-schedule."""
    (rec, a), (full, b) = interrupted_and_whole(lambda out: _args(hy, out, "--format", "frames", "--opt-mode", "emb"),
                                                tmp_path, monkeypatch, interrupt_at=4)
    assert rec["resumed_from_step"] == 3 and rec["losses"] == full["losses"]
    assert np.array_equal(a, b)


def test_the_api_takes_the_folder_and_a_loaded_pipeline(hy):
    from diffusers import HunyuanVideoPipeline

    import ditflow_fast

    frames = read_video(hy / "video.mp4")[:9]
    kw = dict(prompt="a dog running on a beach", steps=3, guided_steps=1, opt_iters=1)
    by_path = ditflow_fast.transfer(str(hy / "model"), frames, **kw)
    assert by_path.frames.shape == (9, 48, 80, 3) and len(by_path.losses) == 1
    pipe = HunyuanVideoPipeline.from_pretrained(str(hy / "model"))
    by_pipe = ditflow_fast.transfer(pipe, frames, **kw)  # prompts through the pipeline's own encode_prompt
    assert np.array_equal(by_pipe.frames, by_path.frames)
    # the caller's transformer goes back as it came: stock processors, no run setting left on it
    assert not hasattr(pipe.transformer, "_ditflow_embedded_guidance")
    assert type(pipe.transformer.transformer_blocks[0].attn.processor).__name__ == "HunyuanVideoAttnProcessor2_0"
    assert by_pipe.losses == by_path.losses


def test_dry_run_of_the_public_model_needs_no_download(capsys, monkeypatch):
    import socket

    def no_network(*a, **k):
        raise AssertionError("the dry run went to the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    assert main(["transfer", "--dry-run", "--model", "hunyuanvideo-community/HunyuanVideo", "--offload", "group"]) == 0
    out = capsys.readouterr().out
    assert "129 frames at 720x1280" in out and "guidance block 28" in out and "unverified" in out
    assert "predicted peak" in out and "embedded guidance" in out


def test_offload_modes_give_the_same_video(hy, tmp_path):
    """diffusers' group offloading and accelerate's model offload hooks, with the CPU as the onload device."""
    videos = []
    for mode in ("none", "model", "group"):
        assert main(_args(hy, tmp_path / mode, "--offload", mode, "--format", "frames")) == 0
        videos.append(read_video(tmp_path / mode / "result_frames"))
    assert all(np.array_equal(videos[0], v) for v in videos[1:])


def test_group_offload_keeps_two_blocks_of_both_kinds_in_the_backward():
    """The eviction of families/offload.py indexes the family's block list (dual then single stream): in a guided
    backward at a single-stream block at most two blocks are on the device at once, as the memory model counts."""
    import torch

    from ditflow_fast.families.hunyuan.family import HunyuanVideoFamily as H
    from ditflow_fast.families.offload import _groups, apply_offload, settle

    tr = tiny.tiny_transformer(layers=6, single=3)
    tr.enable_gradient_checkpointing()
    H.install(tr)
    apply_offload(tr, "group", "cpu")
    groups = [g for g in _groups(tr) if g._ditflow_index is not None]
    assert sorted(g._ditflow_index for g in groups) == list(range(6))
    most = []
    for g in groups:
        real = g.onload_

        def onload(real=real):
            real()
            most.append(sum(o._ditflow_onloaded for o in groups))
        g.onload_ = onload
    x = torch.randn(1, tiny.Z_DIM, 3, 6, 10, requires_grad=True)
    e = tiny.random_prompt(torch.Generator().manual_seed(0))
    q, k = H.run_until(tr, x, e, 500.0, stop_after=4, qk_blocks=[4]).qk[4]
    (q.sum() + k.sum()).backward()
    settle(tr)
    assert max(most) <= 2 and len(most) > 6  # every block came in for the forward and again for the backward


def test_help_names_the_unverified_block_and_the_embedded_guidance(capsys):
    with pytest.raises(SystemExit):
        main(["transfer", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "unverified on real weights" in out and "HunyuanVideo 28 of 60" in out
    assert "HunyuanVideo: its embedded guidance scale (default 6" in out


def test_a_batch_worker_holds_the_model_between_jobs(hy, tmp_path):
    from ditflow_fast.batch.worker import TransferWorker

    w = TransferWorker("w", threads=1)
    job = {"model": str(hy / "model"), "video": str(hy / "video.mp4"), "steps": 3, "guided_steps": 1, "opt_iters": 1,
           "format": "frames", "prompt_embeds": str(hy / "model" / "prompt_embeds.safetensors")}
    first, second = (w.run(n, job, str(tmp_path / n)) for n in ("a", "b"))
    assert (first["ok"], first["model"], second["ok"], second["model"], w.loads) == (True, "loaded", True, "held", 1)
    a, b = (read_video(tmp_path / n / "result_frames") for n in ("a", "b"))
    assert a.shape == (9, 48, 80, 3) and np.array_equal(a, b)


def test_the_app_predicts_the_public_models_memory_against_a_24_gb_card():
    from ditflow_fast.app.core import predict_memory
    from ditflow_fast.transfer_api import TransferOptions

    mem = predict_memory("hunyuanvideo-community/HunyuanVideo", TransferOptions.from_kwargs(offload="group"),
                         gpu_memory_gib=24 * 1e9 / 2**30)
    assert abs(mem.peak_bytes / 2**30 - 25.49) < 0.01 and not mem.fits and "Refused" in mem.message()


def test_a_prompt_file_without_the_empty_prompt_is_refused_before_anything_is_written(hy, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    only = tmp_path / "only_prompt.safetensors"
    save_file({"prompt": load_file(str(hy / "model" / "prompt_embeds.safetensors"))["prompt"]}, str(only))
    args = _args(hy, tmp_path / "out")
    args[args.index("--prompt-embeds") + 1] = str(only)
    assert main(args) == 2
    assert "mask column" in capsys.readouterr().err and not (tmp_path / "out").exists()
