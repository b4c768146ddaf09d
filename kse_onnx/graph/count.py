"""Multiply-adds of the Convs a model file actually contains (batch 1).

The plan-level counts in :mod:`kse_onnx.report` say what KSE keeps; this says what
the written graph computes, alignment channels, producer pruning and the factored
form's grouped and 1x1 fusion Convs included.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def conv_counts(model: onnx.ModelProto) -> dict:
    """``weights``: elements of every Conv weight as the runtime sees it (after any
    expansion); ``macs``: sum of ``weights * H_out * W_out`` (None if a shape is unknown,
    both None when shape inference fails)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # recorded by the analysis (import_graph's notes)
        return {"weights": None, "macs": None}
    shapes = {v.name: _dims(v) for v in (*inferred.graph.value_info, *inferred.graph.output,
                                         *inferred.graph.input)}
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    for node in inferred.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = list(numpy_helper.to_array(attr.t).shape)
    unknown = [n.output[0] for n in inferred.graph.node if n.op_type == "Conv" and not (
        shapes.get(n.output[0]) and all(isinstance(d, int) for d in shapes[n.output[0]][2:]))]
    if unknown:  # sizes shape inference lost: from one onnxruntime run when it can
        from .runtime_shapes import runtime_shapes

        shapes.update(runtime_shapes(model, unknown))
    weights, macs = 0, 0
    for node in inferred.graph.node:
        if node.op_type != "Conv":
            continue
        weight, out = shapes.get(node.input[1]), shapes.get(node.output[0])
        if not weight or any(not isinstance(d, int) for d in weight):
            return {"weights": None, "macs": None}
        weights += int(np.prod(weight))
        if macs is not None and out and all(isinstance(d, int) for d in out[2:]):
            macs += int(np.prod(weight)) * int(np.prod(out[2:]))
        else:
            macs = None
    return {"weights": weights, "macs": macs}


def _dims(value_info) -> list:
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]


WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def weighted_depth(model: onnx.ModelProto) -> int:
    """The most weighted layers (Conv, ConvTranspose, Gemm, MatMul) on any path from an
    input to an output of the main graph: 20 for a ResNet-20 (the shortcut convs run
    beside the blocks, not after them), 56 for a ResNet-56. Subgraphs are not entered."""
    depth: dict[str, int] = {}
    for node in model.graph.node:  # ONNX orders nodes topologically
        d = max((depth.get(name, 0) for name in node.input if name), default=0)
        d += node.op_type in WEIGHTED_OPS
        for name in node.output:
            depth[name] = d
    return max((depth.get(v.name, 0) for v in model.graph.output), default=0)
