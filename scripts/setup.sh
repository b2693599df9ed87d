#!/usr/bin/env bash
# Installs the harness and its data packages into the current Python. Idempotent.
# torch: an installed torch (e.g. a CUDA build on a GPU machine) is kept; otherwise the CPU
# build 2.13.0 is installed first, so the bare `torch` requirement never pulls a CUDA build.
set -euo pipefail
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.."
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install --quiet "torch==2.13.0"
fi
"$PY" -m pip install --quiet -e ".[dev]"
"$PY" -m pip install --quiet --no-deps -r requirements-data.txt
"$PY" -c "import torch, transformers, mlperf_loadgen; print('setup ok: torch', torch.__version__, '| transformers', transformers.__version__)"
