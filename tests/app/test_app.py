"""``ditflow-fast app``'s logic without a browser (``ditflow_fast.app.core``; gradio not needed): the page's
fields become transfer's own arguments, run folders are named by their inputs, the dry-run memory and its
refusal, a run stopped part-way resumes, bad inputs give the CLI's messages, results, the zip."""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import pytest

from ditflow_fast.app import core
from ditflow_fast.cli.main import main
from ditflow_fast.families.cogvideox import tiny

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


def test_fields_become_transfer_arguments(env):
    r = core.Request(video="v.mp4", prompt=" a cat ", model="THUDM/CogVideoX-5b", method="DiTFlow (emb)",
                     frames="49", height=None, width="", cfg="6", guidance_block="", injection=False,
                     dtype="auto", device="auto", offload="group", seed=3)
    argv = core.request_argv(r)
    ns = core.transfer_namespace([*argv, "--out", "o"])
    assert (ns.video, ns.prompt, ns.model, ns.opt_mode, ns.loss, ns.frames, ns.height, ns.width, ns.cfg) == \
        ("v.mp4", "a cat", "THUDM/CogVideoX-5b", "emb", "flow", 49, None, None, 6.0)
    assert (ns.no_injection, ns.dtype, ns.device, ns.offload, ns.seed, ns.guidance_block) == \
        (True, None, None, "group", 3, None)
    # the page's defaults are the paper's, as transfer has them: 10 guided steps, 5 iterations, steps the model's
    d = core.transfer_namespace(core.request_argv(core.Request(model="m")) + ["--out", "o"])
    cli = core.transfer_namespace(["--model", "m", "--out", "o"])
    assert vars(d) == vars(cli)
    assert (d.guided_steps, d.opt_iters, d.opt_mode, d.loss, d.no_guidance) == (10, 5, "latent", "flow", False)
    # every method, as the CLI spells it
    want = {"DiTFlow (latent)": ("latent", "flow", False), "DiTFlow (emb)": ("emb", "flow", False),
            "MOFT": ("latent", "moft", False), "SMM": ("latent", "smm", False), "No guidance": ("latent", "flow", True)}
    for method, (mode, loss, noguide) in want.items():
        ns = core.transfer_namespace(core.request_argv(core.Request(model="m", method=method)) + ["--out", "o"])
        assert (ns.opt_mode, ns.loss, ns.no_guidance, ns.inject_embeds) == (mode, loss, noguide, None), method
    ns = core.transfer_namespace(core.request_argv(core.Request(model="m", method=core.ZERO_SHOT,
                                                                inject_embeds="runs/x/embeds")) + ["--out", "o"])
    assert (ns.opt_mode, ns.inject_embeds) == ("emb", "runs/x/embeds")


@pytest.mark.parametrize("kw, msg", [
    (dict(method=core.ZERO_SHOT), "--inject-embeds is required for zero-shot"),
    (dict(method="DiTFlow++"), "method must be one of"),
    (dict(model=" "), "--model is required"),
    (dict(frames="nine"), "--frames must be an integer, got 'nine'"),
    (dict(steps=2.5), "--steps must be an integer, got 2.5"),
    (dict(cfg="high"), "--cfg must be a number, got 'high'"),
    (dict(dtype="float8"), "argument --dtype: invalid choice: 'float8'"),
])
def test_bad_fields_are_refused_with_a_message(kw, msg):
    r = core.Request(**{"model": "m", **kw})
    with pytest.raises((ValueError, TypeError), match=msg.replace("+", r"\+")):
        core.transfer_namespace(core.request_argv(r) + ["--out", "o"])


