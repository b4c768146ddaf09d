"""Moved to :mod:`kse_onnx.data` (the readers serve ``eval`` and quantization too)."""

from ..data import (
    FASHION_MNIST,
    check_labels,
    fashion_mnist,
    load_data,
    load_dataset,
    preprocess,
    read_idx,
)

__all__ = ["FASHION_MNIST", "check_labels", "fashion_mnist", "load_data", "load_dataset",
           "preprocess", "read_idx"]
