"""``ditflow-fast batch`` on Ray with one job per new family (LTX-Video, HunyuanVideo, CogVideoX 1.5): each
job's tiny pipeline runs through the same seam and writes exactly the frames asked."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("av")
pytest.importorskip("ray")

from ditflow_fast.cli.main import main  # noqa: E402
from ditflow_fast.families.cogvideox import tiny as cog_tiny  # noqa: E402
from ditflow_fast.families.cogvideox.tiny import save_tiny_model  # noqa: E402
from ditflow_fast.families.hunyuan.tiny import save_tiny_hunyuan  # noqa: E402
from ditflow_fast.families.ltx.tiny import save_tiny_ltx  # noqa: E402
from ditflow_fast.video_io import read_video, write_video  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_one_batch_runs_a_job_of_each_new_family(tmp_path):
    video = tmp_path / "video.mp4"
    write_video(cog_tiny.moving_square(frames=17, height=64, width=64), video)
    models = {"ltx": save_tiny_ltx(tmp_path / "ltx"), "hunyuan": save_tiny_hunyuan(tmp_path / "hunyuan"),
              "cogvideox15": save_tiny_model(tmp_path / "cog15", v15=True)}
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps({"id": name, "video": str(video), "model": str(path),
                                        "prompt_embeds": str(path / "prompt_embeds.safetensors")}) + "\n"
                            for name, path in models.items()))
    rc = main(["batch", str(jobs), "--out", str(tmp_path / "out"), "--quiet", "--frames", "9", "--steps", "4",
               "--guided-steps", "2", "--opt-iters", "1", "--threads", "1", "--format", "frames"])
    assert rc == 0
    for name in models:
        assert read_video(tmp_path / "out" / name / "result_frames").shape[0] == 9, name
