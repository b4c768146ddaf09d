"""What ``verify`` decides from the models themselves, and the bounds on what it takes
from an untrusted model's metadata.

- the settings recorded by ``optimize`` are read through
  :class:`kse_onnx.graph.settings.RecordedSettings`, which re-validates them with the
  option dataclasses (types and upper bounds: levels, k-means restarts and iterations,
  globs), so a crafted model cannot make ``verify`` run unbounded work;
- whether the output is quantized is read from its graph (quantization operators the
  original does not have), never from metadata: a float model claiming INT8 still gets
  the exactness check;
- the default tolerance of the exactness check follows the weights' precision;
- an INT8 output, which exactness cannot judge, passes only when its outputs carry the
  original's (:func:`collapse`).
"""

from __future__ import annotations

import onnx

QUANTIZATION_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
                    "QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul",
                    "QLinearAdd", "QLinearMul", "QGemm"}
# relative tolerance of rewrite exactness by the lowest-precision float weight: the
# rewrite changes the order of summation, whose rounding scales with the dtype's epsilon
RTOL_BY_DTYPE = {onnx.TensorProto.FLOAT16: 1e-2, onnx.TensorProto.BFLOAT16: 5e-2}
DEFAULT_RTOL = 1e-4
MAX_SETTINGS_BYTES = 1 << 20
# An INT8 output has collapsed when it tells no more about the original's outputs than
# a trivial predictor: a relative error of 1 is what an all-zero output scores, and a
# top-1 agreement of 1/classes what a random guess scores. Lines that need no tuning:
# they catch a model that computes nothing useful, not a small loss of accuracy, which
# the reported numbers show (docs/int8.md).
INT8_COLLAPSE_REL_ERROR = 1.0


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


def collapse(rel_error: float, top1_agreement: float | None, classes: int | None,
             worst_channel: tuple[int, int, float] | None = None) -> str | None:
    """Why an INT8 output has collapsed against the original's (``INT8_COLLAPSE_REL_ERROR``
    over a whole output or over one of its channels, chance-level agreement over
    ``classes`` logits), or None."""
    if not rel_error < INT8_COLLAPSE_REL_ERROR:  # NaN collapses too
        return (f"relative error {rel_error:.3g} >= {INT8_COLLAPSE_REL_ERROR:g} (an all-zero "
                "output scores 1)")
    if worst_channel is not None and not worst_channel[2] < INT8_COLLAPSE_REL_ERROR:
        output, channel, error = worst_channel
        return (f"channel {channel} of output {output} has relative error {error:.3g} >= "
                f"{INT8_COLLAPSE_REL_ERROR:g} (an all-zero channel scores 1; the whole "
                f"output's error is {rel_error:.3g})")
    if top1_agreement is not None and classes and top1_agreement <= 1 / classes:
        return (f"top-1 agreement {top1_agreement:.3f} is chance level or below "
                f"(1/{classes} classes)")
    return None
