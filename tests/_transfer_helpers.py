"""The tiny CogVideoX ``transfer`` command line the CLI tests share (assets from ``write_tiny_assets``), and an
interrupted run resumed next to a whole one (any family)."""


def transfer_args(assets, out, *extra) -> list[str]:
    return ["transfer", "--model", str(assets / "model"), "--video", str(assets / "video.mp4"),
            "--prompt-embeds", str(assets / "model" / "prompt_embeds.safetensors"), "--frames", "9",
            "--height", "48", "--width", "64", "--steps", "4", "--guided-steps", "2", "--opt-iters", "2",
            "--out", str(out), "--quiet", *extra]


def set_arg(args, flag, value) -> list[str]:
    """``args`` with ``flag``'s value replaced, or ``flag value`` appended."""
    args = list(args)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    return args


def interrupted_and_whole(args, tmp_path, monkeypatch, *, interrupt_at: int):
    """A ``transfer`` run whole into ``tmp_path/full``, and one into ``tmp_path/cut`` interrupted (Ctrl-C) at its
    ``interrupt_at``-th denoising call then run again there: ``(record, result frames)`` of ``cut`` and of
    ``full``. ``args(out)``: the command line writing into ``out`` (with ``--format frames``)."""
    import json

    import pytest

    from ditflow_fast.cli.main import main
    from ditflow_fast.guidance.loop import Guide
    from ditflow_fast.video_io import read_video

    assert main(args(tmp_path / "full")) == 0
    real, calls = Guide._denoise, []

    def flaky(self, *a, **k):
        calls.append(1)
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(Guide, "_denoise", flaky)
    with pytest.raises(KeyboardInterrupt):
        main(args(tmp_path / "cut"))
    monkeypatch.setattr(Guide, "_denoise", real)
    assert main(args(tmp_path / "cut")) == 0
    return [(json.loads((tmp_path / d / "config.json").read_text()), read_video(tmp_path / d / "result_frames"))
            for d in ("cut", "full")]


def tiny_guide(*, steps: int = 3, image=None, ref_cache=None, **config):
    """A ``Guide`` on the tiny random CogVideoX (RoPE) with a fixed random reference latent: 9 frames at 48x64, 2
    guided steps of 2 Adam iterations; ``config``: ``GuidanceConfig`` fields over those."""
    import torch

    from ditflow_fast.families.cogvideox import tiny
    from ditflow_fast.guidance.config import GuidanceConfig
    from ditflow_fast.guidance.loop import Guide

    tr = tiny.tiny_transformer(True)
    ref = torch.randn(1, 3, 4, 6, 8, generator=torch.Generator().manual_seed(7))
    pe = tiny.tiny_prompt_embeds()
    settings = dict(model="tiny", steps=steps, guided_steps=2, opt_iters=2, height=48, width=64, frames=9,
                    lr=(0.05, 0.02)) | config
    cfg = GuidanceConfig(**settings).resolve(tr, device="cpu")
    return Guide(tr, tiny.tiny_scheduler(True), ref_latent=ref, prompt_embeds=pe["prompt"],
                 negative_embeds=pe["negative"], config=cfg, model_id="tiny", image=image, ref_cache=ref_cache)
