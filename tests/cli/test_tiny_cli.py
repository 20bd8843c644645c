"""``python -m ditflow_fast.cli.tiny``: the smoke-run assets, text- and image-to-video."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("av")

from ditflow_fast.cli import tiny  # noqa: E402


def test_i2v_assets_are_an_i2v_folder_and_a_first_frame(tmp_path):
    assert tiny.main([str(tmp_path / "a"), "--i2v"]) == 0
    index = json.loads((tmp_path / "a" / "model" / "model_index.json").read_text())
    assert index["_class_name"] == "CogVideoXImageToVideoPipeline"
    assert (tmp_path / "a" / "image.png").is_file() and (tmp_path / "a" / "video.mp4").is_file()
    assert tiny.main([str(tmp_path / "b")]) == 0
    assert not (tmp_path / "b" / "image.png").exists()


def test_i2v_without_rope_is_refused():
    with pytest.raises(SystemExit) as err:
        tiny.main(["unused", "--i2v", "--no-rope"])
    assert err.value.code == 2
