#!/usr/bin/env bash
# Before/after of the kept scratch buffers: the same build with them off (DITFLOW_FAST_CPU_SCRATCH_MB=0,
# every call allocates its temporaries, as before) and on (the default cap), runs alternating.
set -euo pipefail
cd "$(dirname "$0")"
for i in 1 2; do for mb in 0 64; do for dt in float32 bfloat16; do
  DITFLOW_FAST_CPU_SCRATCH_MB=$mb OMP_NUM_THREADS=2 ditflow-fast bench --preset cpu-5b --dtype $dt --repeats 9 \
      --no-memory --backends cpu,torch --out r${i}_mb${mb}_${dt}.jsonl > r${i}_mb${mb}_${dt}.txt
done; done; done
