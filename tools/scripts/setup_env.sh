#!/usr/bin/env bash
# Create .venv inside the repo and install kse-onnx with the given extras (default: none).
# torch is pinned to 2.13.0 (the CPU build) by the "finetune" extra; an unpinned torch
# would pull a multi-GB CUDA build. pip's output is shown only when it fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
extras="${1:-}"
if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
spec="."
[[ -n "$extras" ]] && spec=".[${extras}]"
for args in "--upgrade pip" "-e $spec"; do
  # shellcheck disable=SC2086
  if ! log=$(.venv/bin/python -m pip install --quiet $args 2>&1); then
    echo "$log" >&2
    echo "setup failed: pip install $args" >&2
    exit 1
  fi
done
.venv/bin/python -c "import kse_onnx" # fail loudly if the install did not work
