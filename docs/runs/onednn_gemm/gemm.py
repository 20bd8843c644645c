"""torch's float32 GEMM (MKL) against oneDNN's (torch's mkldnn_linear on oneDNN tensors) and torch's bf16 GEMM
(oneDNN), at cpu-5b's heads-concatenated shape (1320 x 3072 by 3072 x 1320), interleaved, median of 9 rounds, and
the largest difference between the two float32 products.
Run: OMP_NUM_THREADS=T .venv/bin/python docs/runs/onednn_gemm/gemm.py T"""

import statistics
import sys
import time

import torch

torch.set_num_threads(int(sys.argv[1]))
n, d = 1320, 3072
a, b = torch.randn(n, d), torch.randn(n, d)
am, bm, ab, bb = a.to_mkldnn(), b.to_mkldnn(), a.bfloat16(), b.bfloat16()
impls = {"MKL float32": lambda: a @ b.t(), "oneDNN float32": lambda: torch._C._nn.mkldnn_linear(am, bm),
         "oneDNN bf16": lambda: ab @ bb.t()}
for f in impls.values():
    f()
diff = (impls["oneDNN float32"]().to_dense() - a @ b.t()).abs().max()
print(f"threads {sys.argv[1]}: largest |oneDNN - MKL| {diff:.2e}")
times = {k: [] for k in impls}
for _ in range(9):
    for name, f in impls.items():
        t0 = time.perf_counter()
        f()
        times[name].append(time.perf_counter() - t0)
med = {k: statistics.median(v) for k, v in times.items()}
for k, v in med.items():
    print(f"  {k:15s} {v * 1e3:6.1f} ms {2 * n * n * d / v / 1e9:4.0f} GFLOP/s {v / med['MKL float32']:.2f}x of MKL")
