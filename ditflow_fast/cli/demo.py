"""``ditflow-fast demo``: registered here, written in the toy world (``ditflow_fast/toyworld/cli.py``).

The toy world is an application of the library (tests/test_toyworld_boundary.py): its command stays
with it, and only this registration, which runs when the parser is built, reaches into it.
"""

from __future__ import annotations


def add_demo_parser(sub) -> None:
    from ..toyworld.cli import add_demo_parser as add_toyworld_demo

    add_toyworld_demo(sub)
