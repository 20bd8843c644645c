"""``ditflow-fast transfer`` hardening: resume keyed by its inputs, nothing lost on refusal, non-finite
inputs, exact frame counts, early errors before any model is loaded, no surprise network, file modes."""

from __future__ import annotations

import fcntl
import json
import os
import time

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("av")

from _transfer_helpers import set_arg as _set  # noqa: E402
from _transfer_helpers import transfer_args as _args  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from ditflow_fast.cli.main import main  # noqa: E402
from ditflow_fast.families import CogVideoXFamily  # noqa: E402
from ditflow_fast.families.cogvideox import family as cogvideox  # noqa: E402
from ditflow_fast.families.cogvideox import tiny  # noqa: E402
from ditflow_fast.guidance.loop import Guide  # noqa: E402
from ditflow_fast.video_io import write_video  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    tiny.write_tiny_assets(root)
    write_video(tiny.moving_square(9, 48, 64)[:, ::-1].copy(), root / "other.mp4")
    save_file(tiny.tiny_prompt_embeds(seed=5), str(root / "other_prompt.safetensors"))
    return root


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None, p.stat().st_mode)
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def finished(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(_args(assets, out, "--opt-mode", "emb")) == 0
    return out


@pytest.mark.parametrize("flag,value,names", [
    ("--video", "other.mp4", "video"),
    ("--prompt-embeds", "other_prompt.safetensors", "prompts"),
    ("--seed", "3", "settings"),
    ("--dtype", "bfloat16", "dtype"),
])
def test_a_rerun_with_other_inputs_is_refused_naming_them_and_changes_nothing(assets, finished, capsys, no_load,
                                                                               flag, value, names):
    before = _snapshot(finished)
    path_like = flag in ("--video", "--prompt-embeds")
    args = _set(_args(assets, finished, "--opt-mode", "emb"), flag, str(assets / value) if path_like else value)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"holds a run with other {names}" in err[0] and "--fresh" in err[0]
    assert _snapshot(finished) == before  # the finished run's record, state and embeddings are intact


def test_changed_model_weights_are_refused(assets, tmp_path, capsys):
    model = tmp_path / "model"
    tiny.save_tiny_model(model)
    assert main(_set(_args(assets, tmp_path / "out"), "--model", str(model))) == 0
    tiny.tiny_transformer(True, seed=9).save_pretrained(model / "transformer")  # same config, other weights
    assert main(_set(_args(assets, tmp_path / "out"), "--model", str(model))) == 2
    assert "other model" in capsys.readouterr().err


def test_losses_survive_an_interrupt_and_resume(assets, tmp_path, monkeypatch):
    assert main(_args(assets, tmp_path / "full")) == 0
    real, calls = Guide._denoise, []

    def flaky(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(Guide, "_denoise", flaky)
    with pytest.raises(KeyboardInterrupt):
        main(_args(assets, tmp_path / "cut"))
    assert not (tmp_path / "cut" / "config.json").exists()  # the record comes last
    monkeypatch.setattr(Guide, "_denoise", real)
    assert main(_args(assets, tmp_path / "cut")) == 0
    cut, full = (json.loads((tmp_path / d / "config.json").read_text()) for d in ("cut", "full"))
    assert cut["resumed_from_step"] == 2 and cut["losses"] == full["losses"] and len(cut["losses"]) == 2


def test_fresh_clears_the_old_runs_embeddings(assets, tmp_path):
    out = tmp_path / "run"
    assert main(_args(assets, out, "--opt-mode", "emb")) == 0
    assert list((out / "embeds").iterdir())
    assert main(_args(assets, out, "--fresh", "--no-guidance")) == 0
    assert not (out / "embeds").exists()
    assert json.loads((out / "config.json").read_text())["losses"] == {}


def test_injection_refuses_embeddings_of_several_runs(assets, tmp_path, capsys):
    for name, seed in (("a", "0"), ("b", "1")):
        assert main(_args(assets, tmp_path / name, "--opt-mode", "emb", "--seed", seed)) == 0
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    a, b = sorted((tmp_path / "a" / "embeds").iterdir()), sorted((tmp_path / "b" / "embeds").iterdir())
    (mixed / a[0].name).write_bytes(a[0].read_bytes())
    (mixed / b[1].name).write_bytes(b[1].read_bytes())
    assert main(_args(assets, tmp_path / "zs", "--opt-mode", "emb", "--inject-embeds", str(mixed))) == 2
    assert "different runs" in capsys.readouterr().err


def test_a_second_concurrent_run_into_one_out_is_refused(assets, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a first run holds it
    try:
        assert main(_args(assets, out)) == 2
    finally:
        os.close(fd)
    assert "another ditflow-fast transfer is writing into it" in capsys.readouterr().err
    assert list(out.iterdir()) == []
    assert main(_args(assets, out)) == 0  # once the first is done


@pytest.mark.parametrize("where", ["prompt", "negative"])
def test_nan_prompt_embeddings_are_refused_before_loading(assets, tmp_path, capsys, no_load, where):
    pe = tiny.tiny_prompt_embeds()
    pe[where][0, 1, 2] = float("nan")
    save_file(pe, str(tmp_path / "nan.safetensors"))
    args = _set(_args(assets, tmp_path / "out", "--no-guidance"), "--prompt-embeds", str(tmp_path / "nan.safetensors"))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "nan.safetensors" in err and repr(where) in err and "non-finite" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", [float("nan"), 1e30])
def test_broken_injected_embeddings_are_refused(assets, finished, tmp_path, capsys, value):
    bad = tmp_path / "embeds"
    bad.mkdir()
    for p in (finished / "embeds").iterdir():
        t = load_file(str(p))
        t["emb"][0, 0, 0, 0] = value
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata()
        save_file(t, str(bad / p.name), metadata=meta)
    assert main(_args(assets, tmp_path / "zs", "--opt-mode", "emb", "--inject-embeds", str(bad))) == 2
    err = capsys.readouterr().err
    assert "not injecting it" in err and "emb_t" in err
    assert not (tmp_path / "zs" / "result.mp4").exists()


def test_a_non_finite_latent_stops_the_run_naming_the_step(assets, tmp_path, capsys, monkeypatch):
    real = CogVideoXFamily.forward

    def nan_after_two(transformer, latent, text, t, emb=None, _n=[0]):  # noqa: B006 - a call counter
        _n[0] += 1
        out = real(transformer, latent, text, t, emb)
        return out * float("nan") if _n[0] > 4 else out

    monkeypatch.setattr(CogVideoXFamily, "forward", staticmethod(nan_after_two))
    assert main(_args(assets, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "the latent after denoising step 3 of 4" in err and "non-finite" in err
    assert not (tmp_path / "out" / "result.mp4").exists() and not (tmp_path / "out" / "config.json").exists()


def test_cogvideox_frame_rule_is_what_its_vae_decodes():
    vae = tiny.tiny_vae()
    for f in range(1, 27):
        x = torch.zeros(1, 3, f, 16, 16)
        with torch.no_grad():
            lat = vae.encode(x).latent_dist.mode()
            got = vae.decode(lat).sample.shape[2]
        assert lat.shape[2] == cogvideox.latent_frames_for(f)
        assert got == cogvideox.decoded_frames(lat.shape[2]), f
    assert cogvideox.valid_frames(50) == [1, 8, 9, 16, 17, 24, 25, 32, 33, 40, 41, 48, 49]


@pytest.mark.parametrize("frames,nearest", [("7", "1 or 8"), ("5", "1 or 8"), ("2", "1 or 8"), ("20", "17 or 24")])
def test_cogvideox_frame_counts_it_cannot_write_are_refused(assets, tmp_path, capsys, no_load, frames, nearest):
    video = tmp_path / "long.mp4"
    write_video(tiny.moving_square(24, 48, 64), video)
    args = _set(_set(_args(assets, tmp_path / "out"), "--frames", frames), "--video", str(video))
    assert main(args) == 2
    assert f"nearest: {nearest}" in capsys.readouterr().err
    assert main(["transfer", "--dry-run", "--model", "THUDM/CogVideoX-5b", "--frames", frames]) == 2
    assert f"nearest: {nearest}" in capsys.readouterr().err


def test_the_default_frame_count_is_exact(capsys):
    assert main(["transfer", "--dry-run", "--model", "THUDM/CogVideoX-5b"]) == 0
    assert "24 frames at 480x720" in capsys.readouterr().out
    assert cogvideox.decoded_frames(cogvideox.latent_frames_for(24)) == 24


@pytest.mark.parametrize("case,message", [
    ("out_is_file", "--out"),
    ("result_is_folder", "result.mp4 is a folder"),
    ("device_cuda", "--device cuda"),
    ("device_unknown", "--device 'tpu9'"),
    ("fps_zero", "--fps must be positive"),
    ("fps_negative_gif", "--fps must be positive"),
    ("corrupt_state", "use --fresh"),
    ("threads_zero", "--threads must be positive"),
])
def test_early_one_line_errors_before_any_model_is_loaded(assets, tmp_path, capsys, no_load, case, message):
    out = tmp_path / "out"
    args = _args(assets, out)
    if case == "out_is_file":
        out.write_text("x")
    elif case == "result_is_folder":
        (out / "result.mp4").mkdir(parents=True)
    elif case == "device_cuda":
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        args = _set(args, "--device", "cuda")
    elif case == "device_unknown":
        args = _set(args, "--device", "tpu9")
    elif case == "fps_zero":
        args = _set(args, "--fps", "0")
    elif case == "fps_negative_gif":
        args = _set(_set(args, "--fps", "-3"), "--format", "gif")
    elif case == "corrupt_state":
        out.mkdir()
        (out / "state.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json")
    elif case == "threads_zero":
        args = _set(args, "--threads", "0")
    before = _snapshot(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert _snapshot(tmp_path) == before


def test_read_only_out_is_refused(assets, tmp_path, capsys, no_load, monkeypatch):
    import tempfile

    def read_only(*a, **k):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    assert main(_args(assets, tmp_path / "out")) == 2
    assert "--out" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["./nope", "nope/a/b", "~/nope", "assets_missing/x"])
def test_a_mistyped_local_path_fails_fast_without_the_hub(assets, tmp_path, capsys, monkeypatch, model):
    import socket

    def no_network(*a, **k):
        raise AssertionError("the hub was contacted for a local path")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "assets_missing").mkdir()  # its first component exists here: a local path
    t0 = time.time()
    assert main(_set(_args(assets, tmp_path / "out"), "--model", model)) == 2
    assert time.time() - t0 < 2
    assert "no such folder" in capsys.readouterr().err


def test_hub_ids_honour_hf_hub_offline(assets, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    assert main(_set(_args(assets, tmp_path / "out"), "--model", "nobody/nothing-here")) == 2
    assert time.time() - t0 < 2
    assert "HF_HUB_OFFLINE=1" in capsys.readouterr().err


def test_results_get_the_umask_modes(assets, tmp_path):
    old = os.umask(0o022)
    try:
        assert main(_args(assets, tmp_path / "a", "--opt-mode", "emb")) == 0
        assert main(_args(assets, tmp_path / "b", "--format", "frames")) == 0
    finally:
        os.umask(old)
    for p in [tmp_path / "a" / n for n in ("result.mp4", "state.safetensors", "config.json")] + \
            list((tmp_path / "a" / "embeds").iterdir()) + list((tmp_path / "b" / "result_frames").iterdir()):
        assert p.stat().st_mode & 0o777 == 0o644, p
    assert (tmp_path / "b" / "result_frames").stat().st_mode & 0o777 == 0o755
    assert not list((tmp_path / "a").glob(".*")), "no temporary files left"


def test_resume_after_finish_gives_the_same_state_bytes(assets, tmp_path):
    assert main(_args(assets, tmp_path / "r")) == 0
    state = (tmp_path / "r" / "state.safetensors").read_bytes()
    assert main(_args(assets, tmp_path / "r")) == 0
    assert (tmp_path / "r" / "state.safetensors").read_bytes() == state
    assert np.isfinite(json.loads((tmp_path / "r" / "config.json").read_text())["seconds"])


def test_an_unreachable_hub_fails_in_seconds_not_after_retries(assets, tmp_path, capsys, monkeypatch):
    import socket

    calls = []

    def unreachable(*a, **k):
        calls.append(a)
        raise OSError(-2, "Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    t0 = time.time()
    assert main(_set(_args(assets, tmp_path / "out"), "--model", "nobody/nothing-here")) == 2
    assert time.time() - t0 < 2 and len(calls) == 1  # one attempt, not the download client's retries
    assert "cannot be reached" in capsys.readouterr().err


def test_fresh_with_a_bad_prompt_file_keeps_the_old_run_and_a_new_out_leaves_no_folder(assets, finished, tmp_path,
                                                                                        capsys):
    bad = tmp_path / "wide.safetensors"
    save_file({"prompt": torch.zeros(1, tiny.TEXT_LEN, tiny.TEXT_DIM + 1)}, str(bad))  # the wrong text width
    before = _snapshot(finished)
    args = _set(_args(assets, finished, "--opt-mode", "emb", "--fresh"), "--prompt-embeds", str(bad))
    assert main(args) == 2 and "must be [1, L, 16]" in capsys.readouterr().err
    assert _snapshot(finished) == before  # --fresh removes the old run only once every check has passed
    assert main(_set(_args(assets, tmp_path / "new"), "--prompt-embeds", str(bad))) == 2
    assert not (tmp_path / "new").exists()
