"""kse-onnx: KSE (Kernel Sparsity and Entropy) compression of CNNs stored as ONNX."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kse-onnx")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"
