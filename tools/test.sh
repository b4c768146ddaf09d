#!/usr/bin/env bash
# Set up everything the tests need, lint, and run the default (fast) test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh dev,finetune
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"
