"""``image`` in batch jobs (image-to-video): checked with the other fields before anything runs (a missing or
unreadable image, an image-to-video model's job without one: named by job and field, nothing loaded, no record
lost), passed to the transfer, recorded; one Ray batch on the tiny CogVideoX (first-frame anchoring) gives what
``ditflow_fast.transfer(..., image=...)`` gives."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("av")

from PIL import Image  # noqa: E402

import ditflow_fast  # noqa: E402
from ditflow_fast.batch import runner  # noqa: E402
from ditflow_fast.batch.jobs import JobsError, parse_jobs  # noqa: E402
from ditflow_fast.batch.worker import TransferWorker  # noqa: E402
from ditflow_fast.cli.main import main  # noqa: E402
from ditflow_fast.families.cogvideox import tiny  # noqa: E402
from ditflow_fast.transfer_api import HeldModel  # noqa: E402
from ditflow_fast.video_io import read_video  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
OPTS = dict(frames=9, height=48, width=64, steps=4, guided_steps=2, opt_iters=2, seed=3)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_batch_image")
    tiny.write_tiny_assets(root)
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(root / "first.png")
    (root / "junk.png").write_bytes(b"not a png")
    return root


def _base(assets) -> dict:
    return {"model": str(assets / "model"), "video": str(assets / "video.mp4"),
            "prompt_embeds": str(assets / "model" / "prompt_embeds.safetensors")}


@pytest.fixture
def i2v(monkeypatch):
    """The tiny CogVideoX taken for an image-to-video model (no I2V family is registered yet); loading it fails."""
    from ditflow_fast.families import CogVideoXFamily

    monkeypatch.setattr(CogVideoXFamily, "image_model", staticmethod(lambda config: True))

    def no_load(self, dtype):
        raise AssertionError("a model was loaded for a job that should have been refused")

    monkeypatch.setattr(HeldModel, "load", no_load)


def test_a_bad_image_is_named_by_job_and_field_before_anything_runs(assets, tmp_path, monkeypatch):
    monkeypatch.chdir(assets)  # relative paths: resolved against the current folder, as the video's are
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join(json.dumps(j) for j in [
        {"id": "ok", "image": "first.png"},
        {"id": "missing", "image": "nowhere.png"},
        {"id": "folder", "image": "model"},
        {"id": "junk", "image": "junk.png"},
        {"id": "number", "image": 3},
    ]) + "\n")
    with pytest.raises(JobsError) as err:
        parse_jobs(jobs, _base(assets))
    problems = dict(err.value.problems)
    assert sorted(problems) == [2, 3, 4, 5]
    assert problems[2] == f"job 'missing': 'image' {assets / 'nowhere.png'}: no such file"
    assert problems[3].startswith("job 'folder': 'image'") and "a folder" in problems[3]
    assert problems[4].startswith("job 'junk': 'image'") and "not a readable image" in problems[4]
    assert problems[5] == "'image' must be a string, got 3"
    jobs.write_text(json.dumps({"id": "ok", "image": "first.png"}) + "\n")
    (job,) = parse_jobs(jobs, _base(assets))
    assert job.options["image"] == str(assets / "first.png")  # made absolute: workers may run elsewhere
    assert "image" in runner._inputs_stamp(job)  # a changed image file: the job runs again, not skipped
    other = parse_jobs(jobs, {**_base(assets), "image": "junk.png"})[0]  # the line's image beats the default
    assert other.options["image"] == job.options["image"] and other.fingerprint == job.fingerprint
    plain = parse_jobs(_write(tmp_path, {"id": "ok"}), _base(assets))[0]
    assert plain.fingerprint != job.fingerprint


def _write(tmp_path, *lines) -> str:
    path = tmp_path / "more.jsonl"
    path.write_text("".join(json.dumps(j) + "\n" for j in lines))
    return str(path)


def test_an_image_to_video_jobs_without_an_image_are_refused_and_no_record_is_lost(assets, tmp_path, i2v, capsys):
    out = tmp_path / "out"
    out.mkdir()
    manifest = out / runner.MANIFEST
    manifest.write_text(json.dumps({"event": "done", "id": "earlier", "fingerprint": "x"}) + "\n")
    before = manifest.read_bytes()
    jobs = _write(tmp_path, {"id": "no-image"}, {"id": "with-image", "image": str(assets / "first.png")})
    with pytest.raises(JobsError) as err:
        parse_jobs(jobs, _base(assets))
    assert err.value.problems == [(1, f"job 'no-image': 'image' is required: {assets / 'model'} is an "
                                      "image-to-video model")]
    argv = ["batch", jobs, "--out", str(out), "--quiet", *sum(([f"--{k.replace('_', '-')}", v]
                                                               for k, v in _base(assets).items()), [])]
    assert main(argv) == 2  # a bad JOBS file: nothing runs
    assert "job 'no-image': 'image' is required" in capsys.readouterr().err
    assert manifest.read_bytes() == before and sorted(p.name for p in out.iterdir()) == [runner.MANIFEST]
    # the image as the batch's default: every job has one
    assert [j.id for j in parse_jobs(jobs, {**_base(assets), "image": str(assets / "first.png")})] == [
        "no-image", "with-image"]


def test_a_worker_refuses_an_image_to_video_job_without_an_image_before_loading(assets, tmp_path, i2v):
    """A model the driver does not look into (a hub id): the worker's run refuses the job before loading it."""
    w = TransferWorker("w", threads=1)
    res = w.run("no-image", {**_base(assets), **OPTS}, str(tmp_path / "no-image"))
    assert not res["ok"] and "--image is required" in res["error"] and "image-to-video" in res["error"]
    assert w.loads == 0 and res["model"] is None and not (tmp_path / "no-image").exists()


def test_a_ray_batch_with_an_image_equals_the_api(assets, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    image = assets / "first.png"
    want = ditflow_fast.transfer(str(assets / "model"), str(assets / "video.mp4"), image=str(image),
                                 prompt_embeds=str(assets / "model" / "prompt_embeds.safetensors"), **OPTS)
    monkeypatch.chdir(assets)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": "img", "image": "first.png", "video": "video.mp4"}) + "\n")
    out = tmp_path / "out"
    argv = ["batch", str(jobs), "--out", str(out), "--quiet", "--workers", "1", "--no-ref-cache",
            "--model", str(assets / "model"), "--prompt-embeds", str(assets / "model" / "prompt_embeds.safetensors"),
            "--threads", "1", "--format", "frames", *sum(([f"--{k.replace('_', '-')}", str(v)]
                                                          for k, v in OPTS.items()), [])]
    assert main(argv) == 0
    np.testing.assert_array_equal(read_video(out / "img" / "result_frames"), want.frames)
    rec = json.loads((out / "img" / "config.json").read_text())
    assert rec["image"] == want.record["image"] and rec["image"].startswith("first-frame anchoring")
    assert rec["run_key"] == want.record["run_key"] and "image" in rec["run_key_parts"]
    done = [json.loads(line) for line in (out / runner.MANIFEST).read_text().splitlines()][-1]
    assert done["event"] == "done" and done["image"] == {"path": str(image), "conditioning": rec["image"]}
    assert done["inputs"]["image"] == [image.stat().st_size, image.stat().st_mtime_ns]
    assert main(argv) == 0  # the same batch again: skipped (no Ray), the image unchanged
    assert json.loads((out / runner.MANIFEST).read_text().splitlines()[-1])["done"] == ["img"]
