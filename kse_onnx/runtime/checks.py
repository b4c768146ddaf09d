"""What ``verify`` decides from the models themselves, and the bounds on what it takes
from an untrusted model's metadata.

- the analysis settings recorded by ``optimize`` are re-validated through the option
  dataclasses (types and upper bounds: levels, k-means restarts and iterations, globs),
  so a crafted model cannot make ``verify`` run unbounded work; a bad value is an error
  naming the file;
- whether the output is quantized is read from its graph (quantization operators the
  original does not have), never from metadata: a float model claiming INT8 still gets
  the exactness check;
- the default tolerance of the exactness check follows the weights' precision.
"""

from __future__ import annotations

import onnx

from ..errors import ModelError, OptionError
from ..options import KSEOptions, SelectOptions

QUANTIZATION_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
                    "QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul",
                    "QLinearAdd", "QLinearMul", "QGemm"}
# relative tolerance of rewrite exactness by the lowest-precision float weight: the
# rewrite changes the order of summation, whose rounding scales with the dtype's epsilon
RTOL_BY_DTYPE = {onnx.TensorProto.FLOAT16: 1e-2, onnx.TensorProto.BFLOAT16: 5e-2}
DEFAULT_RTOL = 1e-4
MAX_SETTINGS_BYTES = 1 << 20


def analysis_options(settings, where) -> tuple[KSEOptions, SelectOptions]:
    """The KSE and selection options recorded in a model's metadata, validated."""
    if not isinstance(settings, dict):
        raise ModelError(f"{where}: kse-onnx settings in its metadata are not a mapping")
    try:
        kse = KSEOptions(**{k: settings[k] for k in KSEOptions.__dataclass_fields__})
        select = {k: settings[k] for k in SelectOptions.__dataclass_fields__}
        select = SelectOptions(**{k: tuple(v) if isinstance(v, list) else v
                                  for k, v in select.items()})
    except KeyError as exc:
        raise ModelError(f"{where}: kse-onnx settings lack {exc.args[0]!r}") from None
    except (OptionError, TypeError) as exc:
        raise ModelError(f"{where}: recorded kse-onnx setting refused: {exc}") from None
    return kse, select


def quantization_ops(model: onnx.ModelProto) -> int:
    return sum(node.op_type in QUANTIZATION_OPS for node in model.graph.node)


def is_quantized_output(original: onnx.ModelProto, optimized: onnx.ModelProto) -> bool:
    """The optimized graph has quantization operators the original has not."""
    return quantization_ops(optimized) > quantization_ops(original)


def default_rtol(model: onnx.ModelProto) -> float:
    """1e-2 when a float16 weight is present (5e-2 bfloat16), else 1e-4."""
    types = {i.data_type for i in model.graph.initializer}
    for node in model.graph.node:
        types.update(a.t.data_type for a in node.attribute if a.HasField("t"))
    return max([RTOL_BY_DTYPE[t] for t in types if t in RTOL_BY_DTYPE], default=DEFAULT_RTOL)
