"""JOBS.jsonl checks and the worker in this process (no Ray needed), batch's imports, and the reference cache
of ``transfer --ref-cache``."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("av")

from ditflow_fast.batch.jobs import JobsError, parse_jobs  # noqa: E402
from ditflow_fast.batch.worker import TransferWorker  # noqa: E402
from ditflow_fast.cli.main import main  # noqa: E402
from ditflow_fast.families.cogvideox import tiny  # noqa: E402
from ditflow_fast.guidance.ref_cache import RefCache, tensor_digest  # noqa: E402
from ditflow_fast.video_io import read_video  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_bad_line_is_reported_with_its_number_before_anything_runs(tmp_path, capsys):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"id": "a", "seeed": 1}\n[1]\n\n{"frames": "x"}\n{oops\n{"opt_mode": "nope"}\n'
                    '{"id": "../x"}\n{"out": "elsewhere"}\n{"id": "ok"}\n{"id": "ok"}\n{"guidance_block": [1, 2]}\n')
    with pytest.raises(JobsError) as err:
        parse_jobs(jobs, {"video": "v.mp4", "prompt": "p"})
    lines = [n for n, _ in err.value.problems]
    assert lines == [1, 2, 4, 5, 6, 7, 8, 10]
    text = str(err.value)
    assert "unknown key 'seeed' (did you mean 'seed'?)" in text and "frames must be a whole number, got 'x'" in text
    assert "opt_mode must be one of ('latent', 'emb'), got 'nope'" in text and "already the id of line 9" in text
    assert "set by the batch" in text
    out = tmp_path / "out"
    assert main(["batch", str(jobs), "--out", str(out), "--video", "v.mp4", "--prompt", "p"]) == 2
    assert "jobs.jsonl:5: not valid JSON" in capsys.readouterr().err and not out.exists()


def test_job_options_are_the_command_line_defaults_overridden_by_the_line(tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"prompt": "a dog", "seed": 3, "no_injection": true, "guidance_block": [1, 2]}\n'
                    '{"id": "second", "video": "other.mp4", "prompt": "a cat"}\n')
    a, b = parse_jobs(jobs, {"video": "v.mp4", "frames": 9, "model": "owner/name"})
    assert (a.id, b.id) == ("job-1", "second")
    assert (a.options["seed"], a.options["no_injection"], a.options["frames"], b.options["frames"]) == (3, True, 9, 9)
    assert a.options["guidance_block"] == [1, 2] and a.model_key == b.model_key == ("owner/name", "")
    assert a.options["video"].endswith("/v.mp4") and a.options["video"].startswith("/")  # made absolute
    with pytest.raises(JobsError, match="no 'prompt'"):
        jobs.write_text('{"video": "v.mp4"}\n')
        parse_jobs(jobs)


def test_a_bad_option_or_input_is_named_by_its_json_key(tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"seed": -1}\n{"grad_reuse": 0}\n{"video": 3}\n{"dtype": 16}\n{"seed": 1}\n')
    with pytest.raises(JobsError) as err:
        parse_jobs(jobs, {"video": "v.mp4", "prompt": "p"})
    problems = dict(err.value.problems)
    assert sorted(problems) == [1, 2, 3, 4]
    assert "seed" in problems[1] and "grad_reuse" in problems[2] and "'video' must be a string" in problems[3]
    assert "'dtype' must be a string" in problems[4] and "--" not in str(err.value)


def test_batch_imports_nothing_from_the_cli_nor_argparse():
    """batch is a layer on ``ditflow_fast.transfer_api``; the command line (``cli/batch.py``) is the layer on it."""
    import ditflow_fast.batch as batch

    for path in sorted(Path(batch.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                assert name != "argparse" and not name.startswith(("..cli", "ditflow_fast.cli")), (path.name, name)


@pytest.mark.parametrize("job_id", ["nl\n", "a\nb", "-x", ".x", "a/b", "manifest.jsonl", ""])
def test_an_id_that_is_not_a_plain_folder_name_is_refused_whole(tmp_path, job_id):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": job_id}) + "\n")
    with pytest.raises(JobsError, match="'id' must be a folder name") as err:
        parse_jobs(jobs, {"video": "v.mp4", "prompt": "p"})
    assert err.value.problems[0][0] == 1


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_cache")
    tiny.write_tiny_assets(root)
    return root


def _args(assets, out, *extra):
    return ["transfer", "--model", str(assets / "model"), "--video", str(assets / "video.mp4"),
            "--prompt-embeds", str(assets / "model" / "prompt_embeds.safetensors"), "--frames", "9",
            "--height", "48", "--width", "64", "--steps", "4", "--guided-steps", "2", "--opt-iters", "2",
            "--out", str(out), "--quiet", "--format", "frames", *extra]


def test_worker_holds_the_model_between_jobs_and_offload_jobs_load_their_own(assets, tmp_path):
    w = TransferWorker("w", threads=1)
    job = {"model": str(assets / "model"), "video": str(assets / "video.mp4"), "frames": 9, "height": 48,
           "width": 64, "steps": 4, "guided_steps": 2, "opt_iters": 2, "format": "frames",
           "prompt_embeds": str(assets / "model" / "prompt_embeds.safetensors")}
    first = w.run("a", job, str(tmp_path / "a"))
    second = w.run("b", job, str(tmp_path / "b"))
    assert (first["ok"], first["model"], second["ok"], second["model"], w.loads) == (True, "loaded", True, "held", 1)
    # the held model, reset after the first job, gives the second exactly the first's frames
    assert np.array_equal(read_video(tmp_path / "a" / "result_frames"), read_video(tmp_path / "b" / "result_frames"))
    record = json.loads((tmp_path / "b" / "config.json").read_text())
    assert second["record"] == {k: record[k] for k in ("result", "seconds", "resumed_from_step", "run_key",
                                                        "ref_cache", "image")}
    off = w.run("off", {**job, "cpu_offload": True}, str(tmp_path / "off"))
    assert (off["ok"], off["model"], w.loads, len(w.models)) == (True, "loaded (offload: not kept)", 2, 1)
    bad = w.run("bad", {**job, "seed": -1}, str(tmp_path / "bad"))
    assert not bad["ok"] and "seed" in bad["error"] and not (tmp_path / "bad").exists()


def test_ref_cache_is_reused_never_trusted_under_another_key_and_changes_nothing(assets, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    cache = tmp_path / "cache"
    assert main(_args(assets, tmp_path / "plain")) == 0
    assert main(_args(assets, tmp_path / "first", "--ref-cache", str(cache))) == 0
    assert main(_args(assets, tmp_path / "second", "--ref-cache", str(cache))) == 0
    rec = [json.loads((tmp_path / d / "config.json").read_text())["ref_cache"] for d in ("first", "second")]
    assert [e["hit"] for e in rec[0]["events"]] == [False, False] and rec[1]["hits"] == 2
    plain = read_video(tmp_path / "plain" / "result_frames")
    for d in ("first", "second"):
        assert np.array_equal(read_video(tmp_path / d / "result_frames"), plain)
    files = sorted(cache.glob("*.safetensors"))
    assert [f.name.split("-")[0] for f in files] == ["latent", "targets"]
    # a file whose stored key differs from the one asked for (a copy, an edit, a collision): not used
    lat = files[0]
    with safe_open(str(lat), framework="pt") as f:
        meta, t = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    save_file({"latent": torch.zeros_like(t["latent"])}, str(lat), metadata={"key": meta["key"].replace("9", "8")})
    files[1].write_bytes(b"damaged")
    assert main(_args(assets, tmp_path / "third", "--ref-cache", str(cache))) == 0
    rec = json.loads((tmp_path / "third" / "config.json").read_text())["ref_cache"]
    assert rec["misses"] == 2
    assert np.array_equal(read_video(tmp_path / "third" / "result_frames"), plain)
    with safe_open(str(lat), framework="pt") as f:  # recomputed and replaced
        assert f.metadata()["key"] == meta["key"] and torch.equal(f.get_tensor("latent"), t["latent"])
    # another seed samples another latent: another key
    assert main(_args(assets, tmp_path / "seed1", "--ref-cache", str(cache), "--seed", "1")) == 0
    assert len(list(cache.glob("latent-*"))) == 2
    assert not list(cache.glob(".*")), "no temporary files left behind"


def test_ref_cache_keys_name_their_inputs(tmp_path):
    c = RefCache(tmp_path, model="m1")
    k1, full = c.key("latent", {"video": "v", "seed": 0})
    assert json.loads(full)["model"] == "m1" and k1 != RefCache(tmp_path, model="m2").key("latent",
                                                                                           {"video": "v", "seed": 0})[0]
    assert k1 != c.key("latent", {"video": "v", "seed": 1})[0]
    calls = []
    got = c.get("latent", {"video": "v"}, lambda: calls.append(1) or {"latent": torch.ones(2)})
    again = c.get("latent", {"video": "v"}, lambda: calls.append(1) or {"latent": torch.zeros(2)})
    assert calls == [1] and torch.equal(got["latent"], again["latent"])
    assert tensor_digest(torch.ones(2, dtype=torch.bfloat16)) != tensor_digest(torch.ones(2))
