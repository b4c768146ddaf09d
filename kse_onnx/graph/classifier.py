"""The model's classifier: the one definition kse-onnx uses (the refit fits it by least
squares, verify reads its refitted weights back).

A classifier is a Gemm with a constant B (and C, if any), A not transposed, whose
output reaches a graph output through ``CLASSIFIER_TAIL`` ops only. A residual group's
pooled Gemm (``GlobalAveragePool -> Flatten -> Gemm``, :mod:`.residual`) is another
rule about another thing: which Gemm reads a group's channels, wherever it sits (an MLP
head's first Gemm reads the pool and is no classifier; a classifier after a Reshape
reads no pool).
"""

from __future__ import annotations

import onnx

from .walk import proto_consumers

CLASSIFIER_TAIL = {"Softmax", "LogSoftmax", "Identity", "Flatten"}


def classifier_gemms(model: onnx.ModelProto) -> list[int]:
    """Indices of the Gemm nodes (constant weight, no transA) whose output reaches a
    graph output only through ``CLASSIFIER_TAIL`` ops: the classifiers the refit may fit."""
    graph = model.graph
    constant = {t.name for t in graph.initializer} | {
        n.output[0] for n in graph.node if n.op_type == "Constant"}
    outputs = {o.name for o in graph.output}
    readers = proto_consumers(graph)
    found = []
    for i, node in enumerate(graph.node):
        if node.op_type != "Gemm" or node.input[1] not in constant:
            continue
        if any(a.name == "transA" and a.i for a in node.attribute):
            continue
        if len(node.input) > 2 and node.input[2] and node.input[2] not in constant:
            continue
        tensor = node.output[0]
        while tensor not in outputs:
            after = sorted(set(readers.get(tensor, [])))
            if len(after) != 1 or graph.node[after[0]].op_type not in CLASSIFIER_TAIL:
                break
            tensor = graph.node[after[0]].output[0]
        if tensor in outputs:
            found.append(i)
    return found
