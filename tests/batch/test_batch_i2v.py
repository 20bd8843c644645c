"""``ditflow-fast batch`` on Ray with one job of each tiny image-to-video pipeline (CogVideoX-5B-I2V, 1.5-I2V,
Wan2.1-I2V, Wan2.2-I2V-A14B, Wan2.2-TI2V-5B): each takes its image, writes exactly the frames asked and records how
it took the image; a real I2V model's job without an image is refused up front, before any job runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("av")
pytest.importorskip("ray")

from PIL import Image  # noqa: E402

from ditflow_fast.cli.main import main  # noqa: E402
from ditflow_fast.families.cogvideox import tiny as cog_tiny  # noqa: E402
from ditflow_fast.families.wan import tiny as wan_tiny  # noqa: E402
from ditflow_fast.video_io import read_video, write_video  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
# job -> (folder writer, height, width)
KINDS = {
    "cog_i2v": (lambda p: cog_tiny.save_tiny_model(p, i2v=True), 48, 64),
    "cog15_i2v": (lambda p: cog_tiny.save_tiny_model(p, v15=True, i2v=True), 48, 64),
    "wan21": (lambda p: wan_tiny.save_tiny_wan_i2v(p, "wan21"), 48, 80),
    "a14b": (lambda p: wan_tiny.save_tiny_wan_i2v(p, "a14b"), 48, 80),
    "ti2v": (lambda p: wan_tiny.save_tiny_wan_i2v(p, "ti2v"), 64, 96),
}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch_i2v")
    write_video(cog_tiny.moving_square(frames=9, height=64, width=96), root / "video.mp4")
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(root / "first.png")
    for name, (write, _, _) in KINDS.items():
        write(root / name)
    return root


def _job(assets, name, **more):
    _, h, w = KINDS[name]
    return {"id": name, "model": str(assets / name), "video": str(assets / "video.mp4"), "height": h, "width": w,
            "prompt_embeds": str(assets / name / "prompt_embeds.safetensors"), **more}


def test_one_batch_runs_a_job_of_each_i2v_kind(assets, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps(_job(assets, n, image=str(assets / "first.png"))) + "\n" for n in KINDS))
    assert main(["batch", str(jobs), "--out", str(tmp_path / "out"), "--quiet", "--frames", "9", "--steps", "3",
                 "--guided-steps", "1", "--opt-iters", "1", "--threads", "1", "--format", "frames"]) == 0
    for name, (_, h, w) in KINDS.items():
        assert read_video(tmp_path / "out" / name / "result_frames").shape == (9, h, w, 3), name
        record = json.loads((tmp_path / "out" / name / "config.json").read_text())
        want = "clean first frame" if name == "ti2v" else "image inputs of the image-to-video model"
        assert record["image"] == want and "image" in record["run_key_parts"], name


def test_an_i2v_job_without_an_image_is_refused_before_any_job_runs(assets, tmp_path, capsys):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps(_job(assets, "ti2v", id="fine")) + "\n"  # TI2V-5B: the image is optional
                    + json.dumps(_job(assets, "wan21", id="needs_one")) + "\n")
    assert main(["batch", str(jobs), "--out", str(tmp_path / "out"), "--quiet", "--frames", "9"]) == 2
    err = capsys.readouterr().err
    assert "needs_one" in err and "'image' is required" in err
    assert not (tmp_path / "out" / "fine").exists()
