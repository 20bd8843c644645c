"""``ditflow-fast`` command line: ``info``, ``amf`` and ``bench``.

Subcommands import their modules lazily, so ``ditflow-fast info`` stays quick and a missing
optional dependency of one subcommand never breaks another.
"""

from __future__ import annotations

import argparse
import platform
import sys


def _cmd_info(args) -> int:
    import torch

    from . import __version__
    from .dispatch import backends

    print(f"ditflow_fast {__version__}  python {platform.python_version()}  torch {torch.__version__}")
    print(f"cuda available: {torch.cuda.is_available()}")
    print("backends (auto tries them by rank; '-' = never picked by auto):")
    for b in backends().values():
        missing = b.unavailable()
        state = "available" if missing is None else f"unavailable: {missing}"
        rank = "-" if b.auto_rank is None else str(b.auto_rank)
        devices = ",".join(b.devices)
        print(f"  {b.name:<10} rank {rank:>3}  [{devices}]  {state}\n             {b.summary}")
    return 0


def _cmd_amf(args) -> int:
    import torch

    from .api import choose_backend, compute_amf

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


def _add_amf(sub) -> None:
    p = sub.add_parser("amf", help="compute the AMF of random q/k (a smoke test of dispatch)")
    p.add_argument("--frames", type=int, default=2)
    p.add_argument("--height", type=int, default=6)
    p.add_argument("--width", type=int, default=9)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=16)
    p.add_argument("--text-tokens", type=int, default=0)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--mode", choices=("soft", "argmax"), default="soft")
    p.add_argument("--backend", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_amf)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ditflow-fast", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions and backends, with why any is unavailable").set_defaults(func=_cmd_info)
    _add_amf(sub)
    from .bench.cli import add_bench_parser

    add_bench_parser(sub)
    __import__("ditflow_fast.toyworld.cli", fromlist=["add_demo_parser"]).add_demo_parser(sub)
    from .transfer_cli import add_transfer_parser

    add_transfer_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError) as exc:
        print(f"ditflow-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
