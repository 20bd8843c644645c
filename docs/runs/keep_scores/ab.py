"""Soft forward+backward of the `cpu` backend at one preset, the scores kept (the new default budget) against
recomputed (the old 64 MiB budget), interleaved in one process, with the bare GEMM of the same run.

    OMP_NUM_THREADS=2 python docs/runs/keep_scores/ab.py [PRESET] [ROUNDS]
"""

import json
import os
import platform
import statistics
import sys
import time

from ditflow_fast.bench.cases import CaseSpec, build_case

preset = sys.argv[1] if len(sys.argv) > 1 else "cogvideox-5b-f6"
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
cases = {name: build_case(CaseSpec(impl, mode, preset, "float32", "cpu", 0))
         for name, impl, mode in (("gemm", "gemm", "gemm"), ("kept", "cpu", "soft_fwd_bwd"),
                                  ("recomputed", "cpu", "soft_fwd_bwd"))}
budget = {"gemm": None, "kept": None, "recomputed": "64"}
times = {name: [] for name in cases}
for r in range(rounds + 1):  # round 0 warms up
    for name, run in cases.items():
        if budget[name] is None:
            os.environ.pop("DITFLOW_FAST_CPU_KEEP_SCORES_MB", None)
        else:
            os.environ["DITFLOW_FAST_CPU_KEEP_SCORES_MB"] = budget[name]
        t0 = time.perf_counter()
        run()
        if r:
            times[name].append(time.perf_counter() - t0)
med = {name: statistics.median(t) for name, t in times.items()}
print(json.dumps({"preset": preset, "rounds": rounds, "threads": os.environ.get("OMP_NUM_THREADS"),
                  "cpu": platform.processor() or platform.machine(), "median_s": med,
                  "x_gemm": {n: round(m / med["gemm"], 3) for n, m in med.items()},
                  "kept_vs_recomputed": round(med["kept"] / med["recomputed"], 3), "all_s": times}, indent=1))
