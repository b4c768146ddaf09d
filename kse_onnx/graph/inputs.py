"""The graph's input list, preserved exactly through import and export.

ONNX lets an initializer also be listed as a graph input. From IR 4 on, that makes it a
default the caller may override: not a constant, so KSE must not rewrite what reads it.
graphsurgeon imports it as a constant and drops it from the inputs; here it becomes a
graph input again (:func:`overridable_as_inputs`) and gets its default back on export.
IR 3 required every initializer to be listed as an input (the style of older zoo
models): there they are constants, and the output lists its own initializers again.
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs
from onnx import helper


def overridable_as_inputs(model: onnx.ModelProto, graph: gs.Graph) -> None:
    """IR >= 4: turn initializers listed as graph inputs back into graph inputs of
    ``graph`` (variables, in the model's input order)."""
    inits = {i.name for i in model.graph.initializer}
    listed = [v.name for v in model.graph.input]
    if model.ir_version < 4 or not inits.intersection(listed):
        return
    tensors = graph.tensors()
    current = {t.name: t for t in graph.inputs}
    inputs = []
    for name in listed:
        tensor = current.get(name) or tensors.get(name)
        if isinstance(tensor, gs.Constant):
            variable = gs.Variable(name, dtype=tensor.dtype, shape=list(tensor.shape))
            for consumer in list(tensor.outputs):
                for i, t in enumerate(consumer.inputs):
                    if t is tensor:
                        consumer.inputs[i] = variable
            graph.outputs = [variable if t is tensor else t for t in graph.outputs]
            tensor = variable
        if tensor is not None:
            inputs.append(tensor)
    graph.inputs = inputs


def restore_graph_inputs(model: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Give ``model`` (exported from ``original``'s graph) ``original``'s input list:
    IR >= 4, overridable inputs get their default initializer back; IR < 4, every
    initializer is listed, the original's entries first, in their order."""
    defaults = {i.name: i for i in original.graph.initializer}
    inits = {i.name for i in model.graph.initializer}
    if original.ir_version >= 4:
        for value in model.graph.input:
            if value.name in defaults and value.name not in inits:
                model.graph.initializer.append(defaults[value.name])
        return
    data = {v.name for v in model.graph.input}
    listed = [v for v in original.graph.input if v.name in data or v.name in inits]
    names = {v.name for v in listed}
    listed += [helper.make_tensor_value_info(i.name, i.data_type, list(i.dims))
               for i in model.graph.initializer if i.name not in names]
    listed += [v for v in model.graph.input if v.name not in {x.name for x in listed}]
    del model.graph.input[:]
    model.graph.input.extend(listed)
