"""``ditflow-fast amf``: the reference AMF of a video through a model, as a viewer page, a picture and a tensor.

``ditflow-fast amf --video V [--model M] --out DIR`` writes ``DIR/amf.safetensors`` (``[F, F, h*w, 2]``,
geometry and provenance in the metadata), ``DIR/amf.html`` (one self-contained page) and
``DIR/amf.png`` (every frame pair). The model defaults to the bundled toy-world model
(``assets/tiny_dit``), which runs offline in seconds; any CogVideoX or Wan diffusers folder or hub id
works too. ``ditflow-fast amf --random`` is the old smoke test of dispatch on random q/k.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def add_amf_parser(sub) -> None:
    p = sub.add_parser("amf", help="the reference AMF of a video (viewer page, picture, tensor); --random: a smoke "
                       "test of dispatch on random q/k", description=__doc__.splitlines()[0])
    p.add_argument("--video", help="a video file (mp4, gif, ...) or a folder of frames")
    p.add_argument("--model", default=None, help="diffusers folder or hub id of a supported family, or the toy "
                   "model's folder (default: the bundled assets/tiny_dit)")
    p.add_argument("--out", default="amf_out", help="output folder (amf.safetensors, amf.html, amf.png)")
    p.add_argument("--block", type=int, default=None, help="block whose attention is read (default: the model's "
                   "guidance block)")
    p.add_argument("--amf-no-rope", action="store_true", help="the AMF from q/k before the rotary position "
                   "embedding, their content alone (as transfer --amf-no-rope)")
    p.add_argument("--prompt-embeds", metavar="FILE", help="safetensors whose 'empty' (else 'negative') is the "
                   "empty prompt; without it the model's text encoder encodes ''")
    p.add_argument("--frames", type=int, help="video frames (default: the model's; --random: latent frames, 2)")
    p.add_argument("--height", type=int, help="video height, resized (default: the model's; --random: patches, 6)")
    p.add_argument("--width", type=int, help="video width, resized (default: the model's; --random: patches, 9)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    g = p.add_argument_group("--random: the smoke test of dispatch (random q/k, no model)")
    g.add_argument("--random", action="store_true", help="compute the AMF of random q/k and print the backend used")
    g.add_argument("--heads", type=int, default=4)
    g.add_argument("--head-dim", type=int, default=16)
    g.add_argument("--text-tokens", type=int, default=0)
    g.add_argument("--temperature", type=float, default=2.0)
    g.add_argument("--mode", choices=("soft", "argmax"), default="soft")
    g.add_argument("--backend", default="auto")
    g.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_amf)


def run_amf(a) -> int:
    if a.random:
        a.frames = 2 if a.frames is None else a.frames
        a.height = 6 if a.height is None else a.height
        a.width = 9 if a.width is None else a.width
        return random_amf(a)
    if not a.video:
        raise ValueError("--video is required (or --random for the smoke test on random q/k)")
    for name in ("frames", "height", "width", "threads"):
        v = getattr(a, name)
        if v is not None and v < 1:
            raise ValueError(f"--{name} must be positive, got {v}")
    if a.block is not None and a.block < 0:
        raise ValueError(f"--block must be >= 0, got {a.block}")
    from ..atomic import check_writable
    from ..video_io import VideoError, check_video, read_video

    for option, value in (("--video", a.video), ("--model", a.model), ("--out", a.out)):
        try:  # the page and the AMF file's metadata carry these names in UTF-8: refuse one that has none now
            str(value or "").encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{option} {value!r}: the name is not valid UTF-8 (the viewer page and the AMF file "
                             "record it); rename it") from None
    check_video(a.video, a.frames)  # opened and decoded (--frames of them, else one) before any model loads
    src_h, src_w = read_video(a.video, frames=1).shape[1:3]
    out = Path(a.out).expanduser()
    check_writable(out, option="--out", folder=True)
    import torch

    if a.threads is not None:
        torch.set_num_threads(a.threads)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.time()
    from ..toyworld.amf_model import default_model, is_toy_folder, open_toy
    from ..viewer.reference import check_geometry, frame_for_latent, open_model, reference_amf

    model = a.model or default_model()
    dtype = getattr(torch, a.dtype)
    handle = (open_toy(model, device, dtype) if is_toy_folder(model) else
              open_model(model, device=device, dtype=dtype, prompt_embeds=a.prompt_embeds))
    frames_n, height, width = a.frames or handle.frames, a.height or handle.height, a.width or handle.width
    check_geometry(handle, frames_n, height, width)
    if a.block is not None and a.block >= handle.n_blocks:
        raise ValueError(f"--block {a.block}: the model has blocks 0 to {handle.n_blocks - 1}")
    if handle.kind == "toy" and (src_w, src_h) != (handle.width, handle.height):
        print(f"warning: {model} is a toy model trained only on the toy world's synthetic {handle.width}x"
              f"{handle.height} shapes; on this {src_w}x{src_h} clip its AMF is close to noise (pass --model a "
              "CogVideoX or Wan folder for real videos)", file=sys.stderr)
    try:
        video = read_video(a.video, frames=frames_n, height=height, width=width)[:frames_n]
    except VideoError as exc:  # too short for the model's default count, known only now: not --frames' fault
        if a.frames is not None or "fewer than" not in str(exc):
            raise
        raise VideoError(f"{str(exc).removesuffix(' (--frames)')}, this model's default; pass --frames N (at most "
                         "the clip's length, as the model's frame rule allows)") from None
    fps = _fps(a.video)
    span = "a folder of frames" if fps is None else f"{frames_n / fps:.2f} s at {fps:g} fps"
    print(f"used frames 0-{frames_n - 1} (the first {frames_n}, consecutive, no fps resampling; {span}) of "
          f"{Path(a.video).name}, resized from {src_w}x{src_h} to {width}x{height}")
    amf, geo = reference_amf(handle, video, a.block, qk_rope=not a.amf_no_rope)
    shown = video[frame_for_latent(video.shape[0], geo["frames"])]
    info = provenance(handle, geo, video=str(a.video), torch_version=torch.__version__)
    from ..viewer.output import write_viewer

    paths = write_viewer(out, [(f"reference AMF of {Path(a.video).name}", amf, shown)], info,
                         title=f"AMF of {Path(a.video).name}, block {geo['block']} of {model}")
    import numpy as np

    mean = float(np.linalg.norm(amf, axis=-1).mean())
    print(f"AMF [{geo['frames']}, {geo['frames']}, {geo['height']}x{geo['width']}, 2] of {video.shape[0]} frames "
          f"{video.shape[2]}x{video.shape[1]} at block {geo['block']} ({handle.kind}), mean |D| {mean:.3f} patches; "
          f"wrote {', '.join(str(p) for p in paths.values())} in {time.time() - t0:.1f} s", file=sys.stdout)
    return 0


def _fps(path) -> float | None:
    """The clip's frame rate; None for a folder of frames or a container that does not say."""
    if Path(path).is_dir():
        return None
    import av

    with av.open(str(path)) as container:
        rate = container.streams.video[0].average_rate
    return float(rate) if rate else None


