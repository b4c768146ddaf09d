"""Short internal tensor names for quantized outputs.

onnxruntime's quantizer derives every name it adds from the exporter's long tensor
names (``/layer1/layer1.0/conv2/Conv_output_0_QuantizeLinear_Output``): in a small
INT8 model the names are about a fifth of the file. Internal tensors carry no meaning
for the user, so they become ``t0, t1, ...`` in order of first appearance; graph input
and output names, Conv node names (the report's layer names) and the ops are unchanged,
so the outputs are identical.
"""

from __future__ import annotations

import onnx

from ..graph.optypes import CONVS

KEEP_NODE_NAMES = CONVS  # the report names layers by them


def shorten_names(model: onnx.ModelProto) -> None:
    """Rename ``model``'s internal tensors and non-Conv nodes in place (not a model with
    subgraphs, whose inner nodes may read outer names)."""
    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for node in graph.node for a in node.attribute):
        return
    fixed = {v.name for v in (*graph.input, *graph.output)}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in fixed:
            return name
        if name not in names:
            names[name] = f"t{len(names)}"
        return names[name]

    for init in graph.initializer:
        init.name = short(init.name)
    for node in graph.node:
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
        if node.op_type not in KEEP_NODE_NAMES:
            node.name = ""
    for info in graph.value_info:
        info.name = short(info.name)
