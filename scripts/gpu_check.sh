#!/usr/bin/env bash
# The one command of the device check, for the lent GPU machine (no network there):
#   bash scripts/gpu_check.sh OUTDIR
# installs the carried wheels (.gpu_wheels/, from scripts/fetch_gpu_wheels.sh) and this package with
# `pip install --no-index --no-deps` into the machine's own Python (torch and triton as they are there),
# builds the CUDA extension with the machine's nvcc, runs `pytest -m gpu`, the bf16 benchmark at
# cogvideox-5b-f6/-f13 and wan2.1-1.3b-f21, one real-size CogVideoX-5B guided step, real-size guided steps
# of the other families (scripts/gpu_check/family_steps.py), the KeOps and faiss-gpu argmax peer rows (these
# two additions have never run on a GPU; each skips with its reason), and writes
# OUTDIR/summary.md and summary.json (after every step, so a timeout still leaves them). Each step has
# its own time budget within GPU_CHECK_BUDGET_S (default 480 s; scripts/gpu_check/check.py); a hard
# limit of that plus 40 s stops a hung check. Without a CUDA device the same script is the rehearsal
# (through scripts/gpu_check/rehearse.sh when PY is not given): GPU steps skip with their reason, toy
# CPU stand-ins run.
# PY: the Python to install into and run (default python3, the one holding torch on the GPU machine).
# GPU_CHECK_PACK=DIR: afterwards (also after a timeout) put OUTDIR as gpu_check.tar.gz and the two
# summary files into DIR (the device returns at most 8 files: use GPU_CHECK_PACK=$OUT there).
# Exit status: the check's (0 unless a step failed or timed out; 124 when the hard limit stopped it).
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 1 ] || { echo "usage: bash scripts/gpu_check.sh OUTDIR" >&2; exit 2; }
OUTDIR="$1"
# No PY given and python3 sees no CUDA device (this machine, CI): the rehearsal, which builds the scratch
# environment like the GPU machine's and calls this script again with PY set to it.
if [ -z "${PY:-}" ] && ! python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null
then
  echo "python3 sees no CUDA device: rehearsal in a scratch environment (scripts/gpu_check/rehearse.sh)"
  exec bash scripts/gpu_check/rehearse.sh "$OUTDIR"
fi
PY="${PY:-python3}"
BUDGET="${GPU_CHECK_BUDGET_S:-480}"
mkdir -p "$OUTDIR"
status=0
timeout -k 10 "$((${BUDGET%.*} + 40))" "$PY" scripts/gpu_check/check.py --python "$(command -v "$PY")" \
  --budget "$BUDGET" "$OUTDIR" || status=$?
if [ -n "${GPU_CHECK_PACK:-}" ]; then
  mkdir -p "$GPU_CHECK_PACK"
  "$PY" scripts/gpu_check/summary.py "$OUTDIR" >/dev/null 2>&1 || true  # in case the check was killed
  tar czf "$GPU_CHECK_PACK/gpu_check.tar.gz" -C "$(dirname "$OUTDIR")" "$(basename "$OUTDIR")"
  cp "$OUTDIR"/summary.md "$OUTDIR"/summary.json "$GPU_CHECK_PACK"/ 2>/dev/null || true
  echo "packed into $GPU_CHECK_PACK: gpu_check.tar.gz summary.md summary.json"
fi
exit "$status"
