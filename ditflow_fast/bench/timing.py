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


def summarize(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}
