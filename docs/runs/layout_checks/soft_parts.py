"""The cpu-5b soft forward by input layout: the bare GEMM, the kernel alone on ready copies, compute_amf on
contiguous [B, H, T, d] inputs and on [B, H, T, d] views of [B, T, H, d] tensors, and the torch backend, interleaved
in one process. Usage: python soft_parts.py ROUNDS. Prints medians and the median per-round ratio to the GEMM."""

import statistics
import sys
import time

import torch

from ditflow_fast import _native, compute_amf

torch.manual_seed(0)
H, D, F, h, w, TXT = 48, 64, 4, 15, 22, 226
N = F * h * w
T = N + TXT
q, k = torch.randn(1, H, T, D), torch.randn(1, H, T, D)
qt, kt = (torch.randn(1, T, H, D).permute(0, 2, 1, 3) for _ in range(2))


def rows(t):
    return t[:, :, TXT:].permute(0, 2, 1, 3).reshape(1, N, H * D).contiguous()


qc, kc = rows(q), rows(k)
ops = _native.ops()
kw = dict(frames=F, height=h, width=w, text_tokens=TXT, mode="soft", backend="cpu")
calls = {
    "gemm": lambda: torch.mm(qc[0], kc[0].t()),
    "kernel_alone": lambda: ops.amf_forward(qc, kc, F, h, w, 0.3, True),
    "compute_amf_bhtd": lambda: compute_amf(q, k, **kw),
    "compute_amf_bthd_view": lambda: compute_amf(qt, kt, **kw),
    "torch_backend_bhtd": lambda: compute_amf(q, k, **{**kw, "backend": "torch"}),
}
times = {name: [] for name in calls}
for _ in range(int(sys.argv[1])):
    for name, f in calls.items():
        t = time.perf_counter()
        f()
        times[name].append(time.perf_counter() - t)
for name, v in times.items():
    ratio = statistics.median(x / g for x, g in zip(v, times["gemm"], strict=True))
    print(f"{name:22s} median {statistics.median(v) * 1e3:7.2f} ms  paired/gemm {ratio:.3f}")
