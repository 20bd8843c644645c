#!/usr/bin/env bash
# Before/after of the bf16 argmax: the same build (1ea69cd) with the screen off (DITFLOW_FAST_CPU_SCREEN=0: bf16
# inputs take the kernel's own bf16 tiles, what they took before this commit on a CPU without AMX) and on (the
# default: the bf16 screen on the inputs as they are), runs alternating, nothing else running.
set -euo pipefail
cd "$(dirname "$0")"
for i in 1 2 3; do for sc in 0 1; do
  DITFLOW_FAST_CPU_SCREEN=$sc OMP_NUM_THREADS=2 ditflow-fast bench --preset cpu-5b --dtype bfloat16 --modes argmax \
      --repeats 15 --no-memory --backends cpu --out r${i}_screen${sc}.jsonl > r${i}_screen${sc}.txt
done; done
for sc in 0 1; do
  DITFLOW_FAST_CPU_SCREEN=$sc OMP_NUM_THREADS=2 ditflow-fast bench --preset cogvideox-5b-f6 --dtype bfloat16 \
      --modes argmax --repeats 5 --no-memory --backends cpu --out f6_screen${sc}.jsonl > f6_screen${sc}.txt
done
