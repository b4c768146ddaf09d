"""Scripts around kse-onnx, run as modules from the repository root:
``benchmarks/`` (timings and memory), ``results/`` (the README and docs tables),
``scripts/`` (setup, demo, tests, fuzzing, model builders), ``fuzzing/`` (the fuzz
cases, shared with tests/test_fuzz.py), ``common.py`` (what they all share)."""
