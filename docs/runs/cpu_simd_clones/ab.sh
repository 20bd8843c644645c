#!/usr/bin/env bash
# Before/after of b33d942: the soft reduction and the logit-gradient pass compiled inside their AVX-512 / AVX2
# clones (before, every clone called one out-of-line SSE2 copy of them). BEFORE: a checkout of 9935261 with its
# extension built and a .venv (a symlink to this checkout's works: `python -m` from the checkout imports its
# own package). AFTER: this checkout, built. Runs alternate, nothing else running.
# Usage: BEFORE=/path/to/9935261-checkout bash ab.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
after="$(cd "$here/../../.." && pwd)"
before="${BEFORE:?set BEFORE to a built checkout of 9935261}"
bench() {  # side out-name bench-args...
  local root out="$2"
  root=$([ "$1" = before ] && echo "$before" || echo "$after")
  shift 2
  (cd "$root" && OMP_NUM_THREADS=2 .venv/bin/python -m ditflow_fast.cli bench --no-memory --backends cpu "$@" \
      --out "$here/$out.jsonl" > "$here/$out.txt")
}
for i in 1 2; do for side in before after; do for dt in float32 bfloat16; do
  bench $side "r${i}_${dt}_$side" --preset cpu-5b --dtype $dt --modes soft,soft_fwd_bwd --repeats 15
done; done; done
for side in before after; do
  bench $side "f6_$side" --preset cogvideox-5b-f6 --dtype float32 --modes soft --repeats 3
done
