"""Timings and memory of kse-onnx itself (``python -m tools.benchmarks.NAME``)."""
