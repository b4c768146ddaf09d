"""Which Conv nodes KSE may compress, and the reason each other Conv is left alone."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import first_line
from ..options import SelectOptions
from .inputs import overridable_as_inputs
from .names import remember_tensors, unique_node_names
from .optypes import CONVS, QUANTIZED_CONVS


@dataclass
class ConvSite:
    """A Conv node of the graph, with its weight when that is a constant."""

    name: str
    node: gs.Node
    weight: np.ndarray | None
    output_hw: int | None  # output height * width, None when shape inference cannot tell
    reason: str | None  # None: eligible


@contextlib.contextmanager
def quiet_graphsurgeon():
    """Silence onnx-graphsurgeon's warnings while it runs (dtypes numpy lacks, such as
    bfloat16, and its optional colour module: about graphsurgeon, not the user's model);
    its log level is restored afterwards, so importing kse_onnx changes nothing."""
    from onnx_graphsurgeon.logger import G_LOGGER

    before = G_LOGGER.severity
    G_LOGGER.severity = G_LOGGER.ERROR
    try:
        yield
    finally:
        G_LOGGER.severity = before


def import_graph(model: onnx.ModelProto, notes: list[str] | None = None) -> gs.Graph:
    """graphsurgeon view of ``model`` with inferred shapes: every node has a distinct
    name (:mod:`.names`), overridable initializers stay graph inputs (:mod:`.inputs`).

    A model shape inference cannot handle is still compressed, without output sizes (so
    without multiply-add counts); the failure is appended to ``notes`` for the report."""
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:
        if notes is not None:
            notes.append(f"shape inference failed ({first_line(exc)})")
    with quiet_graphsurgeon():
        graph = gs.import_onnx(model)
    overridable_as_inputs(model, graph)
    unique_node_names(graph)
    remember_tensors(graph)
    return graph


def weight_source(tensor) -> str:
    """What produces a non-constant weight, for the skip reason."""
    producers = getattr(tensor, "inputs", [])
    if producers and producers[0].op == "DequantizeLinear":
        return "quantized conv (weight from DequantizeLinear): not supported"
    if not producers:
        return "weight is not a constant (a graph input the caller may override)"
    return "weight is not a constant"


def constant_values(tensor) -> np.ndarray | None:
    """Values of an initializer or of a ``Constant`` node's output, reached through any
    chain of ``Identity`` nodes (exporters write them for tensors that are equal); else
    None. Overridable initializers are graph inputs here, so never constants."""
    for _ in range(64):  # a chain of Identity nodes, bounded
        producers = getattr(tensor, "inputs", [])
        if len(producers) != 1 or producers[0].op != "Identity" or not producers[0].inputs:
            break
        tensor = producers[0].inputs[0]
    if not isinstance(tensor, gs.Constant):
        producers = getattr(tensor, "inputs", [])
        if len(producers) != 1 or producers[0].op != "Constant":
            return None
        tensor = producers[0].attrs.get("value")
        if not isinstance(tensor, gs.Constant):
            return None
    with quiet_graphsurgeon():  # values are loaded lazily: bfloat16 warns here
        return np.asarray(tensor.values)


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
    shape = node.outputs[0].shape
    if shape is None or len(shape) != 4 or not all(isinstance(d, int) for d in shape[2:]):
        return None
    return int(shape[2]) * int(shape[3])
