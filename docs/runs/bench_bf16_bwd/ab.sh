#!/usr/bin/env bash
# Before/after of the bf16 soft backward. BEFORE: a clone of 77c4a4c set up by its `.ci/run` (its own .venv and
# built extension; the backward's gradient GEMMs in float32 on upcast copies); AFTER: this checkout, built. Each
# side runs its checkout's own .venv (the same pinned torch 2.13.0); runs alternate, nothing else running.
# Usage: BEFORE=/path/to/77c4a4c-clone bash ab.sh        (cpu-5b, two rounds: r{1,2}_{before,after})
#        BEFORE=/path/to/77c4a4c-clone bash ab.sh f6     (cogvideox-5b-f6, the cpu rows, one round: f6_*)
# PREFIX=name_ prefixes the output files (the fused-rounding A/B of the README: BEFORE a clone of 0be7ede).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
after="$(cd "$here/../../.." && pwd)"
before="${BEFORE:?set BEFORE to a set-up clone of 77c4a4c}"
prefix="${PREFIX:-}"
bench() {  # side out-name bench-args...
  local root out="$prefix$2"
  root=$([ "$1" = before ] && echo "$before" || echo "$after")
  shift 2
  # run from the checkout: `python -m` puts the working directory first on sys.path
  (cd "$root" && OMP_NUM_THREADS=2 .venv/bin/python -m ditflow_fast.cli bench --dtype bfloat16 --no-memory "$@" \
      --out "$here/$out.jsonl" > "$here/$out.txt")
}
if [ "${1:-}" = f6 ]; then
  for side in before after; do bench $side "f6_$side" --preset cogvideox-5b-f6 --repeats 3 --backends cpu; done
  exit 0
fi
for i in 1 2; do for side in before after; do
  bench $side "r${i}_$side" --preset cpu-5b --repeats 9 --backends cpu,torch,sdpa
done; done
