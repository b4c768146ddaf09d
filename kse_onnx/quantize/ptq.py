"""Post-training INT8 with ``onnxruntime.quantization``, KSE sharing kept.

Static: QDQ format, uint8 activations and int8 weights (the pair onnxruntime's x86 and
ARM integer kernels take), MinMax calibration on the first ``images`` inputs, weights
per output channel except those of KSE-compressed Convs, which get one scale per tensor
so that their shared kernels stay shared in int8 (:mod:`.shared`). Dynamic: weights
int8 per tensor, activations quantized at run time (ConvInteger). Compact weights are
expanded first (onnx-graphsurgeon's constant folding), since the quantizer only
quantizes initializers.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter
import onnx_graphsurgeon as gs

from ..errors import ModelError, first_line
from ..graph.core import quiet_graphsurgeon
from ..graph.export import copy_model_fields
from ..graph.inputs import overridable_as_inputs, restore_graph_inputs, unbatched
from ..graph.walk import default_opset
from ..options import QUANTIZE_MODES
from .shared import quantized_weight_names, share_int8_weights


class _Batches:
    """onnxruntime's CalibrationDataReader protocol over an array, 32 images a batch (a
    batch read when it is asked for: images held on disk are never read whole)."""

    def __init__(self, name: str, x: np.ndarray, batch: int = 32):
        self.items = [{name: x[i:i + batch]} for i in range(0, len(x), batch)]

    def get_next(self):
        return {k: np.asarray(v) for k, v in self.items.pop(0).items()} if self.items else None


@contextlib.contextmanager
def _quiet_root_logger():
    """The quantizer advises pre-processing through the root logger on every call: our
    graphs are already shape-inferred and folded, so the advice is noise here."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def expand_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with constant subgraphs (compact codebook expansions) folded."""
    with quiet_graphsurgeon():
        graph = gs.import_onnx(model)
        overridable_as_inputs(model, graph)  # a caller may override them: never folded
        graph.fold_constants().cleanup()
        folded = gs.export_onnx(graph)
    restore_graph_inputs(folded, model)
    return copy_model_fields(folded, model)


STATIC_MIN_OPSET = 13  # per-channel DequantizeLinear (axis attribute) came in opset 13


def at_least_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """``model`` converted to ``opset`` by onnx.version_converter when below it (checked
    with the full checker); a ModelError when the conversion fails."""
    current = default_opset(model)
    if current is not None and current >= opset:
        return model
    try:
        converted = onnx.version_converter.convert_version(model, opset)
        onnx.checker.check_model(converted, full_check=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"opset {current}: int8-static needs opset >= {opset} (per-channel "
                         f"DequantizeLinear) and onnx.version_converter cannot raise this "
                         f"model to it ({first}); convert the input first") from None
    if not converted.metadata_props:
        converted.metadata_props.extend(model.metadata_props)
    return converted


def input_convs(model: onnx.ModelProto) -> set[str]:
    """Names of the Convs whose data input is a graph input (not an initializer)."""
    stored = {t.name for t in model.graph.initializer}
    inputs = {i.name for i in model.graph.input} - stored
    return {n.name for n in model.graph.node if n.op_type == "Conv" and n.input[0] in inputs}


def refuse_unbatched(model: onnx.ModelProto) -> None:
    """int8-static on a model whose input has no batch axis: refused in one line (the
    static quantizer feeds its calibration data reader's batches (n, C, H, W) and gathers
    every tensor's range over them; a detector's per-image outputs of varying length
    would not gather)."""
    if unbatched(model):
        raise ModelError("int8-static: the model's input takes one image without a batch "
                         "axis; onnxruntime's static quantizer calibrates on batches "
                         "(n, C, H, W): export the model with a batch axis, or use "
                         "int8-dynamic")


def quantize_int8(model: onnx.ModelProto, mode: str, shared_convs: set[str],
                  calibration: np.ndarray | None = None, share: bool = True,
                  float_convs: set[str] = frozenset()) -> tuple[onnx.ModelProto, list[str]]:
    """(quantized model, weights stored as int8 codebook + codes). The Convs named in
    ``shared_convs`` get per-tensor weights; ``share`` stores theirs as codebook + codes;
    those in ``float_convs`` stay float (int8-static)."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if mode not in QUANTIZE_MODES or mode == "none":
        raise ValueError(f"unknown quantization mode {mode!r}")
    floating = expand_constants(model)
    if mode == "int8-static":
        refuse_unbatched(model)
        floating = at_least_opset(floating, STATIC_MIN_OPSET)
    weights = {n.input[1] for n in floating.graph.node
               if n.op_type == "Conv" and n.name in shared_convs}
    with tempfile.TemporaryDirectory() as tmp, _quiet_root_logger():
        out = Path(tmp) / "int8.onnx"
        try:
            if mode == "int8-static":
                if calibration is None or not len(calibration):
                    raise ModelError("int8-static needs calibration inputs (--calibration)")
                name = floating.graph.input[0].name
                quantize_static(
                    floating, out, _Batches(name, calibration), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=True, calibrate_method=CalibrationMethod.MinMax,
                    nodes_to_exclude=sorted(float_convs),
                    extra_options={"TensorQuantOverrides": {
                        w: [{"symmetric": True}] for w in sorted(weights)}})
            else:
                quantize_dynamic(floating, out, weight_type=QuantType.QInt8, per_channel=False)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"onnxruntime.quantization failed: {first_line(exc)}") from exc
        quantized = onnx.load(out)
    quantized.metadata_props.extend(p for p in floating.metadata_props
                                    if p.key not in {q.key for q in quantized.metadata_props})
    if not share:
        return quantized, []
    return quantized, share_int8_weights(quantized,
                                         quantized_weight_names(quantized, shared_convs))
