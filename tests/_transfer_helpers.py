"""The tiny CogVideoX ``transfer`` command line the CLI tests share (assets from ``write_tiny_assets``)."""


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
