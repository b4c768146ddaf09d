"""The refitted model: the input model with each fitted Conv's new bias and the refitted
classifier added as initializers under fresh names (the kernels go back into the plans,
lowered afterwards)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .layer import SharedConv


def refitted_model(model: onnx.ModelProto, names: list[str], convs: dict[int, SharedConv],
                   classifier: tuple[int, dict[str, np.ndarray]] | None) -> onnx.ModelProto:
    """A copy of ``model`` whose fitted Convs (node index -> conv, committed here into
    their plans) read their refitted biases, and whose classifier ``(node index, values
    of its weight and bias)`` reads its refitted ones."""
    model_copy = onnx.ModelProto()
    model_copy.CopyFrom(model)
    graph = model_copy.graph
    taken = {t.name for t in graph.initializer} | {
        o for n in graph.node for o in n.output} | {t.name for t in graph.input}

    def add(name: str, values: np.ndarray) -> str:
        unique, k = name, 0
        while unique in taken:
            k += 1
            unique = f"{name}_{k}"
        taken.add(unique)
        graph.initializer.append(numpy_helper.from_array(values, unique))
        return unique

    for i, conv in convs.items():
        bias = conv.commit()
        node = graph.node[i]
        name = add(f"{names[i]}_kse_refit_bias", bias)
        if len(node.input) > 2:
            node.input[2] = name
        else:
            node.input.append(name)
    if classifier is not None:
        i, values = classifier
        node = graph.node[i]
        for position, value in zip((1, 2), values.values(), strict=False):
            node.input[position] = add(f"{names[i]}_kse_refit_"
                                       f"{'weight' if position == 1 else 'bias'}", value)
    return model_copy
