"""One timing loop for ``ditflow-fast bench``: warm-up calls, then repeated timed calls.

(The pytest-benchmark suites time the same callables with pytest-benchmark's own loop.)
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so a timed call includes it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_callable(fn: Callable[[], object], *, warmup: int, repeats: int, device: str = "cpu") -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
        del out  # freed outside the timed region
    return times


def time_paired(fn: Callable[[], object], floor: Callable[[], object], *, warmup: int, repeats: int,
                device: str = "cpu") -> tuple[list[float], list[float]]:
    """Like :func:`time_callable`, with one call of ``floor`` timed just before each timed call of ``fn``:
    ``(fn times, floor times)``: per-repeat ratios, each from two calls made moments apart."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    times, floor_times = [], []
    for _ in range(repeats):
        floor_times += time_callable(floor, warmup=0, repeats=1, device=device)
        times += time_callable(fn, warmup=0, repeats=1, device=device)
    return times, floor_times


def paired_ratio(times: list[float], floor_times: list[float]) -> float:
    """Median over repeats of (call / the floor call timed just before it)."""
    return statistics.median(t / f for t, f in zip(times, floor_times, strict=True))


def summarize(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}
