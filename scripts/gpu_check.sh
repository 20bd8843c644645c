#!/usr/bin/env bash
# The one command of the device check, for the lent GPU machine (no network there):
#   bash scripts/gpu_check.sh OUTDIR [--budget SECONDS]
# installs the carried wheels (.gpu_wheels/, from scripts/fetch_gpu_wheels.sh) and this package with
# `pip install --no-index --no-deps` into the machine's own Python (torch and triton as they are there),
# builds the CUDA extension with the machine's nvcc, runs `pytest -m gpu`, the bf16 benchmark at
# cogvideox-5b-f6/-f13 and wan2.1-1.3b-f21, one real-size CogVideoX-5B guided step, and writes
# OUTDIR/summary.md and summary.json (after every step, so a timeout still leaves them). Each step has
# its own time budget within 8 minutes (scripts/gpu_check/check.py). Without a CUDA device the same
# script is the rehearsal: GPU steps skip with their reason, toy CPU stand-ins run, exit 0.
# PY: the Python to install into and run (default python3, the one holding torch on the GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: bash scripts/gpu_check.sh OUTDIR [--budget SECONDS]" >&2; exit 2; }
PY="${PY:-python3}"
exec "$PY" scripts/gpu_check/check.py --python "$(command -v "$PY")" "$@"
