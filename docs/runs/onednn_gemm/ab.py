"""The `cpu` backend with its float32 GEMMs on MKL (DITFLOW_FAST_CPU_ONEDNN=0) against oneDNN (=1), through
`compute_amf` on the bench's inputs, one process, the two interleaved (order alternating), each call paired with
MKL's GEMM `Q_cat @ K_cat^T` timed just before it; also oneDNN's own float32 GEMM of that shape (torch's
mkldnn_linear on oneDNN tensors, output left in oneDNN's layout). Prints per arm the median time and the median
of the per-call ratios to MKL's GEMM. MODE: argmax, soft or soft_fwd_bwd (backward with a fixed upstream gradient).
Run: OMP_NUM_THREADS=2 .venv/bin/python docs/runs/onednn_gemm/ab.py PRESET ROUNDS [MODE...]"""

import os
import statistics
import sys
import time

import torch

from ditflow_fast import compute_amf
from ditflow_fast.backends.layout import concat_heads
from ditflow_fast.bench.cases import CaseSpec, make_inputs

torch.set_num_threads(2)
preset, rounds = sys.argv[1], int(sys.argv[2])
modes = sys.argv[3:] or ["argmax", "soft", "soft_fwd_bwd"]
g = CaseSpec("cpu", "soft", preset, "float32", "cpu", 0).geometry
q, k = make_inputs(CaseSpec("cpu", "soft", preset, "float32", "cpu", 0))
qc, kc = concat_heads(q, g.text_tokens, torch.float32)[0], concat_heads(k, g.text_tokens, torch.float32)[0]
qd, kd = qc.to_mkldnn(), kc.to_mkldnn()
grads = {}


def timed(f, *args):
    t0 = time.perf_counter()
    f(*args)
    return time.perf_counter() - t0


def run(mode):
    if mode != "soft_fwd_bwd":
        return compute_amf(q, k, frames=g.frames, height=g.height, width=g.width, text_tokens=g.text_tokens,
                           mode=mode, backend="cpu")
    qg, kg = q.detach().requires_grad_(), k.detach().requires_grad_()
    out = compute_amf(qg, kg, frames=g.frames, height=g.height, width=g.width, text_tokens=g.text_tokens,
                      mode="soft", backend="cpu")
    grad = grads.setdefault(out.shape, torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
    return torch.autograd.grad(out, (qg, kg), grad)


arms = {"MKL": run, "oneDNN": run, "oneDNN GEMM": lambda m: torch._C._nn.mkldnn_linear(qd, kd)}
knob = {"MKL": "0", "oneDNN": "1", "oneDNN GEMM": "1"}
for mode in modes:
    got = {name: [] for name in arms}
    for r in range(rounds + 1):  # round 0 warms up
        order = list(arms) if r % 2 == 0 else list(arms)[::-1]
        for name in order:
            os.environ["DITFLOW_FAST_CPU_ONEDNN"] = knob[name]
            gemm = timed(lambda: torch.mm(qc, kc.t()))
            t = timed(arms[name], mode)
            if r:
                got[name].append((t, gemm))
    print(f"{preset} {mode}, {rounds} rounds: " + "; ".join(
        f"{name} {statistics.median(t for t, _ in v) * 1e3:.1f} ms ({statistics.median(t / b for t, b in v):.3f}x)"
        for name, v in got.items()), flush=True)
