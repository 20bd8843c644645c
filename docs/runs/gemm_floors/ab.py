"""The GEMM floors a screened argmax could stand on, on this CPU: the heads-concatenated score GEMM of the cpu-5b
preset (N = 1,320, K = 48 x 64) in float32, bfloat16 (AVX-512-bf16 through oneDNN) and int8 (VNNI, torch._int_mm),
interleaved, median of 9 rounds, 2 threads. Run: .venv/bin/python docs/runs/gemm_floors/ab.py"""

import time

import torch

torch.set_num_threads(2)
torch.manual_seed(0)
N, K = 1320, 3072
a, b = torch.randn(N, K), torch.randn(K, N)
variants = {
    "float32": (lambda x, y: x @ y, a, b),
    "bfloat16": (lambda x, y: x @ y, a.bfloat16(), b.bfloat16()),
    "int8": (torch._int_mm, (a * 20).round().clamp(-127, 127).to(torch.int8),
             (b * 20).round().clamp(-127, 127).to(torch.int8)),
}
times = {k: [] for k in variants}
for f, x, y in variants.values():
    f(x, y)  # warm-up
for _ in range(9):
    for name, (f, x, y) in variants.items():
        t0 = time.perf_counter()
        f(x, y)
        times[name].append(time.perf_counter() - t0)
med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
for k, v in med.items():
    print(f"{k:9s} {v * 1e3:7.1f} ms  {v / med['float32']:.2f}x of float32")
