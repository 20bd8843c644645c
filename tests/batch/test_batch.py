"""``ditflow-fast batch`` on Ray with 2 CPU workers and the tiny CogVideoX model: a broken video, two
prompts on one reference (cache hits), a worker killed mid-job, a rerun that skips, results equal to
``transfer``'s. Skipped when ray is not importable (``pip install -e '.[cluster]'``)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("av")
pytest.importorskip("ray")

from safetensors.torch import save_file  # noqa: E402

from ditflow_fast.batch.runner import FAULT_ENV  # noqa: E402
from ditflow_fast.cli.main import main  # noqa: E402
from ditflow_fast.families.cogvideox import tiny  # noqa: E402
from ditflow_fast.video_io import read_video, write_video  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

COMMON = ["--frames", "9", "--height", "48", "--width", "64", "--steps", "6", "--guided-steps", "2",
          "--opt-iters", "2", "--threads", "1", "--format", "frames"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_batch")
    tiny.write_tiny_assets(root)
    (root / "broken.mp4").write_bytes(b"this is not a video")
    # another prompt, the same negative (so the same empty-prompt embedding, which the reference pass uses)
    other = {"prompt": tiny.tiny_prompt_embeds(seed=7)["prompt"], "negative": tiny.tiny_prompt_embeds()["negative"]}
    save_file(other, str(root / "other_prompt.safetensors"))
    return root


def _transfer(assets, out, embeds, *extra):
    rc = main(["transfer", "--model", str(assets / "model"), "--video", str(assets / "video.mp4"),
               "--prompt-embeds", str(embeds), "--out", str(out), "--quiet", *COMMON, *extra])
    assert rc == 0
    return read_video(out / "result_frames")


def _manifest(out):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_batch_failures_cache_killed_worker_rerun(assets, tmp_path, monkeypatch, capsys):
    out = tmp_path / "batch"
    prompt, other = assets / "model" / "prompt_embeds.safetensors", assets / "other_prompt.safetensors"
    # The transfer runs to compare with; the first one fills the batch's reference cache.
    ref_a = _transfer(assets, tmp_path / "t_a", prompt, "--ref-cache", str(out / ".ref_cache"))
    ref_b = _transfer(assets, tmp_path / "t_b", other)
    b_video = tmp_path / "b.mp4"  # the same video under another path: changed at the end
    b_video.write_bytes((assets / "video.mp4").read_bytes())
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join(json.dumps(j) for j in [
        {"id": "a"},
        {"id": "broken", "video": str(assets / "broken.mp4")},
        {"id": "b", "prompt_embeds": str(other), "video": str(b_video)},
        {"id": "killed"},  # the same job as "a": its worker is killed after step 2 of 6
    ]) + "\n")
    monkeypatch.setenv(FAULT_ENV, "killed:2")
    argv = ["batch", str(jobs), "--out", str(out), "--workers", "2", "--quiet", "--model", str(assets / "model"),
            "--video", str(assets / "video.mp4"), "--prompt-embeds", str(prompt), *COMMON]
    assert main(argv) == 1  # one job failed
    table = capsys.readouterr().out
    assert "3 done, 1 failed" in table and "VideoError" in table

    recs = _manifest(out)
    final = {r["id"]: r for r in recs if r.get("event") in ("done", "failed")}
    assert {k: r["event"] for k, r in final.items()} == {"a": "done", "b": "done", "killed": "done",
                                                         "broken": "failed"}
    assert "cannot decode it as a video" in final["broken"]["error"]
    assert not (out / "broken" / "config.json").exists()
    # one reference, two prompts: both found the reference latent and targets in the cache
    for k in ("a", "b"):
        assert final[k]["cache"] == {"latent": "hit", "targets": "hit"}, (k, final[k]["cache"])
    # resumed after the guided steps: the targets are not needed any more
    assert final["killed"]["cache"] == {"latent": "hit"}
    # the killed worker: its job went back to the queue and another worker resumed it after step 2
    died = [r for r in recs if r.get("event") == "worker-died"]
    assert [r["id"] for r in died] == ["killed"]
    assert final["killed"]["worker"] != died[0]["worker"] and final["killed"]["attempt"] == 2
    assert final["killed"]["resumed_from_step"] == 2
    # a worker loads the model once, however many jobs it runs (the in-process test counts the reuse itself)
    loaded = [r["worker"] for r in final.values() if r["model"] == "loaded"]
    assert len(loaded) == len(set(loaded)) and {r["model"] for k, r in final.items() if k != "broken"} <= {"loaded",
                                                                                                          "held"}
    # results identical to transfer's, whether interrupted or not
    for k, ref in (("a", ref_a), ("b", ref_b), ("killed", ref_a)):
        assert np.array_equal(read_video(out / k / "result_frames"), ref), k
    cfg = json.loads((out / "b" / "config.json").read_text())
    assert cfg["run_key"] == json.loads((tmp_path / "t_b" / "config.json").read_text())["run_key"]

    # the same command again: nothing runs (no Ray even), the finished jobs are skipped, the broken one
    # is reported from the earlier run (its inputs did not change), the exit status still says so
    monkeypatch.delenv(FAULT_ENV)
    t0 = time.time()
    assert main(argv) == 1
    assert time.time() - t0 < 10
    table = capsys.readouterr().out
    assert "0 done, 1 failed, 3 skipped" in table and "(earlier run) VideoError" in table
    assert _manifest(out)[-1]["event"] == "skipped"

    # b's video changes at the same path: b runs again (not skipped); transfer refuses its folder, which
    # holds the first video's run, and the batch says why and what to do; --fresh-changed starts it over
    first_key = json.loads((out / "b" / "config.json").read_text())["run_key"]
    write_video(read_video(b_video)[::-1].copy(), b_video)
    assert main(argv) == 1
    assert "0 done, 2 failed, 2 skipped" in capsys.readouterr().out
    last = _manifest(out)[-1]
    assert last["id"] == "b" and last["event"] == "failed" and last["stale"] is True
    assert "holds a run with other video" in last["error"] and "--fresh-changed" in last["error"]
    assert main([*argv, "--fresh-changed"]) == 1  # the broken one still fails
    assert "1 done, 1 failed, 2 skipped" in capsys.readouterr().out
    cfg = json.loads((out / "b" / "config.json").read_text())
    fresh_run = json.loads((out / "a" / "config.json").read_text())["resumed_from_step"]  # never interrupted
    assert cfg["run_key"] != first_key and cfg["resumed_from_step"] == fresh_run


def test_batch_stderr_has_no_ray_token_auth_notice(assets, tmp_path):
    """Ray 2.60 announces its default token authentication on every start; batch keeps its stderr to its own
    messages (the auth mode is Ray's, unchanged)."""
    import os
    import subprocess
    import sys

    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": "broken", "video": str(assets / "broken.mp4")}) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    proc = subprocess.run([sys.executable, "-m", "ditflow_fast.cli", "batch", str(jobs), "--out", str(tmp_path / "o"),
                           "--quiet", "--model", str(assets / "model"), "--prompt-embeds",
                           str(assets / "model" / "prompt_embeds.safetensors"), *COMMON],
                          capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 1 and "0 done, 1 failed" in proc.stdout, proc.stderr
    assert "Token authentication" not in proc.stderr and "RAY_AUTH_MODE" not in proc.stderr, proc.stderr


def test_batch_and_transfer_work_when_run_in_the_checkout(assets, tmp_path):
    """Run from the checkout's root, where kernels/ once shadowed the `kernels` package transformers imports
    and every job failed with a blamed config (tests/test_kernels_name.py has the import itself)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": "good", "video": str(assets / "video.mp4")}) + "\n")
    model = ["--model", str(assets / "model"), "--prompt-embeds", str(assets / "model" / "prompt_embeds.safetensors")]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    for argv in (["batch", str(jobs), "--out", str(tmp_path / "b")],
                 ["transfer", "--video", str(assets / "video.mp4"), "--out", str(tmp_path / "t")]):
        proc = subprocess.run([sys.executable, "-m", "ditflow_fast.cli", *argv, "--quiet", *model, *COMMON],
                              cwd=root, capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, (argv[0], proc.stdout[-2000:], proc.stderr[-2000:])
    assert (tmp_path / "b" / "good" / "result_frames").is_dir() and (tmp_path / "t" / "result_frames").is_dir()
