"""ONNX graphs run with torch: the op table (``ops``, ``resize``), the one interpreter
that walks nodes through it (``interpreter``), and how the refit holds activations over
a whole calibration set (``held``, ``holding``)."""
