"""``ditflow-fast app``'s logic without a browser (``ditflow_fast.app.core``; gradio not needed): the page's
fields become the transfer API's inputs and ``TransferOptions``, run folders are named by their inputs, the
dry-run memory and its refusal, progress from ``run``'s callback, a run stopped part-way resumes, the model
stays loaded between runs, bad inputs give the CLI's messages, results, the zip; the app imports no
command-line or toy-world module."""

from __future__ import annotations

import ast
import json
import zipfile
from pathlib import Path

import pytest

import ditflow_fast.app
from ditflow_fast.app import core
from ditflow_fast.cli.main import main
from ditflow_fast.families.cogvideox import tiny
from ditflow_fast.transfer_api import TransferOptions

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = dict(steps=6, guided_steps=2, opt_iters=2)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    model = core.ensure_tiny_model(root / "cache")
    samples = core.ensure_samples(root / "cache")
    return {"root": root, "model": model, "samples": samples, "out": root / "out"}


def _request(env, **kw):
    hints = core.model_hints(str(env["model"]))
    base = dict(video=str(env["samples"]["moving square (81 frames)"]), model=str(env["model"]),
                prompt_embeds=str(env["model"] / "prompt_embeds.safetensors"), frames=hints["frames"],
                height=hints["height"], width=hints["width"], **FAST)
    return core.Request(**{**base, **kw})


def _run(prep: core.Prepared) -> core.Job:
    job = core.Job(prep).start()
    assert job.done.wait(240), "the tiny run did not finish in 4 minutes"
    return job


def _updates(job: core.Job) -> list:
    got = []
    while (u := job.updates.get(timeout=5)) is not None:
        got.append(u)
    return got


def cli_argv(prep: core.Prepared) -> list[str]:
    """``ditflow-fast transfer``'s command line for the same request (the tests compare the two's messages)."""
    argv = []
    for name, v in {**prep.inputs, **prep.request["options"]}.items():
        flag = "--" + name.replace("_", "-")
        if v is True:
            argv.append(flag)
        elif isinstance(v, list):
            argv += [a for x in v for a in (flag, str(x))]
        elif v not in (None, ""):
            argv += [flag, str(v)]
    return [*argv, "--out", str(prep.run_dir), "--quiet"]


def test_tiny_model_and_samples_are_written_once(env):
    hints = core.model_hints(str(env["model"]))
    assert {k: hints[k] for k in ("frames", "height", "width")} == core.TINY_SIZE
    for sub in ("transformer/config.json", "vae/config.json", "scheduler/scheduler_config.json"):
        assert (env["model"] / sub).is_file()
    assert (env["model"] / "prompt_embeds.safetensors").is_file()
    stamp = (env["model"] / core.APP_JSON).stat().st_mtime_ns
    assert core.ensure_tiny_model(env["root"] / "cache") == env["model"]
    assert (env["model"] / core.APP_JSON).stat().st_mtime_ns == stamp
    from ditflow_fast.video_io import read_video

    for path in env["samples"].values():
        assert read_video(path, frames=9, height=48, width=64).shape == (9, 48, 64, 3)


def test_fields_become_transfer_options():
    r = core.Request(video="v.mp4", prompt=" a cat ", model="THUDM/CogVideoX-5b", method="DiTFlow (emb)",
                     frames="49", height=None, width="", cfg="6", guidance_block="18, 20", injection=False,
                     dtype="auto", device="auto", offload="group", seed=3.0)
    inputs, opts = core.check_request(r)
    assert inputs == {"video": "v.mp4", "prompt": "a cat", "negative_prompt": "", "prompt_embeds": None,
                      "model": "THUDM/CogVideoX-5b", "image": None}
    assert (opts.opt_mode, opts.loss, opts.frames, opts.height, opts.width, opts.cfg, opts.guidance_block) == \
        ("emb", "flow", 49, None, None, 6.0, (18, 20))
    assert (opts.no_injection, opts.dtype, opts.device, opts.offload, opts.seed) == (True, None, None, "group", 3)
    # the page's defaults are the paper's, as the API has them: 10 guided steps, 5 iterations, steps the model's
    _, d = core.check_request(core.Request(model="m"))
    assert d == TransferOptions() and core.given_options(d) == {}
    # every method, as the CLI spells it
    want = {"DiTFlow (latent)": ("latent", "flow", False), "DiTFlow (emb)": ("emb", "flow", False),
            "MOFT": ("latent", "moft", False), "SMM": ("latent", "smm", False), "No guidance": ("latent", "flow", True)}
    for method, (mode, loss, noguide) in want.items():
        _, o = core.check_request(core.Request(model="m", method=method))
        assert (o.opt_mode, o.loss, o.no_guidance, o.inject_embeds) == (mode, loss, noguide, None), method
    _, o = core.check_request(core.Request(model="m", method=core.ZERO_SHOT, inject_embeds="runs/x/embeds"))
    assert (o.opt_mode, o.inject_embeds) == ("emb", "runs/x/embeds")
    assert core.given_options(o) == {"opt_mode": "emb", "inject_embeds": "runs/x/embeds"}


