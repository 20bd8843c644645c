"""How much the two ratios to the GEMM move between runs: x_floor (median / median) and x_floor_paired (median of
per-repeat ratios, the GEMM called just before each timed call), over the runs in a bench JSON-lines file.
Made by six runs of
  OMP_NUM_THREADS=2 ditflow-fast bench --preset cpu-5b --modes soft,argmax --backends cpu,torch --no-memory \\
      --no-refcheck --repeats 9 --out docs/runs/paired_ratio/amd-epyc-zen4-2c_cpu-5b_6runs.jsonl
Run: .venv/bin/python docs/runs/paired_ratio/spread.py [FILE]"""

import json
import statistics
import sys
from pathlib import Path

path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("amd-epyc-zen4-2c_cpu-5b_6runs.jsonl")
records = [json.loads(line) for line in path.read_text().splitlines()]
for impl, mode in (("cpu", "soft"), ("torch", "soft"), ("cpu", "argmax"), ("torch", "argmax")):
    rows = [next(r for r in rec["rows"] if r["impl"] == impl and r["mode"] == mode) for rec in records]
    for key in ("x_floor", "x_floor_paired"):
        values = [r[key] for r in rows]
        print(f"{impl:6s} {mode:7s} {key:15s} " + " ".join(f"{v:.3f}" for v in values)
              + f"   sd {statistics.stdev(values):.3f}")
