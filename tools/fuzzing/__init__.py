"""Fuzz cases: random graphs, mutated model bytes and structure, damaged data files;
run a few by tests/test_fuzz.py, thousands by ``python -m tools.scripts.fuzz``."""