@pytest.mark.parametrize("kw, msg", [
    (dict(method=core.ZERO_SHOT), "--inject-embeds is required for zero-shot"),
    (dict(method="DiTFlow++"), "method must be one of"),
    (dict(model=" "), "--model is required"),
    (dict(frames="nine"), "--frames must be a whole number, got 'nine'"),
    (dict(steps=2.5), "--steps must be a whole number, got 2.5"),
    (dict(cfg="high"), "(--cfg) must be a finite number, got 'high'"),
    (dict(guidance_block="20, x"), "--guidance-block must be whole numbers, got (20, 'x')"),
    (dict(offload="disk"), "--offload must be one of none, model, group, got 'disk'"),
    (dict(fps="0"), "--fps must be positive, got 0"),
    (dict(dtype="float8"), "--dtype must be one of float32, bfloat16, float16, got 'float8'"),
    # what one request may ask of the shared device
    (dict(frames="4001"), "--frames: the app runs at most 257, got 4001"),
    (dict(steps=1000), "--steps: the app runs at most 200, got 1000"),
    (dict(opt_iters="1e6"), "--opt-iters: the app runs at most 50, got 1000000"),
])
def test_bad_fields_are_refused_with_a_message(kw, msg, tmp_path):
    r = core.Request(**{"model": "m", "video": __file__, **kw})
    with pytest.raises((ValueError, TypeError)) as got:
        core.prepare(r, tmp_path)
    assert msg in str(got.value)
    assert not any(tmp_path.iterdir())  # refused before anything is copied


def test_run_folder_is_named_by_the_inputs(env, tmp_path):
    a = core.prepare(_request(env), env["out"])
    b = core.prepare(_request(env), env["out"])
    assert a.run_dir == b.run_dir and a.run_dir.parent == env["out"] / "runs"
    assert a.run_dir.name.startswith("latent-")
    assert Path(a.inputs["video"]).parent == env["out"] / "inputs"  # the upload is copied: it survives a restart
    assert core.prepare(_request(env, seed=1), env["out"]).run_dir != a.run_dir
    assert core.prepare(_request(env, method="SMM"), env["out"]).run_dir.name.startswith("smm-")
    # the same bytes under another name: the same folder; other bytes under the same name: another
    copy = tmp_path / "renamed.mp4"
    copy.write_bytes(Path(env["samples"]["moving square (81 frames)"]).read_bytes())
    assert core.prepare(_request(env, video=str(copy)), env["out"]).run_dir == a.run_dir
    ball = next(p for k, p in env["samples"].items() if k.startswith("ball"))
    copy.write_bytes(Path(ball).read_bytes())
    assert core.prepare(_request(env, video=str(copy)), env["out"]).run_dir != a.run_dir


def test_memory_prediction_and_refusal(env, capsys):
    prep = core.prepare(_request(env), env["out"])
    model = prep.inputs["model"]
    assert core.total_steps(model, prep.opts) == FAST["steps"]
    default = core.prepare(_request(env, steps=None), env["out"])
    assert core.total_steps(model, default.opts) == 50  # the model's default, resolved as a run does
    mem = core.predict_memory(model, prep.opts)
    assert "predicted peak" in mem.table and mem.peak_bytes is not None and mem.peak_bytes > 0
    capsys.readouterr()
    assert main(["transfer", "--dry-run", *cli_argv(prep)]) == 0
    assert mem.table == capsys.readouterr().out.strip()  # the command's dry run, word for word
    # this machine runs it on the CPU: against the host's available memory
    assert mem.fits and mem.device_bytes > 0 and "available host memory" in mem.message()
    small = core.predict_memory(model, prep.opts, gpu_memory_gib=0.001)
    assert not small.fits
    assert small.message().startswith("Refused: the predicted peak memory")
    assert core.predict_memory(model, prep.opts, gpu_memory_gib=1000).fits
    # the dry run's own checks are the CLI's
    bad = core.prepare(_request(env, frames=10), env["out"])
    with pytest.raises(ValueError, match="--frames 10"):
        core.predict_memory(model, bad.opts)


