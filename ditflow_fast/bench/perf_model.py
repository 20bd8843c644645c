"""Performance model of one AMF call: FLOPs, minimum bytes moved, and the floor time on a GPU.

Work (``N`` video tokens, ``H`` heads of size ``d``, ``F`` frames):

* forward, either mode: one ``N x N`` GEMM over the heads-concatenated vectors,
  ``2 * N^2 * H * d`` FLOPs (the per-frame reductions are ``O(N^2)``, negligible);
* soft backward: the recomputed logits plus ``dQ = dz @ K`` and ``dK = dz^T @ Q``, three more
  GEMMs of that size, so forward + backward is about ``4x`` the forward.

Minimum bytes (each input read once, each output written once):

* forward: ``Q`` and ``K`` video tokens (``2 * N * H * d`` elements of the input dtype), the
  ``[F, F, hw, 2]`` float32 output (``8 * N * F`` bytes) and in soft mode the float32
  log-sum-exp (``4 * N * F``);
* backward: ``Q``, ``K``, the log-sum-exp, the per-query soft targets (``8 * N * F``) and the
  upstream gradient (``8 * N * F``) read; ``dQ``, ``dK`` written in the input dtype.

The floor of a call is ``max(FLOPs / peak FLOP/s, bytes / peak bandwidth)`` at datasheet peaks
(dense bf16/fp16 tensor-core FLOP/s with fp32 accumulation). At CogVideoX sizes the AMF is
compute-bound by a wide margin (``N = 8,100``: ~400 GFLOP against ~100 MB).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..geometry import AMFGeometry


@dataclass(frozen=True)
class Peak:
    name: str
    flops: float  # dense bf16 tensor-core FLOP/s, fp32 accumulate
    bandwidth: float  # bytes/s
    source: str


GPU_PEAKS = {
    "A100": Peak("A100 SXM", 312e12, 2.0e12, "NVIDIA A100 datasheet: 312 TFLOP/s bf16 dense, 2.0 TB/s (80 GB)"),
    "H100": Peak("H100 SXM", 989e12, 3.35e12, "NVIDIA H100 datasheet: 989 TFLOP/s bf16 dense, 3.35 TB/s (SXM)"),
    "4090": Peak("RTX 4090", 165.2e12, 1.008e12,
                 "Ada whitepaper: 165.2 TFLOP/s bf16 dense with fp32 accumulate (330 with fp16 accumulate), 1008 GB/s"),
}


def forward_flops(p: AMFGeometry) -> float:
    return 2.0 * p.tokens**2 * p.heads * p.head_dim


def flops(p: AMFGeometry, mode: str) -> float:
    """Nominal FLOPs of a case: the same for every row of a mode, so FLOP/s compares rows fairly."""
    return 4.0 * forward_flops(p) if mode == "soft_fwd_bwd" else forward_flops(p)


def min_bytes(p: AMFGeometry, mode: str, elem: int) -> float:
    """Minimum bytes moved by one call (see the module docstring)."""
    n, f = p.tokens, p.frames
    qk = 2.0 * n * p.heads * p.head_dim * elem
    if mode == "gemm":
        return qk + 4.0 * n * n
    fwd = qk + 8.0 * n * f + (4.0 * n * f if mode != "argmax" else 0.0)
    if mode != "soft_fwd_bwd":
        return fwd
    bwd = qk + 4.0 * n * f + 8.0 * n * f + 8.0 * n * f + qk
    return fwd + bwd


def peak_for(device_name: str | None) -> Peak | None:
    """The datasheet peak matching a GPU name (``torch.cuda.get_device_name()``), or None."""
    if not device_name:
        return None
    for key, peak in GPU_PEAKS.items():
        if key in device_name:
            return peak
    return None


def floor_seconds(p: AMFGeometry, mode: str, elem: int, peak: Peak) -> float:
    return max(flops(p, mode) / peak.flops, min_bytes(p, mode, elem) / peak.bandwidth)


def floor_table(p: AMFGeometry, elem: int = 2) -> list[dict]:
    """Floor time per GPU and mode (bf16 inputs by default), for the docs and the bench output."""
    rows = []
    for peak in GPU_PEAKS.values():
        for mode in ("argmax", "soft", "soft_fwd_bwd"):
            rows.append({"gpu": peak.name, "mode": mode, "gflop": flops(p, mode) / 1e9,
                         "min_mb": min_bytes(p, mode, elem) / 1e6,
                         "floor_ms": 1e3 * floor_seconds(p, mode, elem, peak)})
    return rows
