"""``ditflow-fast`` command line: ``info``, ``amf``, ``bench``, ``demo``, ``transfer``, ``eval`` and ``app``.

Subcommands import their modules lazily, so ``ditflow-fast info`` stays quick and a missing
optional dependency of one subcommand never breaks another.
"""

from __future__ import annotations

import argparse
import errno
import sys

# these save their progress as they go: the same command again goes on from where it stopped
RESUMABLE = ("transfer", "batch")


def build_parser() -> argparse.ArgumentParser:
    # Only the parsers are imported here; each subcommand imports its heavy modules when it runs.
    from .amf import add_amf_parser
    from .app import add_app_parser
    from .batch import add_batch_parser
    from .bench import add_bench_parser
    from .demo import add_demo_parser
    from .eval import add_eval_parser
    from .info import add_info_parser
    from .transfer import add_transfer_parser

    parser = argparse.ArgumentParser(prog="ditflow-fast", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_info_parser(sub)
    add_amf_parser(sub)  # the AMF viewer of a video; --random: the smoke test of dispatch
    add_bench_parser(sub)
    add_demo_parser(sub)
    add_transfer_parser(sub)
    add_batch_parser(sub)
    add_eval_parser(sub)
    add_app_parser(sub)  # the web app (gradio, imported only when it runs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    resume = "; run the same command again to resume" if args.command in RESUMABLE else ""
    try:
        return args.func(args)
    except (ValueError, TypeError) as exc:
        print(f"ditflow-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `ditflow-fast info | head`: the reader left; nothing more to say
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"ditflow-fast {args.command}: error: {_disk_full(args, exc)}{resume}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if argv is not None:  # called from Python (tests, a worker): Ctrl-C is the caller's to handle
            raise
        print(f"ditflow-fast {args.command}: interrupted{resume}", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports it


def _disk_full(args, exc: OSError) -> str:
    """``--out DIR: No space left on device (N MiB free there)`` (``DIR``: ``--out``, else the file written)."""
    import os
    import shutil
    from pathlib import Path

    out = getattr(args, "out", None)
    where = Path(out or exc.filename or ".").expanduser()
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    size = f"{free / 2**30:.1f} GiB" if free >= 2**30 else f"{free / 2**20:.1f} MiB"
    name = f"--out {out}" if out else str(exc.filename or where)
    return f"{name}: {exc.strerror or os.strerror(exc.errno)} ({size} free there); make room"
