"""``ditflow-fast info``: versions, and every backend with its auto rank and why it is unavailable, if it is."""

from __future__ import annotations

import platform


def add_info_parser(sub) -> None:
    sub.add_parser("info", help="versions and backends, with why any is unavailable").set_defaults(func=run_info)


def auto_order_line(all_backends, devices: list[str]) -> str:
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


def run_info(args) -> int:
    import torch

    from .. import __version__
    from ..dispatch import backends

    print(f"ditflow_fast {__version__}  python {platform.python_version()}  torch {torch.__version__}")
    print(f"cuda available: {torch.cuda.is_available()}")
    print(auto_order_line(backends().values(), ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]))
    print("backends (auto tries them by rank, lowest first; '-' = never picked by auto):")
    for b in backends().values():
        missing = b.unavailable()
        state = "available" if missing is None else f"unavailable: {missing}"
        rank = "-" if b.auto_rank is None else str(b.auto_rank)
        devices = ",".join(b.devices)
        print(f"  {b.name:<10} rank {rank:>3}  [{devices}]  {state}\n             {b.summary}")
    return 0
