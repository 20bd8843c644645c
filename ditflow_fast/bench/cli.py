"""``ditflow-fast bench`` (placeholder wiring; the harness fills it)."""


def add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmark the AMF backends on a named preset")

    def _run(args) -> int:
        raise ValueError("the benchmark harness is not written yet")

    p.set_defaults(func=_run)