def test_run_folder_is_named_by_the_inputs(env, tmp_path):
    a = core.prepare(_request(env), env["out"])
    b = core.prepare(_request(env), env["out"])
    assert a.run_dir == b.run_dir and a.run_dir.parent == env["out"] / "runs"
    assert a.run_dir.name.startswith("latent-")
    assert Path(a.namespace.video).parent == env["out"] / "inputs"  # the upload is copied: it survives a restart
    assert core.prepare(_request(env, seed=1), env["out"]).run_dir != a.run_dir
    assert core.prepare(_request(env, method="SMM"), env["out"]).run_dir.name.startswith("smm-")
    # the same bytes under another name: the same folder; other bytes under the same name: another
    copy = tmp_path / "renamed.mp4"
    copy.write_bytes(Path(env["samples"]["moving square (81 frames)"]).read_bytes())
    assert core.prepare(_request(env, video=str(copy)), env["out"]).run_dir == a.run_dir
    toy = next(p for k, p in env["samples"].items() if k.startswith("toy"))
    copy.write_bytes(Path(toy).read_bytes())
    assert core.prepare(_request(env, video=str(copy)), env["out"]).run_dir != a.run_dir


def test_memory_prediction_and_refusal(env):
    prep = core.prepare(_request(env), env["out"])
    assert core.total_steps(prep.namespace) == FAST["steps"]
    default = core.prepare(_request(env, steps=None), env["out"])
    assert core.total_steps(default.namespace) == 50  # the model's default, resolved as transfer does
    mem = core.predict_memory(prep.namespace)
    assert "predicted peak" in mem.table and mem.peak_bytes is not None and mem.peak_bytes > 0
    assert mem.fits and "no GPU limit" in mem.message()  # this machine runs it on the CPU
    small = core.predict_memory(prep.namespace, gpu_memory_gib=0.001)
    assert not small.fits
    assert small.message().startswith("Refused: the predicted peak GPU memory")
    assert core.predict_memory(prep.namespace, gpu_memory_gib=1000).fits
    # the dry run's own checks are the CLI's
    bad = core.prepare(_request(env, frames=10), env["out"])
    with pytest.raises(ValueError, match="--frames 10"):
        core.predict_memory(bad.namespace)


def test_run_stopped_part_way_resumes(env):
    prep = core.prepare(_request(env, steps=8, guided_steps=8, opt_iters=3), env["out"])
    core.save_request(prep)
    job = core.Job(prep).start()
    t0 = time.time()
    while core.read_progress(prep.run_dir)[0] < 2 and not job.done.is_set() and time.time() - t0 < 240:
        time.sleep(0.02)
    job.stop()  # what closing the page does
    assert job.done.wait(120)
    assert job.cancelled and job.error is None
    stopped, losses = core.read_progress(prep.run_dir)
    assert 2 <= stopped < 8 and len(losses) == stopped
    assert core.run_record(prep.run_dir) is None
    assert any("stopped at step" in label for label, _ in core.runs(env["out"]))
    again = core.load_request(prep.run_dir)  # as after a restart: from the folder's app_request.json
    assert again.argv == prep.argv
    job = _run(again)
    assert job.error is None and not job.cancelled, job.error
    rec = core.run_record(prep.run_dir)
    assert rec["resumed_from_step"] == stopped
    assert any(label.endswith("(finished)") for label, _ in core.runs(env["out"]))


def test_finished_run_results(env):
    prep = core.prepare(_request(env, method="DiTFlow (emb)"), env["out"])
    job = _run(prep)
    assert job.error is None, job.error
    rec = core.run_record(prep.run_dir)
    assert Path(rec["result"]).is_file() and (prep.run_dir / "amf" / "amf.html").is_file()
    ref = core.reference_clip(prep.run_dir)
    from ditflow_fast.video_io import read_video

    assert read_video(ref).shape == (9, 48, 64, 3)
    mf = core.motion_fidelity(prep.run_dir, prep.namespace)
    pytest.importorskip("cv2")
    assert -1 <= mf["motion_fidelity"] <= 1 and mf["frames"] == 9
    assert core.motion_fidelity(prep.run_dir, prep.namespace) == mf  # cached in the run folder
    z = core.zip_run(prep.run_dir, env["out"])
    names = zipfile.ZipFile(z).namelist()
    top = prep.run_dir.name
    for f in ("result.mp4", "config.json", "amf/amf.html", "state.safetensors"):
        assert f"{top}/{f}" in names
    assert any(n.startswith(f"{top}/embeds/") for n in names)
    # zero-shot from it: the emb run is offered, and its embeddings run
    offered = core.emb_runs(env["out"])
    assert offered and offered[0][1] == rec["embeddings"]
    zs = core.prepare(_request(env, method=core.ZERO_SHOT, inject_embeds=offered[0][1]), env["out"])
    assert zs.run_dir.name.startswith("zeroshot-")
    job = _run(zs)
    assert job.error is None, job.error
    assert core.run_record(zs.run_dir)["config"]["inject_embeds"] == rec["embeddings"]


