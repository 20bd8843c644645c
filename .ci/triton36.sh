#!/usr/bin/env bash
# The second environment of CI, .venv-triton36/: the oldest triton the kernels are checked against
# (3.6, what the lent GPU machine has) beside the same CPU torch 2.13.0 as .venv (its CPU build does not
# require triton, so pip installs 3.6 beside it without complaint), numpy below 2.3 (numpy 2.4+ breaks
# triton 3.6's interpreter: "only 0-dimensional arrays can be converted to Python scalars"), and the
# other packages the GPU machine's image has that the device check uses (huggingface_hub 1.33,
# safetensors 0.8, ...), but not diffusers: so it doubles as the scratch environment of the device
# check's rehearsal (scripts/gpu_check/rehearse.sh), which installs diffusers from the carried wheels.
#   bash .ci/triton36.sh env    create or refresh the environment (idempotent: a stamp holds its recipe)
#   bash .ci/triton36.sh test   (default) also install the package there (editable, --no-index
#                               --no-deps, no native build) and run the Triton interpreter tests and
#                               the cubin compile check (tests/core/test_triton_kernels.py) under triton 3.6
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV36:-.venv-triton36}"
PY="$VENV/bin/python"
REQS=(torch==2.13.0 'triton==3.6.*' 'numpy<2.3' 'setuptools>=64' wheel ninja pytest pytest-benchmark
      'huggingface_hub==1.33.*' 'safetensors==0.8.*' regex requests pillow pyyaml tqdm zipp filelock fsspec)
STAMP="$VENV/.recipe"

if [ ! -x "$PY" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "${REQS[*]}" ]; then
  echo "== creating $VENV: ${REQS[*]}"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$PY" -m pip install -q "${REQS[@]}"
  echo "${REQS[*]}" >"$STAMP"
fi
"$PY" - <<'PYEOF'
import importlib.metadata as md
print("triton-3.6 env:", ", ".join(f"{d} {md.version(d)}" for d in ("torch", "triton", "numpy")))
print("torch requires:", md.requires("torch"))
PYEOF

[ "${1:-test}" = env ] && exit 0
if ! "$PY" -c "import importlib.metadata as m; m.version('ditflow-fast')" 2>/dev/null; then
  DITFLOW_FAST_BUILD_CPU=0 "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e .
fi
# The test module reruns its interpreter tests in a fresh process and runs the compile check in
# another: both use this interpreter (sys.executable).
OMP_NUM_THREADS=1 "$PY" -m pytest -q -p no:cacheprovider tests/core/test_triton_kernels.py
