"""kse-onnx: KSE (Kernel Sparsity and Entropy) compression of CNNs stored as ONNX.

The public API is re-exported here lazily: ``kse_onnx.optimize(model, calibration=x)``
returns the compressed ModelProto and its report, ``kse_onnx.save(result, path)`` writes
it (docs/pipelines.md). This module is the lowest layer of the package
(docs/architecture.md), so it imports nothing of its own at import time: each name is
loaded from the facade on first use (module ``__getattr__``, PEP 562).
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kse-onnx")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"

# public name -> (module, attribute); the only upward references of this module, checked
# by tests/test_layers.py (they point at the facade and nowhere else)
LAZY = {
    "optimize": ("kse_onnx.api", "optimize_model"),
    "save": ("kse_onnx.api", "save"),
    "score": ("kse_onnx.api", "score"),
    "Optimized": ("kse_onnx.api", "Optimized"),
    "ModelReport": ("kse_onnx.report", "ModelReport"),
    "REPORT_SCHEMA_VERSION": ("kse_onnx.report", "REPORT_SCHEMA_VERSION"),
    "KSEOptions": ("kse_onnx.options", "KSEOptions"),
    "SelectOptions": ("kse_onnx.options", "SelectOptions"),
    "LowerOptions": ("kse_onnx.options", "LowerOptions"),
    "TargetOptions": ("kse_onnx.options", "TargetOptions"),
    "QuantizeOptions": ("kse_onnx.options", "QuantizeOptions"),
    "RefitOptions": ("kse_onnx.options", "RefitOptions"),
    "DataOptions": ("kse_onnx.options", "DataOptions"),
    "BudgetOptions": ("kse_onnx.options", "BudgetOptions"),
    "GuardOptions": ("kse_onnx.options", "GuardOptions"),
    "ProgressOptions": ("kse_onnx.options", "ProgressOptions"),
    "KSEError": ("kse_onnx.errors", "KSEError"),
    "ModelError": ("kse_onnx.errors", "ModelError"),
    "OptionError": ("kse_onnx.errors", "OptionError"),
}
__all__ = ["__version__", *LAZY]


def __getattr__(name: str):
    if name not in LAZY:
        raise AttributeError(f"module 'kse_onnx' has no attribute {name!r}")
    module, attribute = LAZY[name]
    value = getattr(import_module(module), attribute)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__():
    return sorted([*globals(), *LAZY])
