"""``ditflow-fast transfer`` end to end on a tiny model and a generated video, its errors, video I/O."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("av")

from ditflow_fast.cli.main import main  # noqa: E402
from ditflow_fast.families.cogvideox import tiny  # noqa: E402
from ditflow_fast.video_io import VideoError, read_video, write_video  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    tiny.write_tiny_assets(root)
    return root


def _args(assets, out, *extra):
    return ["transfer", "--model", str(assets / "model"), "--video", str(assets / "video.mp4"),
            "--prompt-embeds", str(assets / "model" / "prompt_embeds.safetensors"), "--frames", "9",
            "--height", "48", "--width", "64", "--steps", "6", "--guided-steps", "2", "--opt-iters", "2",
            "--out", str(out), "--quiet", *extra]


def test_transfer_end_to_end_with_defaults_under_a_minute(assets, tmp_path):
    t0 = time.time()
    # the full default schedule (50 steps, 10 guided with 5 iterations): the acceptance run
    rc = main(["transfer", "--model", str(assets / "model"), "--video", str(assets / "video.mp4"),
               "--prompt-embeds", str(assets / "model" / "prompt_embeds.safetensors"), "--frames", "9",
               "--height", "48", "--width", "64", "--out", str(tmp_path), "--quiet"])
    assert rc == 0 and time.time() - t0 < 60
    rec = json.loads((tmp_path / "config.json").read_text())
    assert rec["config"]["guidance_blocks"] == [1] and rec["config"]["scheduler"] == "dpm"
    assert len(rec["losses"]) == 10 and all(len(v) == 5 for v in rec["losses"].values())
    video = read_video(tmp_path / "result.mp4")
    assert video.shape == (9, 48, 64, 3)


def test_transfer_emb_save_inject_frames_and_resume(assets, tmp_path):
    assert main(_args(assets, tmp_path / "a", "--opt-mode", "emb", "--format", "frames", "--cpu-offload",
                      "--vae-tiling")) == 0
    assert len(list((tmp_path / "a" / "embeds").glob("emb_t*.safetensors"))) == 2
    assert len(list((tmp_path / "a" / "result_frames").glob("*.png"))) == 9
    # zero-shot injection with another prompt file
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file(tiny.tiny_prompt_embeds(seed=3), str(other))
    args = _args(assets, tmp_path / "b", "--opt-mode", "emb", "--inject-embeds", str(tmp_path / "a" / "embeds"),
                 "--format", "gif")
    args[args.index("--prompt-embeds") + 1] = str(other)
    assert main(args) == 0
    assert json.loads((tmp_path / "b" / "config.json").read_text())["losses"] == {}
    # a finished run resumes at its end: same result, nothing recomputed
    before = (tmp_path / "a" / "state.safetensors").read_bytes()
    assert main(_args(assets, tmp_path / "a", "--opt-mode", "emb", "--format", "frames", "--cpu-offload",
                      "--vae-tiling")) == 0
    assert json.loads((tmp_path / "a" / "config.json").read_text())["resumed_from_step"] == 6
    assert (tmp_path / "a" / "state.safetensors").read_bytes() == before


@pytest.mark.parametrize("change,message", [
    (("--video", "missing.mp4"), "no such file"),
    (("--video", "bad.mp4"), "cannot decode"),
    (("--frames", "20"), "fewer than the 20"),
    (("--height", "40"), "multiples of 16"),
    (("--model", "empty_model"), "not a diffusers folder of a supported family"),
    (("--model", "no/such/thing"), "no such folder"),
    (("--model", "broken_model"), "cannot be loaded"),
    (("--inject-embeds", "nowhere"), "needs --opt-mode emb"),
    (("--prompt-embeds", "missing.safetensors"), "no such file"),
])
def test_transfer_errors_are_clear(assets, tmp_path, capsys, change, message):
    (tmp_path / "bad.mp4").write_text("not a video")
    (tmp_path / "empty_model").mkdir()
    for sub in ("transformer", "vae", "scheduler"):
        (tmp_path / "broken_model" / sub).mkdir(parents=True)
    args = _args(assets, tmp_path / "out")
    flag, value = change
    path_like = flag not in ("--frames", "--height") and not value.startswith("no/")
    value = str(tmp_path / value) if path_like else value
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err


def test_dry_run_prints_memory_next_to_research(capsys):
    assert main(["transfer", "--dry-run", "--model", "THUDM/CogVideoX-5b", "--frames", "49"]) == 0
    out = capsys.readouterr().out
    assert "predicted peak" in out and "research code" in out and "AMF working set" in out


def test_video_io_folder_and_gif_round_trip(tmp_path):
    video = tiny.moving_square(5, 32, 48)
    write_video(video, tmp_path / "frames", fmt="frames")
    back = read_video(tmp_path / "frames")
    assert np.array_equal(back, video)  # PNG is lossless
    write_video(video, tmp_path / "v.gif", fmt="gif")
    assert read_video(tmp_path / "v.gif", frames=5).shape == (5, 32, 48, 3)
    resized = read_video(tmp_path / "frames", frames=3, height=16, width=32)
    assert resized.shape == (3, 16, 32, 3)
    with pytest.raises(VideoError, match="no frames"):
        (tmp_path / "empty").mkdir()
        read_video(tmp_path / "empty")
    assert not list(tmp_path.glob(".*")), "no temporary files left behind"


def test_interrupted_transfer_resumes_to_the_same_video(assets, tmp_path, monkeypatch):
    from ditflow_fast.guidance.loop import Guide

    assert main(_args(assets, tmp_path / "full", "--format", "frames")) == 0
    real, calls = Guide._denoise, []

    def flaky(self, *a, **k):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C during step 4
        return real(self, *a, **k)

    monkeypatch.setattr(Guide, "_denoise", flaky)
    with pytest.raises(KeyboardInterrupt):
        main(_args(assets, tmp_path / "cut", "--format", "frames"))
    assert not (tmp_path / "cut" / "result_frames").exists()
    monkeypatch.setattr(Guide, "_denoise", real)
    assert main(_args(assets, tmp_path / "cut", "--format", "frames")) == 0
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["resumed_from_step"] == 3
    cut, full = (read_video(tmp_path / d / "result_frames") for d in ("cut", "full"))
    assert np.array_equal(cut, full)


def test_model_size_checks():
    from ditflow_fast.families.cogvideox.components import ModelError, check_size

    tr, vae = tiny.tiny_transformer(True), tiny.tiny_vae()
    assert check_size(tr, vae, 9, 48, 64) == (3, 6, 8)
    with pytest.raises(ModelError, match="multiples of 16"):
        check_size(tr, vae, 9, 40, 64)
    tr.register_to_config(use_learned_positional_embeddings=True)
    with pytest.raises(ModelError, match="learned positional table fixes the size to 48x64"):
        check_size(tr, vae, 9, 64, 64)


def test_prompt_text_through_a_tiny_t5(tmp_path):
    pytest.importorskip("transformers")
    from ditflow_fast.families.prompts import prompt_embeddings

    tiny.write_tiny_assets(tmp_path, text_encoder=True)
    model = str(tmp_path / "model")
    tr = tiny.tiny_transformer(True)
    emb = prompt_embeddings(model, "a dog running", "", None, tr)
    assert {k: tuple(v.shape) for k, v in emb.items()} == {k: (1, tiny.TEXT_LEN, tiny.TEXT_DIM)
                                                          for k in ("prompt", "negative", "empty")}
    assert not torch.equal(emb["prompt"], prompt_embeddings(model, "a cat jumping", "", None, tr)["prompt"])
    args = ["transfer", "--model", model, "--video", str(tmp_path / "video.mp4"), "--prompt", "a dog running",
            "--frames", "9", "--height", "48", "--width", "64", "--steps", "3", "--guided-steps", "1",
            "--opt-iters", "1", "--out", str(tmp_path / "out"), "--quiet"]
    assert main(args) == 0 and (tmp_path / "out" / "result.mp4").exists()


def test_transfer_offers_every_guidance_loss():
    import argparse

    from ditflow_fast.cli import transfer as transfer_cli
    from ditflow_fast.guidance.losses import LOSSES

    p = argparse.ArgumentParser()
    transfer_cli.add_transfer_parser(p.add_subparsers())
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices["transfer"]
    assert tuple(next(a for a in sub._actions if a.dest == "loss").choices) == LOSSES