@pytest.mark.parametrize("kw, msg", [
    (dict(frames=10), "--frames 10: "),                     # the CLI's message, word for word
    (dict(fps=0), "--fps must be positive, got 0"),
    (dict(video="/nonexistent/clip.mp4"), "--video /nonexistent/clip.mp4: no such file or folder"),
    (dict(prompt_embeds=None), "--prompt is required (or --prompt-embeds FILE)"),
])
def test_bad_input_gives_the_cli_message(env, kw, msg, capsys):
    prep = core.prepare(_request(env, **kw), env["out"])
    job = _run(prep)
    assert job.error is not None and msg in job.error and "Traceback" not in job.error
    cli = main(["transfer", *prep.argv])
    assert cli == 2 and job.error in capsys.readouterr().err


def test_output_capture_is_per_thread():
    import sys
    import threading

    seen = {}

    def other():
        with core.capture_output() as buf:
            print("from the other thread")
            seen["other"] = buf.getvalue()

    with core.capture_output() as buf:
        t = threading.Thread(target=other)
        t.start()
        t.join()
        print("from this thread")
        print("to stderr", file=sys.stderr)
    assert seen["other"] == "from the other thread\n"
    assert buf.getvalue() == "from this thread\nto stderr\n"


def test_app_cli_arguments(tmp_path, monkeypatch, capsys):
    assert main(["app", "--port", "70000"]) == 2
    assert "--port must be in 0..65535" in capsys.readouterr().err
    assert main(["app", "--gpu-memory", "0"]) == 2
    assert "--gpu-memory must be positive" in capsys.readouterr().err
    import builtins

    real = builtins.__import__

    def no_gradio(name, *a, **kw):
        if name == "gradio":
            raise ImportError("No module named 'gradio'")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_gradio)
    assert main(["app", "--out", str(tmp_path / "o")]) == 2
    assert "pip install -e '.[app]'" in capsys.readouterr().err


def test_request_file_round_trip(env):
    prep = core.prepare(_request(env, seed=7), env["out"])
    core.save_request(prep)
    got = json.loads((prep.run_dir / core.REQUEST_FILE).read_text())
    assert got["argv"] == prep.argv and "--out" in got["argv"]
    with pytest.raises(ValueError, match="not a run this app started"):
        core.load_request(env["out"] / "runs" / "nothing-here")
    tiny_size = (tiny.FRAMES, tiny.HEIGHT, tiny.WIDTH)
    assert tiny_size == tuple(core.TINY_SIZE.values())


@pytest.mark.parametrize("record", [None, "not json", '["a list"]', '{"argv": ["--frames", "nine"]}',
                                    '{"argv": "--model m"}', '{"time": 1}'])
def test_resume_list_skips_folders_without_a_valid_request(tmp_path, record):
    run_dir = tmp_path / "runs" / "latent-good"
    argv = [*core.request_argv(core.Request(video="v.mp4", model="m", prompt="p")), "--out", str(run_dir)]
    good = core.Prepared(argv, core.transfer_namespace(argv), run_dir)
    core.save_request(good)
    bad = tmp_path / "runs" / "latent-0123456789ab"
    bad.mkdir()
    if record is not None:
        (bad / core.REQUEST_FILE).write_text(record)
    assert [path for _, path in core.runs(tmp_path)] == [str(good.run_dir)]
    with pytest.raises(ValueError, match="not a run this app started"):
        core.load_request(bad)