def test_a_request_beyond_the_hosts_memory_is_refused_on_a_cpu(env, monkeypatch):
    prep = core.prepare(_request(env), env["out"])
    monkeypatch.setattr(core, "_HELD", {})
    monkeypatch.setattr(core, "_available_host_bytes", lambda: 2 ** 20)  # a host with 1 MiB left
    mem = core.predict_memory(prep.inputs["model"], prep.opts)
    assert not mem.fits and mem.device_bytes == 2 ** 20
    assert mem.message().startswith("Refused: the predicted peak memory") and "available host memory" in mem.message()
    monkeypatch.setattr(core, "_available_host_bytes", lambda: None)  # not known here: nothing to compare with
    assert core.predict_memory(prep.inputs["model"], prep.opts).fits


def test_run_stopped_part_way_resumes(env):
    prep = core.prepare(_request(env, steps=8, guided_steps=8, opt_iters=3), env["out"])
    core.save_request(prep)
    job = core.Job(prep).start()
    seen = []
    while len(seen) < 2:  # the steps as run() reports them, with the loss
        seen.append(job.updates.get(timeout=240))
    job.stop()  # what closing the page does
    assert job.done.wait(120)
    assert job.cancelled and job.error is None
    assert [s for s, _, _ in seen] == [1, 2] and all(t == 8 and loss > 0 for _, t, loss in seen)
    stopped, losses = core.read_progress(prep.run_dir)
    assert 2 <= stopped < 8 and len(losses) == stopped
    assert core.run_record(prep.run_dir) is None
    assert any("stopped at step" in label for label, _ in core.runs(env["out"]))
    again = core.load_request(prep.run_dir)  # as after a restart: from the folder's app_request.json
    assert again.request == prep.request and again.opts == prep.opts
    job = _run(again)
    assert job.error is None and not job.cancelled, job.error
    assert [s for s, _, _ in _updates(job)] == list(range(stopped + 1, 9))
    rec = core.run_record(prep.run_dir)
    assert rec["resumed_from_step"] == stopped and job.result.record["run_key"] == rec["run_key"]
    assert any(label.endswith("(finished)") for label, _ in core.runs(env["out"]))


def test_the_model_stays_loaded_between_runs(env, monkeypatch):
    fam = core.HeldModel(str(env["model"])).family
    real, loads = fam.load, []

    def counting(ref, dtype):
        loads.append(ref)
        return real(ref, dtype)

    monkeypatch.setattr(fam, "load", counting)
    monkeypatch.setattr(core, "_HELD", {})
    for seed in (21, 22):
        job = _run(core.prepare(_request(env, seed=seed, steps=3, guided_steps=1, opt_iters=1), env["out"]))
        assert job.error is None, job.error
    (held,) = core._HELD.values()
    assert len(loads) == 1 and held.loads == 1
    # on a CPU the held model's memory counts as available: the next run reuses or releases it
    monkeypatch.setattr(core, "_available_host_bytes", lambda: 0)
    assert core._held_bytes() > 0
    assert core.predict_memory(str(env["model"]), core.check_request(_request(env))[1]).device_bytes == \
        core._held_bytes()
    # another model: the held one is let go first, and the new one held
    other = env["root"] / "other-model"
    if not other.exists():
        import shutil

        shutil.copytree(env["model"], other)
    job = _run(core.prepare(_request(env, model=str(other), seed=23, steps=3, guided_steps=1, opt_iters=1),
                            env["out"]))
    assert job.error is None, job.error
    assert len(loads) == 2 and held.components is None and [k[0] for k in core._HELD] == [str(other)]


