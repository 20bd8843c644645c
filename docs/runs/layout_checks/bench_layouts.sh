#!/usr/bin/env bash
# The cpu and torch rows at cpu-5b in both input layouts, alternating, 2 rounds (run from the checkout's root
# with its venv on PATH, nothing else running).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
for i in 1 2; do for layout in bhtd bthd; do
  OMP_NUM_THREADS=2 ditflow-fast bench --preset cpu-5b --layout $layout --backends cpu,torch --repeats 15 --no-memory \
      --out "$here/r${i}_$layout.jsonl" > "$here/r${i}_$layout.txt"
done; done
