"""The order ``backend="auto"`` tries the backends in (lower first; None: never picked by auto), and why.

Kept apart from the backends so that a backend whose module fails to import is still listed, at
its rank, with the import error as its refusal (see :mod:`ditflow_fast.backends`).
"""

from __future__ import annotations

AUTO_RANK: dict[str, int | None] = {
    # The fused kernels first wherever they can run (CUDA; docs/triton.md).
    "triton": 10,
    # Ahead of the torch backend under "auto": in the committed benchmarks
    # (benchmarks/results/amd-epyc-2c_*.txt, docs/native.md) the argmax is 1.6x faster or more (bf16
    # screen) and the soft forward+backward 1.3x at the CPU-sized preset (kept scores), the soft
    # forward is at parity (GEMM-bound), and the soft modes take less peak memory.
    "cpu": 90,
    # Any device torch runs on: taken when no faster backend can run the input.
    "torch": 100,
    # Compiled and resource-checked (no spills for sm_80/sm_90), but never run on a GPU yet: kept
    # out of "auto" until the GPU tests have passed on real hardware.
    "cuda": None,
    # The float64 oracle materialises [B, H, N, N]: for tests and small shapes only.
    "reference": None,
}
