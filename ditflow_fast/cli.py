"""``ditflow-fast`` command line: ``info``, ``amf``, ``bench``, ``demo``, ``transfer``, ``eval`` and ``app``.

Subcommands import their modules lazily, so ``ditflow-fast info`` stays quick and a missing
optional dependency of one subcommand never breaks another.
"""

from __future__ import annotations

import argparse
import platform
import sys


def _auto_order_line(all_backends, devices: list[str]) -> str:
    """``auto tries: triton (unavailable: ...), cpu, torch; first available: cpu`` (per device when several)."""
    ranked = sorted((b for b in all_backends if b.auto_rank is not None), key=lambda b: b.auto_rank)
    missing = {b.name: b.unavailable() for b in ranked}
    order = ", ".join(b.name if missing[b.name] is None else f"{b.name} (unavailable: {missing[b.name]})"
                      for b in ranked)
    firsts = {d: next((b.name for b in ranked if missing[b.name] is None and d in b.devices), None) for d in devices}
    if len(devices) == 1:
        first = firsts[devices[0]] or "none"
    else:
        first = ", ".join(f"{n or 'none'} ({d} inputs)" for d, n in firsts.items())
    return f"auto tries: {order or 'nothing'}; first available: {first}"


def _cmd_info(args) -> int:
    import torch

    from . import __version__
    from .dispatch import backends

    print(f"ditflow_fast {__version__}  python {platform.python_version()}  torch {torch.__version__}")
    print(f"cuda available: {torch.cuda.is_available()}")
    print(_auto_order_line(backends().values(), ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]))
    print("backends (auto tries them by rank, lowest first; '-' = never picked by auto):")
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


def build_parser() -> argparse.ArgumentParser:
    # Only the parsers are imported here; each subcommand imports its heavy modules when it runs.
    from .amf_cli import add_amf_parser
    from .app import add_app_parser
    from .batch.cli import add_batch_parser
    from .bench.cli import add_bench_parser
    from .eval_cli import add_eval_parser
    from .toyworld.cli import add_demo_parser
    from .transfer_cli import add_transfer_parser

    parser = argparse.ArgumentParser(prog="ditflow-fast", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions and backends, with why any is unavailable").set_defaults(func=_cmd_info)
    add_amf_parser(sub)  # the AMF viewer of a video; --random: the smoke test of _cmd_amf
    add_bench_parser(sub)
    add_demo_parser(sub)
    add_transfer_parser(sub)
    add_batch_parser(sub)
    add_eval_parser(sub)
    add_app_parser(sub)  # the web app (gradio, imported only when it runs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError) as exc:
        print(f"ditflow-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `ditflow-fast info | head`: the reader left; nothing more to say
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