def _rewrite_weights(model: Path) -> None:
    """The model's transformer weights changed in place (same path, same names), as a new checkpoint copied over."""
    from safetensors.torch import load_file, save_file

    (path,) = (model / "transformer").glob("*.safetensors")
    weights = load_file(path)
    save_file({k: v + 1 for k, v in weights.items()}, path)


def test_a_model_rewritten_in_place_is_another_model(env, tmp_path, monkeypatch):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(env["model"], model)
    monkeypatch.setattr(core, "_HELD", {})
    before = core.prepare(_request(env, model=str(model)), tmp_path / "out")
    held = core.held_model(str(model), before.opts)
    assert core.held_model(str(model), before.opts) is held  # unchanged: the same held model
    _rewrite_weights(model)
    after = core.prepare(_request(env, model=str(model)), tmp_path / "out")
    # another run folder (the old one holds a run of the old weights, which transfer would refuse to resume)
    assert after.run_dir != before.run_dir
    again = core.held_model(str(model), after.opts)  # and not the stale weights: loaded anew
    assert again is not held and list(core._HELD.values()) == [again]


def test_a_run_that_cannot_resume_starts_over_from_the_list(env, tmp_path, monkeypatch):
    import shutil

    model, out = tmp_path / "model", tmp_path / "out"
    shutil.copytree(env["model"], model)
    monkeypatch.setattr(core, "_HELD", {})
    prep = core.prepare(_request(env, model=str(model), steps=3, guided_steps=1, opt_iters=1), out)
    core.save_request(prep)
    assert _run(prep).error is None
    old_key = core.run_record(prep.run_dir)["run_key"]
    _rewrite_weights(model)
    # resuming the listed run with other weights: transfer refuses, and deletes nothing
    job = _run(core.listed_run(out, str(prep.run_dir)))
    assert job.error and "--fresh" in job.error, job.error
    assert core.run_record(prep.run_dir)["run_key"] == old_key
    over = core.listed_run(out, str(prep.run_dir), start_over=True)
    assert over.opts.fresh and "fresh" not in over.request["options"]
    core.save_request(over)
    job = _run(over)
    assert job.error is None, job.error
    assert core.run_record(prep.run_dir)["run_key"] != old_key
    # the kept request does not start over again when the run is resumed later
    assert core.load_request(prep.run_dir).opts == prep.opts
    with pytest.raises(ValueError, match="not a run listed under --out"):
        core.listed_run(out, str(tmp_path), start_over=True)  # a folder a client names: refused before anything
    with pytest.raises(ValueError, match="pick a run first"):
        core.listed_run(out, None)


def test_finished_run_results(env):
    prep = core.prepare(_request(env, method="DiTFlow (emb)"), env["out"])
    job = _run(prep)
    assert job.error is None, job.error
    rec = core.run_record(prep.run_dir)
    assert Path(rec["result"]).is_file() and (prep.run_dir / "amf" / "amf.html").is_file()
    ref = core.reference_clip(prep.run_dir)
    from ditflow_fast.video_io import read_video

    assert read_video(ref).shape == (9, 48, 64, 3)
    mf = core.motion_fidelity(prep.run_dir)
    pytest.importorskip("cv2")
    assert -1 <= mf["motion_fidelity"] <= 1 and mf["frames"] == 9
    assert core.motion_fidelity(prep.run_dir) == mf  # cached in the run folder
    z = core.zip_run(prep.run_dir, env["out"])
    names = zipfile.ZipFile(z).namelist()
    top = prep.run_dir.name
    for f in ("result.mp4", "config.json", "amf/amf.html", "state.safetensors"):
        assert f"{top}/{f}" in names
    assert any(n.startswith(f"{top}/embeds/") for n in names)
    # zero-shot from it: the emb run is offered, and its embeddings run
    offered = core.emb_runs(env["out"])
    assert offered and offered[0][1] == rec["embeddings"]
    sources = [env["samples"]["moving square (81 frames)"], env["model"] / "prompt_embeds.safetensors"]
    zs = core.prepare(_request(env, method=core.ZERO_SHOT, inject_embeds=offered[0][1]), env["out"], sources=sources)
    assert zs.run_dir.name.startswith("zeroshot-")
    job = _run(zs)
    assert job.error is None, job.error
    assert core.run_record(zs.run_dir)["config"]["inject_embeds"] == rec["embeddings"]


