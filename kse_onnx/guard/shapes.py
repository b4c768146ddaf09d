"""Counts of models whose height and width are symbolic, at a known input size.

The report's multiply-adds need each Conv's output size; a model exported with symbolic
H and W has none until an input size is chosen. Given one (the calibration images' or
``--input-shape``), copies of both models with that size written into their input are
counted (shape inference, else one onnxruntime run): the models themselves keep their
symbolic sizes.
"""

from __future__ import annotations

import onnx

from ..graph.count import conv_counts
from ..graph.runtime_shapes import runtime_shapes


def with_input_size(model: onnx.ModelProto, shape: tuple[int, ...]) -> onnx.ModelProto | None:
    """A copy of ``model`` whose one input has ``shape`` after the batch axis (the batch
    stays symbolic); None when the model has several inputs or another rank."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(inputs[0].type.tensor_type.shape.dim) != len(shape) + 1:
        return None
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    value = next(i for i in copy.graph.input if i.name == inputs[0].name)
    for dim, size in zip(value.type.tensor_type.shape.dim[1:], shape, strict=True):
        if dim.HasField("dim_value") and dim.dim_value != size:
            return None  # a declared size wins: the images would not fit
        dim.dim_value = size
    del copy.graph.value_info[:]
    return copy


def fill_counts(report, original: onnx.ModelProto, optimized: onnx.ModelProto,
                shape: tuple[int, ...]) -> None:
    """Set the output sizes of layers counted as unknown, and the written graph's counts,
    at input ``shape`` (C, H, W); a no-op when everything was known."""
    unknown = [layer for layer in report.layers if layer.output_hw is None and layer.shape]
    graph = report.extra.get("graph_counts") or {}
    if not unknown and all((graph.get(k) or {}).get("macs") is not None
                           for k in ("before", "after")):
        return
    sized = with_input_size(original, shape)
    if sized is None:
        return
    if unknown:
        outputs = {n.name: n.output[0] for n in sized.graph.node if n.op_type == "Conv"}
        sizes = runtime_shapes(sized, sorted({outputs[x.name] for x in unknown
                                              if x.name in outputs}))
        for layer in unknown:
            found = sizes.get(outputs.get(layer.name, ""))
            if found:
                layer.output_hw = int(found[2] * found[3])
    if graph:
        after = with_input_size(optimized, shape)
        report.extra["graph_counts"] = {
            "before": conv_counts(sized),
            "after": conv_counts(after) if after is not None else graph["after"],
            "input_shape": list(shape)}
