"""The finiteness check (finite_max) and torch.aminmax on a contiguous [B, H, T, d] tensor and on a [B, H, T, d]
view of a [B, T, H, d] one, at the cpu-5b size (48 x 1,546 x 64 float32). Medians of 30 calls, in ms."""

import statistics
import time

import torch

from ditflow_fast._problem import finite_max

H, D, T = 48, 64, 1546
q = torch.randn(1, H, T, D)
qt = torch.randn(1, T, H, D).permute(0, 2, 1, 3)


def median_ms(f, rounds=30):
    f()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


print(f"finite_max contiguous {median_ms(lambda: finite_max(q)):.2f} ms, "
      f"permuted view {median_ms(lambda: finite_max(qt)):.2f} ms")
back = qt.permute(0, 2, 1, 3)  # the same elements in memory order
print(f"aminmax contiguous {median_ms(lambda: torch.aminmax(q)):.2f}, "
      f"permuted {median_ms(lambda: torch.aminmax(qt)):.2f}, "
      f"the same view back in memory order {median_ms(lambda: torch.aminmax(back)):.2f}")
