"""Paired ratios of `compute_amf` on the `cpu` backend to the float32 GEMM `Q_cat @ K_cat^T`, float32, at a preset:
each call is timed right after a GEMM of the same round, and the median of the per-call ratios is printed, for the
modes asked (argmax, soft, fwd_bwd: soft forward + backward with q and k requiring grad).
Before/after: run it alternately with PYTHONPATH pointing at a build of each commit (a `git worktree` built with
`setup.py build_ext --inplace`), the label as the last argument.
Run: OMP_NUM_THREADS=2 .venv/bin/python docs/runs/intel_xeon_s20/ab.py PRESET ROUNDS [MODES [LABEL]]"""

import statistics
import sys
import time

import torch

from ditflow_fast import compute_amf
from ditflow_fast.backends.layout import concat_heads
from ditflow_fast.bench.cases import CaseSpec, make_inputs, upstream_grad

torch.set_num_threads(2)
preset, rounds = sys.argv[1], int(sys.argv[2])
modes = sys.argv[3].split(",") if len(sys.argv) > 3 else ["argmax", "soft", "fwd_bwd"]
spec = CaseSpec("cpu", "soft_fwd_bwd", preset, "float32", "cpu", 0)
g = spec.geometry
q, k = make_inputs(spec, requires_grad=True)
grad_out = upstream_grad(spec, "cpu")
qc, kc = (concat_heads(t.detach(), g.text_tokens, torch.float32) for t in (q, k))
kw = dict(frames=g.frames, height=g.height, width=g.width, text_tokens=g.text_tokens, backend="cpu")


def fwd_bwd():
    q.grad = k.grad = None
    compute_amf(q, k, mode="soft", **kw).backward(grad_out)


def forward(mode):
    def run():
        with torch.no_grad():
            compute_amf(q, k, mode=mode, **kw)
    return run


def gemm():
    torch.mm(qc[0], kc[0].t())


calls = {m: fwd_bwd if m == "fwd_bwd" else forward(m) for m in modes}
ratios = {m: [] for m in modes}
for f in [gemm, *calls.values()]:
    f()
for _ in range(rounds):
    for m, f in calls.items():
        t0 = time.perf_counter()
        gemm()
        t1 = time.perf_counter()
        f()
        ratios[m].append((time.perf_counter() - t1) / (t1 - t0))
label = sys.argv[4] if len(sys.argv) > 4 else ""
print(label, preset, {m: round(statistics.median(v), 3) for m, v in ratios.items()})
