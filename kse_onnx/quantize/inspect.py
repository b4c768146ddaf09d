"""Which Convs onnxruntime runs as integer kernels, read from the graph it optimizes.

A QDQ model only says where values are quantized; the runtime decides which
``DequantizeLinear -> Conv -> QuantizeLinear`` groups it fuses into ``QLinearConv``.
So the model is loaded with the extended graph optimizations (constant folding, the QDQ
fusions; not the layout level, whose blocked ops depend on the CPU), the optimized
graph is written out, and every Conv weight is looked up there: read by QLinearConv or
ConvInteger -> integer, by a float Conv -> float. For a float one the reason is read off
the QDQ model: the first of its input, weight or output that is not (de)quantized.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime as ort

from ..graph.optypes import CONVS, QUANTIZED_CONVS

INTEGER_CONVS = QUANTIZED_CONVS


@dataclass
class ConvKernel:
    name: str
    integer: bool
    reason: str  # why it stays float ("" when integer)


def integer_convs(model: onnx.ModelProto, providers=("CPUExecutionProvider",)
                  ) -> list[ConvKernel]:
    """Each Conv of the (quantized) ``model`` with whether it runs as an integer kernel."""
    optimized = _optimized_graph(model, providers)
    integer_weights = {n.input[3] if n.op_type == "QLinearConv" else n.input[1]
                       for n in optimized.graph.node if n.op_type in INTEGER_CONVS}
    producers = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    kernels = []
    for node in model.graph.node:
        if node.op_type not in CONVS:
            continue
        weight = _weight_source(node, producers)
        integer = node.op_type in INTEGER_CONVS or weight in integer_weights
        reason = "" if integer else _float_reason(node, producers, consumers)
        kernels.append(ConvKernel(node.name, integer, reason))
    return kernels


def _weight_source(node, producers) -> str:
    """The stored weight tensor behind the Conv's weight input (through DQ, Gather)."""
    name = node.input[3] if node.op_type == "QLinearConv" else node.input[1]
    dq = producers.get(name)
    return dq.input[0] if dq is not None and dq.op_type == "DequantizeLinear" else name


def _float_reason(node, producers, consumers) -> str:
    data = producers.get(node.input[0])
    if data is None or data.op_type != "DequantizeLinear":
        source = "a graph input" if data is None else f"{data.op_type} {data.name!r}"
        return f"its input is not quantized (comes from {source})"
    weight = producers.get(node.input[1])
    if weight is None or weight.op_type != "DequantizeLinear":
        return "its weight is not quantized"
    readers = consumers.get(node.output[0], [])
    if len(readers) != 1 or readers[0].op_type != "QuantizeLinear":
        ops = ", ".join(sorted({r.op_type for r in readers})) or "a graph output"
        return f"its output is not quantized (read by {ops})"
    return "onnxruntime did not fuse it (no integer kernel for these attributes or types)"


def _optimized_graph(model: onnx.ModelProto, providers) -> onnx.ModelProto:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "optimized.onnx"
        options.optimized_model_filepath = str(path)
        ort.InferenceSession(model.SerializeToString(), options, providers=list(providers))
        return onnx.load(path)
