#!/bin/bash
# A (base HEAD) / B (transposed grads) in turns: cpu-5b soft_fwd_bwd, cpu backend, both layouts
set -e
for r in 4 5 6 7; do
  for arm in base main; do
    dir=/tmp/s17/base; [ $arm = main ] && dir=/work/main
    for lay in bhtd; do
      (cd $dir && OMP_NUM_THREADS=2 /work/main/.venv/bin/python -m ditflow_fast.cli bench --preset cpu-5b --modes soft_fwd_bwd --backends cpu --layout $lay --no-memory --no-refcheck --repeats 12 --out /tmp/s17/ab_${arm}_${lay}_r$r.jsonl > /tmp/s17/ab_${arm}_${lay}_r$r.txt 2>&1)
    done
  done
done
