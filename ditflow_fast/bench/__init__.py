"""Benchmark harness shared by ``ditflow-fast bench`` and the pytest-benchmark suites in benchmarks/."""
