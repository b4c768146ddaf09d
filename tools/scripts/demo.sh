#!/usr/bin/env bash
# The main job on the bundled demo model: optimize, then verify against the original.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tools/scripts/setup_env.sh
mkdir -p out
.venv/bin/kse-onnx optimize models/small_cnn.onnx out/small_cnn_kse.onnx \
  --report out/small_cnn_kse.json "$@"
.venv/bin/kse-onnx verify models/small_cnn.onnx out/small_cnn_kse.onnx
