"""Which Conv nodes KSE may compress, and the reason each other Conv is left alone."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ..options import SelectOptions
from .core import constant_values
from .optypes import CONVS, QUANTIZED_CONVS
from .walk import rank, static_dim


@dataclass
class ConvSite:
    """A Conv node of the graph, with its weight when that is a constant."""

    name: str
    node: gs.Node
    weight: np.ndarray | None
    output_hw: int | None  # output height * width, None when shape inference cannot tell
    reason: str | None  # None: eligible


def weight_source(tensor) -> str:
    """What produces a non-constant weight, for the skip reason."""
    producers = getattr(tensor, "inputs", [])
    if producers and producers[0].op == "DequantizeLinear":
        return "quantized conv (weight from DequantizeLinear): not supported"
    if not producers:
        return "weight is not a constant (a graph input the caller may override)"
    return "weight is not a constant"


def conv_sites(graph: gs.Graph, options: SelectOptions) -> list[ConvSite]:
    """Every Conv (and quantized conv) node, in graph order, eligible or with a reason."""
    graph_inputs = preprocessed_inputs(graph)
    sites = []
    for node in graph.nodes:
        if node.op in QUANTIZED_CONVS:
            sites.append(ConvSite(node.name, node, None, None, "quantized conv: not supported"))
        if node.op != "Conv":
            continue
        weight = constant_values(node.inputs[1])
        sites.append(ConvSite(node.name, node, weight, _output_hw(node),
                              _reason(node, weight, graph_inputs, options)))
    return sites


# What a model may do to its input before the first conv (normalise, resize, layout,
# batch): steps that move, copy or rescale the input's values but never mix its
# channels into learned features, so the conv after them still reads the colours
SHAPE_STEPS = {"Identity", "Cast", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
               "Gather", "Slice", "Pad", "Concat", "Expand", "Tile", "Split", "Resize",
               "Upsample", "DepthToSpace", "SpaceToDepth", "Dropout"}
ELEMENTWISE_STEPS = {"Sub", "Div", "Mul", "Add", "Clip", "Neg", "Abs", "Sqrt", "Reciprocal",
                     "Min", "Max", "Floor", "Ceil", "Round", "BatchNormalization"}
PREPROCESSING = SHAPE_STEPS | ELEMENTWISE_STEPS
# ops whose outputs are learned features: what is computed from them is no preprocessing
LEARNED = {*CONVS, "ConvTranspose", "Gemm", "MatMul", "MatMulInteger", "QLinearMatMul",
           "Einsum", "LSTM", "GRU", "RNN"}


def preprocessed_inputs(graph: gs.Graph) -> set[str]:
    """Names of the graph inputs and of every tensor computed from one by preprocessing
    steps only (:data:`PREPROCESSING`): a conv reading one of them is the model's first
    conv. A step passes the input on when its data operand (the first; any operand of
    Concat and of elementwise steps) is the input, and no operand comes from a learned
    op (:data:`LEARNED`): sizes, scales, means and indices may be computed in the graph,
    as exporters write them (torchvision's detectors resize and batch in the graph)."""
    names = {t.name for t in graph.inputs}
    features: set[str] = set()
    for node in graph.nodes:  # ONNX keeps nodes in topological order
        operands = [t.name for t in node.inputs if t.name]
        if node.op in LEARNED or features.intersection(operands):
            features.update(t.name for t in node.outputs)
            continue
        if node.op not in PREPROCESSING or not operands:
            continue
        anywhere = node.op in ELEMENTWISE_STEPS or node.op == "Concat"
        if names.intersection(operands) if anywhere else node.inputs[0].name in names:
            names.update(t.name for t in node.outputs)
    return names


def _reason(node, weight, graph_inputs, options: SelectOptions) -> str | None:
    if weight is None:
        return weight_source(node.inputs[1])
    if weight.ndim != 4:
        return f"not a 2-D convolution (weight rank {weight.ndim})"
    if weight.dtype.kind != "f" and weight.dtype.name != "bfloat16":
        return f"weight dtype {weight.dtype} is not floating point"
    if node.attrs.get("group", 1) != 1:
        kind = "depthwise" if weight.shape[1] == 1 else "grouped"
        return f"{kind} conv (group={node.attrs['group']}): out of KSE's scope"
    if options.keep_first and node.inputs[0].name in graph_inputs:
        return "first conv (reads a graph input)"
    return options.skip_reason(node.name)


def _output_hw(node) -> int | None:
    y = node.outputs[0]
    h, w = static_dim(y, 2), static_dim(y, 3)
    if rank(y) != 4 or h is None or w is None:
        return None
    return int(h) * int(w)
