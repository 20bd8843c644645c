"""``ditflow-fast amf`` on an image-to-video model: the reference is given its own first frame, as the guidance
loop gives it (tiny CogVideoX-5B-I2V, CPU)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("av")

from ditflow_fast.cli.main import main  # noqa: E402
from ditflow_fast.families.cogvideox import tiny  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_amf_of_an_i2v_model_reads_the_video_with_its_own_first_frame(tmp_path, monkeypatch):
    from ditflow_fast.viewer import reference
    from ditflow_fast.viewer.output import load_amf

    root = tiny.write_tiny_assets(tmp_path / "a", i2v=True)
    seen = []
    real = reference.capture_amf

    def spy(family, transformer, latent, text, block, **kw):
        seen.append(kw)
        return real(family, transformer, latent, text, block, **kw)

    monkeypatch.setattr(reference, "capture_amf", spy)
    argv = ["amf", "--model", str(root / "model"), "--video", str(root / "video.mp4"), "--frames", "9", "--height",
            "48", "--width", "64", "--prompt-embeds", str(root / "model" / "prompt_embeds.safetensors"),
            "--threads", "1"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    (kw,) = seen
    assert set(kw) == {"image_latents", "qk_rope"} and kw["qk_rope"] is True  # the image inputs, and RoPE in the AMF
    amf, _ = load_amf(tmp_path / "out" / "amf.safetensors")
    assert np.isfinite(amf).all()
