"""The value checks and the heads concatenation at cpu-5b's q shape ([1, 48, 1546, 64], 226 text tokens),
float32, two threads: ATen's aminmax and copy as two passes against the native gather_checked, median of 21.
Run: OMP_NUM_THREADS=2 .venv/bin/python docs/runs/intel_xeon_s20/gather.py"""

import statistics
import time

import torch

from ditflow_fast import _native

_native.load()
ops = _native.ops()
torch.set_num_threads(2)
t = torch.randn(1, 48, 1546, 64)
buf = torch.empty(1, 1320, 3072)


def median_ms(f, n=21):
    f()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1e3, 2)


print("gather_checked", median_ms(lambda: ops.gather_checked(t, 226, 0)), "ms")
print("aminmax", median_ms(lambda: torch.aminmax(t)), "ms")
print("copy", median_ms(lambda: buf.view(1, 1320, 48, 64).copy_(t[:, :, 226:].permute(0, 2, 1, 3))), "ms")
