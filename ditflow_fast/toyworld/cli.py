"""``ditflow-fast demo``: motion transfer on the committed tiny DiT, scored by Motion Fidelity."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from .settings import DEFAULT_DIR, ROWS, DemoSettings, model_settings


def default_out(model: str | None, i2v: bool = False) -> str:
    """``ditflow_demo`` for the bundled CogVideoX model (what ``make demo`` and the docs name), else
    ``ditflow_demo_<model folder>``: one model's demo never overwrites another's; ``_i2v`` after either for
    ``--i2v``."""
    tail = "_i2v" if i2v else ""
    if model is None or Path(model).resolve() == DEFAULT_DIR:
        return f"ditflow_demo{tail}"
    return f"ditflow_demo_{Path(model).resolve().name}{tail}"


def _rows(text: str) -> list[str]:
    rows = [r.strip() for r in text.split(",") if r.strip()]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown row(s) {bad}; rows are: {', '.join(ROWS)}")
    return rows


def add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="DiTFlow on a tiny DiT trained on a synthetic world, scored by Motion Fidelity",
                       description="Runs every method (" + ", ".join(ROWS) + ") through the package's guidance "
                       "loop on the committed tiny CogVideoX-architecture DiT (assets/tiny_dit; the Wan-architecture "
                       "one: --model assets/tiny_wan), for N reference clips x M seeds, and writes videos, a "
                       "side-by-side GIF and a results table.")
    p.add_argument("--model", default=None, help="tiny model folder (default: assets/tiny_dit of this checkout)")
    p.add_argument("--out", default=None, help="output folder (default: ditflow_demo for the bundled tiny "
                   "CogVideoX model, ditflow_demo_<model folder> for another --model, e.g. ditflow_demo_tiny_wan); "
                   "a rerun into it first deletes the files the previous demo listed in its demo_outputs.txt")
    p.add_argument("--video", default=None, help="a user's reference clip (video file or frame folder) instead "
                   "of the synthetic world's; it is cut to the model's frames and resized to its size")
    p.add_argument("--ref-colour", default=None, help="with --video: R,G,B in [0, 1] of the object to track in it "
                   "(without it Motion Fidelity is not computed)")
    p.add_argument("--target", default=None, help="object to generate, e.g. 'red disk' (default: another kind "
                   "and colour than each reference's); needed with --video")
    p.add_argument("--i2v", action="store_true", help="image-to-video: each generation also gets a first frame, "
                   "its object at another place (first-frame anchoring; the table gains first-frame IoU)")
    p.add_argument("--clips", type=int, default=5, help="reference clips of the synthetic world")
    p.add_argument("--seeds", type=int, default=5, help="generation seeds per clip")
    p.add_argument("--clip-seed", type=int, default=0, help="seed of the reference clips")
    p.add_argument("--rows", type=_rows, default=list(ROWS), help="comma-separated subset of: " + ", ".join(ROWS))
    # None: the model's own setting (settings.model_settings: its world.json, else DemoSettings')
    p.add_argument("--steps", type=int, default=None, help="denoising steps")
    p.add_argument("--guided-steps", type=int, default=None, help="first steps that are guided")
    p.add_argument("--opt-iters", type=int, default=None, help="Adam iterations per guided step")
    p.add_argument("--grad-reuse", type=int, default=None, metavar="K",
                   help="speed lever: one real forward+backward every K-th Adam iteration, reused in between "
                        "(1: every iteration; FastVMT uses 3)")
    p.add_argument("--early-stop", type=float, default=None, metavar="TOL",
                   help="speed lever: end a guided step's iterations once its AMF loss falls by less than TOL "
                        "(relative) from one pass to the next (0: off)")
    p.add_argument("--lr", type=float, nargs=2, default=None, metavar=("START", "END"))
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--cfg-min-t", type=int, default=None, metavar="T",
                   help="guidance interval: CFG only at timesteps >= T (0: every step)")
    p.add_argument("--block", type=int, default=None, help="guidance block")
    p.add_argument("--amf-rope", choices=("on", "off"), default=None,
                   help="the AMF from q/k with RoPE (on) or before it (off; both toy models' choice)")
    p.add_argument("--gifs", choices=("first", "all", "none"), default="first")
    p.add_argument("--quick", action="store_true", help="1 clip, 1 seed, 8 steps (4 guided, 2 iterations)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.epilog = ("Unset sampling and guidance options take the model's own settings: those its world.json "
                "records (chosen on its tuning clips), else the defaults " +
                ", ".join(f"{k} {v}" for k, v in vars(DemoSettings()).items()) + " (docs/toyworld.md).")
    p.set_defaults(func=_cmd_demo)


def _check_args(args) -> None:
    """Every argument error, as a ValueError naming the option (``cli.main`` prints it, exit 2), before any work."""
    from ..atomic import check_writable

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be positive, got {args.threads}")
    for name in ("clips", "seeds", "steps", "opt_iters"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.grad_reuse is not None and args.grad_reuse < 1:
        raise ValueError(f"--grad-reuse must be >= 1 (1: a real backward every iteration), got {args.grad_reuse}")
    if args.early_stop is not None and not 0.0 <= args.early_stop < 1.0:
        raise ValueError(f"--early-stop must lie in [0, 1) (0: off), got {args.early_stop}")
    if args.model is not None and not Path(args.model).is_dir():
        raise ValueError(f"--model {args.model}: no such folder")
    if args.video is not None and args.target is None:
        raise ValueError("--target is needed with --video: a user's reference clip needs a target condition "
                         "(e.g. --target 'red disk')")
    if args.ref_colour is not None and args.video is None:
        raise ValueError("--ref-colour is only used with --video")
    check_writable(args.out, option="--out", folder=True)


def _parse_target(text: str) -> int:
    from .world import COLOUR_NAMES, KINDS, condition_index

    words = text.split()
    if len(words) != 2 or words[0] not in COLOUR_NAMES or words[1] not in KINDS:
        raise ValueError(f"--target must be '<colour> <kind>', e.g. 'red disk' (colours: {', '.join(COLOUR_NAMES)}; "
                         f"kinds: {', '.join(KINDS)}), got {text!r}")
    return condition_index(words[1], words[0])


def _parse_colour(text: str) -> list[float]:
    try:
        colour = [float(x) for x in text.split(",")]
    except ValueError:
        colour = []
    if len(colour) != 3 or not all(0.0 <= c <= 1.0 for c in colour):
        raise ValueError(f"--ref-colour must be R,G,B with each in [0, 1], got {text!r}")
    return colour


def _cmd_demo(args) -> int:
    args.out = args.out or default_out(args.model, args.i2v)
    _check_args(args)
    target = None if args.target is None else _parse_target(args.target)
    colour = None if args.ref_colour is None else _parse_colour(args.ref_colour)
    import torch

    from .demo import run_demo

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.clips, args.seeds, args.steps, args.guided_steps, args.opt_iters = 1, 1, 8, 4, 2
    refs = None
    if args.video is not None:
        from .demo import user_clip

        refs = [user_clip(args.video, colour)]
    given = dict(steps=args.steps, guided_steps=args.guided_steps, opt_iters=args.opt_iters,
                 lr=None if args.lr is None else tuple(args.lr), cfg_scale=args.cfg, cfg_min_t=args.cfg_min_t,
                 guidance_block=args.block, grad_reuse=args.grad_reuse, early_stop=args.early_stop,
                 amf_rope=None if args.amf_rope is None else args.amf_rope == "on")
    settings = replace(model_settings(args.model or DEFAULT_DIR), **{k: v for k, v in given.items() if v is not None})
    if settings.grad_reuse > 1 and any(r in ("DiTFlow emb", "zero-shot") for r in args.rows):
        import sys

        print("note: --grad-reuse applies to every guided row; on the CogVideoX toy model it made DiTFlow emb (and "
              "so zero-shot) lose the object (docs/toyworld.md, 'Speed levers')", file=sys.stderr)
    res = run_demo(args.out, model_dir=args.model or DEFAULT_DIR, clips=args.clips, seeds=args.seeds, rows=args.rows,
                   clip_seed=args.clip_seed, settings=settings, gifs=args.gifs, references=refs, target=target,
                   i2v=args.i2v)
    print((Path(args.out) / "summary.md").read_text())
    print(f"wrote {args.out}/results.csv, summary.json, summary.md, videos/ ({res['meta']['seconds']} s)")
    return 0