def _uploads(tmp_path) -> Path:
    """A stand-in for gradio's upload folder, with an uploaded clip."""
    uploads = tmp_path / "uploads"
    (uploads / "one").mkdir(parents=True)
    (uploads / "one" / "clip.mp4").write_bytes(b"an uploaded clip")
    return uploads


def test_zero_shot_takes_only_a_listed_emb_run(env, tmp_path, monkeypatch):
    uploads, out = _uploads(tmp_path), tmp_path / "out"
    elsewhere = tmp_path / "elsewhere"  # any server folder a client names
    elsewhere.mkdir()
    (elsewhere / "big.bin").write_bytes(b"x" * 1000)
    read = []
    real = core._file_digest
    monkeypatch.setattr(core, "_file_digest", lambda p: read.append(p) or real(p))
    r = core.Request(model=str(env["model"]), video=str(uploads / "one" / "clip.mp4"), method=core.ZERO_SHOT,
                     inject_embeds=str(elsewhere))
    with pytest.raises(ValueError, match="--inject-embeds: not the embeddings of a finished DiTFlow"):
        core.prepare(r, out, sources=[uploads])
    assert read == [] and not out.exists()  # refused before anything is hashed or copied


@pytest.mark.parametrize("field, option", [("video", "--video"), ("prompt_embeds", "--prompt-embeds"),
                                           ("image", "--image")])
def test_an_upload_is_a_file_not_a_folder(tmp_path, field, option):
    uploads, out = _uploads(tmp_path), tmp_path / "out"
    for folder in (uploads / "one", uploads):  # a folder in the upload folder, and the upload folder itself
        r = core.Request(model="m", prompt="p", **{"video": str(uploads / "one" / "clip.mp4"), field: str(folder)})
        with pytest.raises(ValueError, match=f"^{option}: a folder; the app takes an uploaded file"):
            core.prepare(r, out, sources=[uploads])
        assert not out.exists()


def test_a_failed_run_keeps_the_inputs_its_saved_steps_resume_from(tmp_path):
    uploads, out = _uploads(tmp_path), tmp_path / "out"
    prep = core.prepare(core.Request(model="m", prompt="p", video=str(uploads / "one" / "clip.mp4")), out,
                        sources=[uploads])
    (copy,) = prep.made
    core.save_request(prep)
    (prep.run_dir / "state.safetensors").write_bytes(b"saved steps")  # the run saved steps, then failed
    core.discard(prep)
    assert copy.is_file() and prep.run_dir.is_dir()  # "Resume / show" still has the video it needs
    assert core.load_request(prep.run_dir).inputs["video"] == str(copy)
    # a refused request (nothing saved): no run folder, no input copy
    (uploads / "one" / "clip.mp4").write_bytes(b"another clip")
    refused = core.prepare(core.Request(model="m", prompt="p", video=str(uploads / "one" / "clip.mp4")), out,
                           sources=[uploads])
    (other,) = refused.made
    core.save_request(refused)
    core.discard(refused)
    assert not other.exists() and not refused.run_dir.exists() and copy.is_file()


@pytest.mark.parametrize("kw, msg", [
    (dict(frames=10), "--frames 10: "),                     # the CLI's message, word for word
    (dict(video="/nonexistent/clip.mp4"), "--video /nonexistent/clip.mp4: no such file or folder"),
    (dict(prompt_embeds=None), "--prompt is required (or --prompt-embeds FILE)"),
])
def test_bad_input_gives_the_cli_message(env, kw, msg, capsys):
    prep = core.prepare(_request(env, **kw), env["out"])
    job = _run(prep)
    assert job.error is not None and msg in job.error and "Traceback" not in job.error
    cli = main(["transfer", *cli_argv(prep)])
    assert cli == 2 and job.error in capsys.readouterr().err


