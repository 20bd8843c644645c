#!/usr/bin/env bash
# The device check's rehearsal on a machine without a GPU (CI runs it):
#   bash scripts/gpu_check/rehearse.sh [OUTDIR]     (default build/gpu_check_rehearsal)
# The scratch environment is .venv-triton36 (.ci/triton36.sh): CPU torch 2.13.0 and triton 3.6 already
# installed, with the packages the GPU machine's image has but not diffusers. It is reset to that state
# (the carried packages and this one uninstalled), the wheels are fetched if missing, and then
# scripts/gpu_check.sh runs exactly as on the GPU machine: install with --no-index from the wheels,
# every step that can run, the GPU steps skipped with their reasons.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUTDIR="${1:-build/gpu_check_rehearsal}"
VENV="${VENV36:-.venv-triton36}"
bash .ci/triton36.sh env
[ -n "$(ls .gpu_wheels/*.whl 2>/dev/null)" ] || bash scripts/fetch_gpu_wheels.sh
# Back to what the GPU machine has: none of the carried packages, not this one.
mapfile -t CARRIED < <(sed -e 's/#.*//' -e 's/==.*//' -e 's/[[:space:]]//g' scripts/gpu_check/wheels.txt | grep -v '^$')
"$VENV/bin/python" -m pip uninstall -q -y "${CARRIED[@]}" ditflow-fast 2>&1 | grep -v "not installed" || true
"$VENV/bin/python" -c "import diffusers" 2>/dev/null && { echo "diffusers still importable in $VENV" >&2; exit 1; }
# One thread: the toy stand-ins' small ops run faster so on a shared 2-core machine.
OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" PY="$VENV/bin/python" bash scripts/gpu_check.sh "$OUTDIR"
