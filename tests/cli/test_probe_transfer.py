"""``ditflow-fast transfer`` against an adversarial probe: a NaN saved state, Ctrl-C, a full disk, links
under ``--out``, non-finite or huge numbers, an out-of-range seed, the tiny models' default frame count."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("av")

from _transfer_helpers import set_arg as _set  # noqa: E402
from _transfer_helpers import transfer_args as _args  # noqa: E402
from safetensors import SafetensorError, safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from ditflow_fast.cli.main import main  # noqa: E402
from ditflow_fast.families import CogVideoXFamily  # noqa: E402
from ditflow_fast.families.cogvideox import tiny  # noqa: E402
from ditflow_fast.families.cogvideox.memory import PRESETS  # noqa: E402
from ditflow_fast.guidance.config import GuidanceConfig  # noqa: E402
from ditflow_fast.video_io import write_video  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    tiny.write_tiny_assets(root)
    write_video(tiny.moving_square(13, 48, 64), root / "video13.mp4")
    return root


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() and not p.is_symlink() else None,
                                               p.lstat().st_mode)
            for p in sorted(folder.rglob("*"))}


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("ditflow-fast transfer: error: "), err[0]
    return err[0]


def test_a_finished_state_holding_nan_is_refused_as_damaged(assets, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(_args(assets, out)) == 0
    state = out / "state.safetensors"
    with safe_open(str(state), framework="pt") as f:
        meta = f.metadata()
    t = load_file(str(state))
    t["latents"].view(-1)[3] = float("nan")
    save_file(t, str(state), metadata=meta)
    capsys.readouterr()
    before = _snapshot(out)
    monkeypatch.setattr(CogVideoXFamily, "load", staticmethod(lambda *a, **k: pytest.fail("loaded a model")))
    assert main(_args(assets, out)) == 2
    line = _one_line(capsys)
    assert "damaged saved state" in line and "'latents'" in line and "use --fresh" in line
    assert _snapshot(out) == before


def test_ctrl_c_prints_one_line_exits_130_and_the_same_command_resumes(assets, tmp_path):
    out = tmp_path / "run"
    args = _set(_args(assets, out, "--threads", "1"), "--steps", "100")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # a shell's background job (CI may run as one) inherits SIGINT ignored, and Python then installs no handler
    proc = subprocess.Popen([sys.executable, "-m", "ditflow_fast.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while not (out / "state.safetensors").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["ditflow-fast transfer: interrupted; run the same command again to resume"]
    assert not (out / "config.json").exists() and not list(out.glob(".*tmp*"))
    assert main(args) == 0
    assert json.loads((out / "config.json").read_text())["resumed_from_step"] >= 1


@pytest.mark.parametrize("command,module,func,resumes", [
    ("info", "info", "run_info", False), ("batch", "batch", "run_batch_cli", True)])
def test_ctrl_c_is_one_line_for_every_subcommand(capsys, monkeypatch, tmp_path, command, module, func, resumes):
    import importlib

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(f"ditflow_fast.cli.{module}"), func, interrupted)
    argv = {"info": ["info"], "batch": ["batch", str(tmp_path / "jobs.jsonl"), "--out", str(tmp_path / "o")]}[command]
    monkeypatch.setattr(sys, "argv", ["ditflow-fast", *argv])  # the command line itself, as the console script
    assert main() == 130
    tail = "; run the same command again to resume" if resumes else ""
    assert capsys.readouterr().err == f"ditflow-fast {command}: interrupted{tail}\n"


@pytest.mark.parametrize("where", ["state", "record"])
def test_a_full_disk_is_one_line_naming_out_and_its_free_space(assets, tmp_path, capsys, monkeypatch, where):
    import safetensors.torch

    import ditflow_fast.atomic

    def full(*a, **k):
        if where == "state":  # what safetensors raises on a full disk (measured on a 8 KiB tmpfs)
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "run"
    target = {"state": (safetensors.torch, "save_file"), "record": (ditflow_fast.atomic, "write_json")}[where]
    monkeypatch.setattr(*target, full)
    assert main(_args(assets, out)) == 2
    line = _one_line(capsys)
    assert f"--out {out}: No space left on device (" in line and "free there); make room" in line
    assert line.endswith("run the same command again to resume")
    monkeypatch.undo()
    assert main(_args(assets, out)) == 0  # the same command goes on


@pytest.mark.parametrize("name,fmt,folder", [
    ("result_frames", "frames", True), ("amf", "mp4", True), ("embeds", "mp4", True),
    ("state.safetensors", "mp4", False), ("config.json", "gif", False), ("result.gif", "gif", False),
    ("result.mp4", "mp4", False)])
def test_links_under_out_are_refused_before_any_work(assets, tmp_path, capsys, no_load, name, fmt, folder):
    out, target = tmp_path / "run", tmp_path / "elsewhere"
    out.mkdir()
    if folder:
        target.mkdir()
        (target / "keep.txt").write_text("mine")
    else:
        target.write_text("mine")
    (out / name).symlink_to(target)
    before = _snapshot(tmp_path)
    assert main(_args(assets, out, "--format", fmt, "--opt-mode", "emb")) == 2
    line = _one_line(capsys)
    assert f"--out {out}" in line and f"{name} is a symbolic link" in line
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("flag,value", [("--cfg", "nan"), ("--cfg", "inf"), ("--flow-shift", "nan"),
                                        ("--flow-shift", "-inf"), ("--flow-shift", "0"), ("--early-stop", "nan")])
def test_non_finite_float_options_are_refused_at_the_start(assets, tmp_path, capsys, no_load, flag, value):
    assert main(_args(assets, tmp_path / "out", f"{flag}={value}")) == 2
    line = _one_line(capsys)
    assert flag in line and value in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("field,value", [("lr", (float("nan"), 0.001)), ("lr", (0.002, float("inf"))),
                                         ("temperature", float("nan")), ("prop_motion", float("inf")),
                                         ("cfg_scale_2", float("nan"))])
def test_non_finite_settings_are_refused_by_the_config(field, value):
    with pytest.raises(ValueError, match=f"{field}.*finite"):
        GuidanceConfig(**{field: value}).validate()


@pytest.mark.parametrize("value", [1e30, -2e4])
def test_huge_prompt_embeddings_are_refused_before_loading(assets, tmp_path, capsys, no_load, value):
    pe = tiny.tiny_prompt_embeds()
    pe["prompt"][0, 1, 2] = value
    save_file(pe, str(tmp_path / "huge.safetensors"))
    assert main(_set(_args(assets, tmp_path / "out"), "--prompt-embeds", str(tmp_path / "huge.safetensors"))) == 2
    line = _one_line(capsys)
    assert "--prompt-embeds" in line and "huge.safetensors" in line and "'prompt'" in line and "1e+04" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("seed", ["1180591620717411303424", str(2**63), "-1"])
def test_a_seed_out_of_range_is_refused_naming_the_range(assets, tmp_path, capsys, no_load, seed):
    assert main(_set(_args(assets, tmp_path / "out"), "--seed", seed)) == 2
    line = _one_line(capsys)
    assert f"--seed {seed}" in line and f"0 .. {2**63 - 1}" in line
    GuidanceConfig(seed=2**63 - 1).validate()  # the top of the range is a seed


def test_tiny_cogvideox_defaults_to_9_frames(assets, tmp_path):
    cfg = dict(tiny.tiny_transformer().config)
    assert CogVideoXFamily.defaults(cfg)["frames"] == 9
    # the public text-to-video models' own: 24 for CogVideoX 1.0, 81 for 1.5 (temporal patches of 2); the I2V
    # presets' (49 for 5B-I2V, its learned position table's count) are tested in tests/i2v/
    public = {p.get("patch_size_t") or 1: CogVideoXFamily.defaults(p)["frames"] for p in PRESETS.values()
              if p["in_channels"] == p["out_channels"]}
    assert public == {1: 24, 2: 81}
    args = _set(_args(assets, tmp_path / "out"), "--video", str(assets / "video13.mp4"))
    i = args.index("--frames")
    assert main(args[:i] + args[i + 2:]) == 0  # a 13-frame clip: before, 24 frames were asked of it
    rec = json.loads((tmp_path / "out" / "config.json").read_text())
    assert rec["config"]["frames"] == 9