def provenance(handle, geo: dict, **extra) -> dict:
    """The metadata every AMF file carries: geometry, how it was measured, by what."""
    from .. import __version__

    return {**geo, "model": str(handle.name), "family": handle.kind, "mode": "argmax", "timestep": 0,
            "prompt": "empty", "units": "patches (dx right, dy down)",
            "patch_px_x": geo["video_width"] / geo["width"], "patch_px_y": geo["video_height"] / geo["height"],
            "ditflow_fast": __version__, **extra}


def random_amf(args) -> int:
    """The AMF of random q/k of the given geometry, and which backend computed it (and why others were skipped)."""
    import torch

    from ..api import choose_backend, compute_amf

    gen = torch.Generator().manual_seed(args.seed)
    t = args.text_tokens + args.frames * args.height * args.width
    q = torch.randn(1, args.heads, t, args.head_dim, generator=gen)
    k = torch.randn(1, args.heads, t, args.head_dim, generator=gen)
    kw = dict(frames=args.frames, height=args.height, width=args.width, mode=args.mode,
              text_tokens=args.text_tokens, temperature=args.temperature, backend=args.backend)
    choice = choose_backend(q, k, **kw)
    out = compute_amf(q, k, **kw)
    print(f"backend: {choice.name}" + "".join(f"\n  skipped {n}: {'; '.join(w)}" for n, w in choice.skipped.items()))
    print(f"AMF of random q/k: shape {tuple(out.shape)}, mean |D| = {out.norm(dim=-1).mean():.4f} patches")
    return 0