def test_app_cli_arguments(tmp_path, monkeypatch, capsys):
    assert main(["app", "--port", "70000"]) == 2
    assert "--port must be in 0..65535" in capsys.readouterr().err
    assert main(["app", "--gpu-memory", "0"]) == 2
    assert "--gpu-memory must be positive" in capsys.readouterr().err
    for bad in ("lots", "1.5gb", "0mb", "-1kb"):
        assert main(["app", f"--max-upload={bad}"]) == 2
        assert f"--max-upload must be a positive size such as 500mb or 2gb, got '{bad}'" in capsys.readouterr().err
    import builtins

    real = builtins.__import__

    def no_gradio(name, *a, **kw):
        if name == "gradio":
            raise ImportError("No module named 'gradio'")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_gradio)
    assert main(["app", "--out", str(tmp_path / "o")]) == 2
    assert "pip install -e '.[app]'" in capsys.readouterr().err


def test_app_passes_the_upload_limit_to_gradio(tmp_path, monkeypatch):
    pytest.importorskip("gradio")
    from ditflow_fast.app import ui

    got = {}
    monkeypatch.setattr(ui, "build", lambda out, **kw: "demo")
    monkeypatch.setattr(ui, "launch", lambda demo, **kw: got.update(kw))
    assert main(["app", "--out", str(tmp_path / "o"), "--max-upload", "200MB"]) == 0
    assert got["max_upload"] == 200 * 2 ** 20
    assert main(["app", "--out", str(tmp_path / "o")]) == 0
    assert got["max_upload"] == 2 ** 30  # the default, 1gb


def test_request_file_round_trip(env):
    prep = core.prepare(_request(env, seed=7), env["out"])
    core.save_request(prep)
    got = json.loads((prep.run_dir / core.REQUEST_FILE).read_text())
    assert {k: got[k] for k in ("inputs", "options")} == prep.request
    assert got["options"] == {**FAST, "seed": 7, **core.TINY_SIZE}  # the options given, not the defaults
    assert set(got["inputs"]) == set(core.INPUTS)
    assert core.load_request(prep.run_dir).request == prep.request
    with pytest.raises(ValueError, match="not a run this app started"):
        core.load_request(env["out"] / "runs" / "nothing-here")
    tiny_size = (tiny.FRAMES, tiny.HEIGHT, tiny.WIDTH)
    assert tiny_size == tuple(core.TINY_SIZE.values())


INPUTS = {"video": "v.mp4", "prompt": "p", "negative_prompt": "", "prompt_embeds": None, "model": "m"}


@pytest.mark.parametrize("record", [
    None, "not json", '["a list"]', '{"time": 1}',
    '{"argv": ["--model", "m", "--video", "v.mp4", "--prompt", "p"]}',  # written by the app before the API
    json.dumps({"inputs": INPUTS, "options": {"frames": "nine"}}),  # TransferOptions refuses it
    json.dumps({"inputs": INPUTS, "options": {"colour": "red"}}),
    json.dumps({"inputs": {**INPUTS, "model": ""}, "options": {}}),
    json.dumps({"inputs": {"video": "v.mp4"}, "options": {}}),
    json.dumps({"inputs": INPUTS, "options": []}),
])
def test_resume_list_skips_folders_without_a_valid_request(tmp_path, record):
    inputs, opts = core.check_request(core.Request(video="v.mp4", model="m", prompt="p"))
    good = core.Prepared(inputs, opts, tmp_path / "runs" / "latent-good")
    core.save_request(good)
    bad = tmp_path / "runs" / "latent-0123456789ab"
    bad.mkdir()
    if record is not None:
        (bad / core.REQUEST_FILE).write_text(record)
    assert [path for _, path in core.runs(tmp_path)] == [str(good.run_dir)]
    with pytest.raises(ValueError, match="not a run this app started"):
        core.load_request(bad)


def test_the_app_imports_no_command_line_no_toy_world_no_argparse():
    """The app is a layer on the library (``transfer_api``): the command line and the toy world are
    applications beside it, and its fields are checked by ``TransferOptions``, not by a parser."""
    banned = ("ditflow_fast.cli", "ditflow_fast.toyworld", "argparse")
    found = []
    for path in sorted(Path(ditflow_fast.app.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ["ditflow_fast", "app"][:3 - node.level] if node.level else []
                mod = ".".join([*base, *([node.module] if node.module else [])])
                names = [mod, *(f"{mod}.{a.name}" for a in node.names)]  # `from .. import cli` names ..cli
            else:
                continue
            found += [f"{path.name}:{node.lineno} {n}" for n in names if any(n == b or n.startswith(b + ".")
                                                                              for b in banned)]
    assert not found, found
