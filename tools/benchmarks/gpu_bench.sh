#!/usr/bin/env bash
# The latency table on a GPU machine: CUDA, then TensorRT (each skipped with a clear
# message when this onnxruntime build or machine lacks it). Run from the repository:
#     bash tools/benchmarks/gpu_bench.sh [extra python -m tools.results.latency_table options]
# It replaces onnxruntime by onnxruntime-gpu in .venv (the two install the same module).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tools/scripts/setup_env.sh gpu,finetune
.venv/bin/python -m pip uninstall --quiet --yes onnxruntime >/dev/null 2>&1 || true
.venv/bin/python -m pip install --quiet --force-reinstall --no-deps "onnxruntime-gpu>=1.17"
for provider in cuda tensorrt; do
  echo "## provider: $provider"
  .venv/bin/python -m tools.results.latency_table --provider "$provider" "$@" \
    || echo "provider $provider: not usable here (see the error above)"
done
