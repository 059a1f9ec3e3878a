#!/usr/bin/env bash
# make gpu-check: the one-command CUDA validation of the fused op (stages, budget and outputs: bench/gpu_check.py).
#   bash bench/gpu_check.sh [--out DIR] [--budget SECONDS] [--only STAGE,...] [--dry-run]
#   bash bench/gpu_check.sh --fetch-wheels DIR     (wheels of the modules a bare GPU machine lacks; then run there
#                                                   with GPU_CHECK_WHEELS=DIR)
# Reads PYTHON (default python3), GPU_CHECK_OUT, GPU_CHECK_BUDGET_S and GPU_CHECK_WHEELS. Runs from the repository
# root; on a machine without CUDA it skips what needs CUDA, says so in the summary, and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ "${1:-}" = "--fetch-wheels" ]; then
  exec "$PYTHON" bench/gpu_check.py fetch-wheels "${2:?--fetch-wheels needs a folder}"
fi
exec "$PYTHON" bench/gpu_check.py run "$@"
