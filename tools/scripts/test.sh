#!/usr/bin/env bash
# Set up everything the tests need, lint, and run the default (fast) test suite.
set -euo pipefail
cd "$(dirname "$0")/../.."
# Real data for the fine-tuning test: Fashion-MNIST from Debian.
if [[ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]]; then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
fi
bash tools/scripts/setup_env.sh dev,finetune
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"
