"""``ditflow_fast.transfer``: in memory, into a folder and through the command line alike; resume and refusal;
a held model for two transfers; a caller's diffusers pipeline; bad options named by their Python names."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("av")

import ditflow_fast  # noqa: E402
from ditflow_fast.cli.main import main  # noqa: E402
from ditflow_fast.families.cogvideox import tiny  # noqa: E402
from ditflow_fast.transfer_api import HeldModel, TransferResult  # noqa: E402
from ditflow_fast.video_io import read_video  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = dict(frames=9, height=48, width=64)
OPTS = dict(**SIZE, steps=4, guided_steps=2, opt_iters=2, seed=3)
ARGV = ["--frames", "9", "--height", "48", "--width", "64", "--steps", "4", "--guided-steps", "2", "--opt-iters", "2",
        "--seed", "3", "--quiet", "--format", "frames"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_api")
    tiny.write_tiny_assets(root)
    return root


def _api(assets, model=None, **kw):
    return ditflow_fast.transfer(model or str(assets / "model"), str(assets / "video.mp4"),
                                 prompt_embeds=str(assets / "model" / "prompt_embeds.safetensors"), **{**OPTS, **kw})


def test_memory_folder_and_command_line_give_the_same_frames(assets, tmp_path):
    steps = []
    mem = _api(assets, progress=lambda step, total, loss: steps.append((step, total, loss)))
    assert isinstance(mem, TransferResult) and mem.out is None and mem.frames.dtype == np.uint8
    assert mem.frames.shape == (9, 48, 64, 3) and mem.passes == 4 and len(mem.losses) == 2
    assert [s[:2] for s in steps] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert steps[0][2] is not None and steps[-1][2] is None  # guided steps report their loss
    assert mem.amf_reference is not None and mem.amf_result.shape == mem.amf_reference.shape
    folder = _api(assets, out=tmp_path / "api", format="frames")
    assert (tmp_path / "api" / "config.json").is_file() and folder.out == tmp_path / "api"
    assert main(["transfer", "--model", str(assets / "model"), "--video", str(assets / "video.mp4"), "--prompt-embeds",
                 str(assets / "model" / "prompt_embeds.safetensors"), "--out", str(tmp_path / "cli"), *ARGV]) == 0
    np.testing.assert_array_equal(mem.frames, folder.frames)
    np.testing.assert_array_equal(read_video(tmp_path / "api" / "result_frames"), mem.frames)
    np.testing.assert_array_equal(read_video(tmp_path / "cli" / "result_frames"), mem.frames)
    # frames in memory give what the file gives
    again = ditflow_fast.transfer(str(assets / "model"), read_video(assets / "video.mp4", **SIZE),
                                  prompt_embeds=str(assets / "model" / "prompt_embeds.safetensors"), **OPTS)
    np.testing.assert_array_equal(again.frames, mem.frames)


def test_a_folder_resumes_and_refuses_other_inputs(assets, tmp_path):
    out = tmp_path / "run"
    first = _api(assets, out=out)
    state = (out / "state.safetensors").read_bytes()
    again = _api(assets, out=out)
    assert again.record["resumed_from_step"] == 4 and (out / "state.safetensors").read_bytes() == state
    np.testing.assert_array_equal(first.frames, again.frames)
    with pytest.raises(ValueError, match=r"out .*holds a run with other settings; use fresh"):
        _api(assets, out=out, seed=4)
    assert (out / "state.safetensors").read_bytes() == state


def test_a_held_model_serves_two_transfers_with_one_load(assets):
    held = HeldModel(str(assets / "model"))
    a = _api(assets, model=held)
    b = _api(assets, model=held, opt_mode="emb")
    assert held.loads == 1
    fresh = _api(assets, opt_mode="emb")  # a held model leaves nothing behind: the same as a fresh load
    np.testing.assert_array_equal(b.frames, fresh.frames)
    assert not np.array_equal(a.frames, b.frames)


def test_a_callers_diffusers_pipeline_is_used_as_it_is(assets):
    import torch
    from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline

    model = assets / "model"
    folder = _api(assets)
    comps = HeldModel(str(model)).load(torch.float32)
    pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, transformer=comps["transformer"], vae=comps["vae"],
                             scheduler=CogVideoXDDIMScheduler.from_config(comps["scheduler_config"]))
    pipe.transformer.requires_grad_(True)
    pipe.vae.enable_slicing()
    before = {k: type(v) for k, v in pipe.transformer.attn_processors.items()}
    with pytest.raises(ValueError, match="offload/cpu_offload: a pipeline keeps the placement"):
        _api(assets, model=pipe, offload="model")
    with pytest.raises(ValueError, match="dtype bfloat16: the pipeline's transformer is float32"):
        _api(assets, model=pipe, dtype="bfloat16")
    got = _api(assets, model=pipe)
    np.testing.assert_array_equal(got.frames, folder.frames)
    assert got.record["run_key_parts"]["model"].startswith("pipeline:")
    # handed back as it came: diffusers' own processors, its trainable flags, its VAE slicing
    assert {k: type(v) for k, v in pipe.transformer.attn_processors.items()} == before
    assert all(p.requires_grad for p in pipe.transformer.parameters()) and pipe.vae.use_slicing
    assert not pipe.transformer.is_gradient_checkpointing


@pytest.mark.parametrize("options, message", [
    (dict(guided_steps=9), "guided_steps must lie in"),
    (dict(flow_shift=float("nan")), r"flow_shift \(flow_shift\) must be a finite number"),
    (dict(cfg=float("inf")), r"cfg_scale \(cfg\) must be a finite number"),
    (dict(dtype="int8"), "dtype must be one of float32"),
    (dict(seed=-1), r"seed \(seed -1\) must be a whole number"),
    (dict(fps=0), "fps must be positive"),
    (dict(offload="disk"), "offload must be one of"),
    (dict(grad_reuse=0), r"grad_reuse \(grad_reuse\) must be a whole number >= 1"),
    (dict(frames=2.5), "frames must be a whole number"),
    (dict(no_guidance="yes"), "no_guidance must be True or False"),
    (dict(stepz=3), "unknown transfer option 'stepz'"),
])
def test_bad_options_are_named_by_their_python_names(assets, options, message):
    with pytest.raises((ValueError, TypeError), match=message) as info:
        _api(assets, **options)
    assert "--" not in str(info.value)


def test_bad_inputs_are_named_before_any_loading(assets, monkeypatch):
    def no_load(*a, **k):
        raise AssertionError("loaded a model")

    monkeypatch.setattr(HeldModel, "load", no_load)
    with pytest.raises(ValueError, match="frames must be uint8"):
        ditflow_fast.transfer(str(assets / "model"), np.zeros((9, 48, 64, 3), np.float32), prompt="x", **OPTS)
    with pytest.raises(ValueError, match="prompt is required"):
        ditflow_fast.transfer(str(assets / "model"), str(assets / "video.mp4"), **OPTS)
    with pytest.raises(ValueError, match="video .*no such file"):
        ditflow_fast.transfer(str(assets / "model"), str(assets / "nope.mp4"), prompt="x", **OPTS)


def test_a_wan_pipeline_gives_what_its_folder_gives(tmp_path):
    from diffusers import UniPCMultistepScheduler, WanPipeline

    from ditflow_fast.families.cogvideox.tiny import moving_square
    from ditflow_fast.families.wan import tiny as wan_tiny

    folder = wan_tiny.save_tiny_wan(tmp_path / "wan")
    size = dict(frames=wan_tiny.FRAMES, height=wan_tiny.HEIGHT, width=wan_tiny.WIDTH)
    video = moving_square(**size)
    kw = dict(prompt_embeds=str(folder / "prompt_embeds.safetensors"), **size, steps=3, guided_steps=1,
              opt_iters=2, seed=5)
    want = ditflow_fast.transfer(str(folder), video, **kw)
    pipe = WanPipeline.from_pretrained(str(folder), tokenizer=None, text_encoder=None)
    assert isinstance(pipe.scheduler, UniPCMultistepScheduler)
    got = ditflow_fast.transfer(pipe, video, **kw)
    np.testing.assert_array_equal(got.frames, want.frames)
    assert got.passes == want.passes == 2


def test_a_pipelines_own_text_encoder_encodes_the_prompt(tmp_path):
    """The pipeline's encode_prompt, at the length its __call__ uses, gives what the family's encoder gives."""
    pytest.importorskip("transformers")
    import torch
    from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline
    from transformers import AutoTokenizer, T5EncoderModel

    from ditflow_fast.transfer_api.run import _texts

    root = tiny.write_tiny_assets(tmp_path, text_encoder=True)
    model = root / "model"
    comps = HeldModel(str(model)).load(torch.float32)
    pipe = CogVideoXPipeline(tokenizer=AutoTokenizer.from_pretrained(str(model), subfolder="tokenizer"),
                             text_encoder=T5EncoderModel.from_pretrained(str(model), subfolder="text_encoder"),
                             transformer=comps["transformer"], vae=comps["vae"],
                             scheduler=CogVideoXDDIMScheduler.from_config(comps["scheduler_config"]))
    folder = HeldModel(str(model))
    folder.load(torch.float32)
    cpu = torch.device("cpu")
    want = _texts(folder, "a dog running on a beach", "blurry", None, cpu, torch.float32)
    got = _texts(HeldModel.from_pipeline(pipe), "a dog running on a beach", "blurry", None, cpu, torch.float32)
    assert set(got) == {"prompt", "negative", "empty"} and got["prompt"].shape == (1, tiny.TEXT_LEN, tiny.TEXT_DIM)
    for name in want:
        assert torch.equal(got[name], want[name]), name
    kw = dict(**OPTS, negative_prompt="blurry")
    red = ditflow_fast.transfer(pipe, str(root / "video.mp4"), prompt="a dog running on a beach", **kw)
    blue = ditflow_fast.transfer(pipe, str(root / "video.mp4"), prompt="a car driving down a road at night", **kw)
    assert red.frames.shape == (9, 48, 64, 3) and not np.array_equal(red.frames, blue.frames)


def test_a_two_expert_model_keeps_its_defaults_once_loaded_or_handed_over(tmp_path):
    import torch
    from diffusers import WanPipeline

    from ditflow_fast.families.wan import tiny as wan_tiny

    folder = wan_tiny.save_tiny_wan(tmp_path / "a14b", two_experts=True)
    held = HeldModel(str(folder))
    before = held.configs[0]
    held.load(torch.float32)
    pipe = WanPipeline.from_pretrained(str(folder), tokenizer=None, text_encoder=None)
    assert before["experts"] == held.configs[0]["experts"] == HeldModel.from_pipeline(pipe).configs[0]["experts"] == 2
