#!/usr/bin/env bash
# Create .venv inside the repo and install kse-onnx with the given extras (default: none).
# torch is pinned to 2.13.0 (the CPU build) by the "finetune" extra; an unpinned torch
# would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
spec="."
[[ -n "$extras" ]] && spec=".[${extras}]"
.venv/bin/python -m pip install --quiet -e "$spec" 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c "import kse_onnx" # fail loudly if the install did not work
