"""The app runs every family through the same seam: a tiny pipeline of each new family, one guided run each."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("gradio")

from ditflow_fast.app import core  # noqa: E402
from ditflow_fast.video_io import read_video  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _ltx(path):
    from ditflow_fast.families.ltx.tiny import save_tiny_ltx

    return save_tiny_ltx(path)


def _hunyuan(path):
    from ditflow_fast.families.hunyuan.tiny import save_tiny_hunyuan

    return save_tiny_hunyuan(path)


def _cogvideox15(path):
    from ditflow_fast.families.cogvideox.tiny import save_tiny_model

    return save_tiny_model(path, v15=True)


@pytest.mark.parametrize("save", [_ltx, _hunyuan, _cogvideox15], ids=["ltx", "hunyuan", "cogvideox15"])
def test_a_guided_app_run_writes_exactly_the_frames_asked(tmp_path, save):
    model = save(tmp_path / "model")
    samples = core.ensure_samples(tmp_path / "cache")
    # 9 frames: valid for each (LTX 8k+1, HunyuanVideo 4k+1, CogVideoX 8k+1); sizes: the tiny model's own
    req = core.Request(video=str(samples["moving square (81 frames)"]), model=str(model),
                       prompt_embeds=str(model / "prompt_embeds.safetensors"), frames=9,
                       steps=4, guided_steps=2, opt_iters=1)
    prep = core.prepare(req, tmp_path / "out")
    job = core.Job(prep).start()
    assert job.done.wait(240), "the tiny run did not finish in 4 minutes"
    assert job.error is None, job.error
    rec = core.run_record(prep.run_dir)
    assert read_video(rec["result"]).shape[0] == 9
