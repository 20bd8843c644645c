"""One thread's float32 GEMM at the CPU kernel's tile shapes, torch (MKL) against numpy (its bundled OpenBLAS),
into a preallocated output, interleaved, median of ROUNDS: would another BLAS give the tiles a higher rate here?
`a @ b^T` with a [M, K], b [N, K], as the kernel's tiles multiply query rows by a key frame's rows.
Run: OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python docs/runs/zen3_goals/blas.py M K N ROUNDS"""

import statistics
import sys
import time

import numpy as np
import torch

torch.set_num_threads(1)
m, k, n, rounds = (int(x) for x in sys.argv[1:5])
a, b = torch.randn(m, k), torch.randn(n, k)
an, bn = a.numpy(), b.numpy()
out = torch.empty(m, n)  # the kernel multiplies into a kept tile buffer, so both write into one here
outn = out.numpy()
impls = {"torch": lambda: torch.mm(a, b.t(), out=out), "numpy": lambda: np.matmul(an, bn.T, out=outn)}
for f in impls.values():
    f()
times = {name: [] for name in impls}
for _ in range(rounds):
    for name, f in impls.items():
        t0 = time.perf_counter()
        f()
        times[name].append(time.perf_counter() - t0)
med = {name: statistics.median(ts) for name, ts in times.items()}
print(f"{m}x{k}x{n}: " + ", ".join(f"{name} {t * 1e3:.1f} ms ({2 * m * k * n / t / 1e9:.0f} GFLOP/s)"
                                  for name, t in med.items()) + f"; numpy/torch {med['numpy'] / med['torch']:.3f}")
