"""Shapes shape inference cannot tell, from one onnxruntime run.

ONNX shape inference loses spatial sizes behind ops whose output shape depends on values
(a Reshape by a computed shape, as in channel shuffles; an in-graph Resize by computed
sizes). Multiply-add counts and ``auto``'s per-layer timing graphs need each Conv's
input and output shapes, so when some are missing and every graph input has declared
sizes (other than the batch), the model is run once at batch 1 on random inputs with
those tensors added as outputs, and their shapes are set on the graph: the first axis
takes the graph input's symbolic batch, or, when the input declares its first axis (a
batch of fixed size, or no batch at all), the size the run gave. Best effort: a model
onnxruntime cannot run keeps its unknown shapes.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper


def _known(tensor) -> bool:
    shape = getattr(tensor, "shape", None)
    return shape is not None and len(shape) == 4 and all(isinstance(d, int) for d in shape[1:])


def fill_conv_shapes(graph: gs.Graph, model: onnx.ModelProto) -> int:
    """Set the missing shapes of Conv inputs and outputs of ``graph`` (imported from
    ``model``); returns how many were set."""
    missing = {}
    for node in graph.nodes:
        if node.op == "Conv":
            for tensor in (node.inputs[0], node.outputs[0]):
                if isinstance(tensor, gs.Variable) and not _known(tensor) and tensor.name:
                    missing[tensor.name] = tensor
    shapes = runtime_shapes(model, sorted(missing))
    inputs = [v for v in model.graph.input
              if v.name not in {i.name for i in model.graph.initializer}]
    if not shapes or not inputs:
        return 0
    batch = inputs[0].type.tensor_type.shape.dim[0]
    for name, shape in shapes.items():
        # a declared first axis is no batch (an unbatched 3xHxW image may become 1x3xHxW
        # in the graph): the run's shape is the shape; a symbolic one is the batch
        first = shape[0] if batch.HasField("dim_value") else batch.dim_param or "batch"
        missing[name].shape = [first, *shape[1:]]
    return len(shapes)


def runtime_shapes(model: onnx.ModelProto, names: list[str]) -> dict[str, list[int]]:
    """Shapes of the 4-D tensors ``names`` in one batch-1 onnxruntime run of ``model`` on
    random inputs; empty when a graph input has undeclared sizes or the run fails."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in inits]
    if not names or not inputs:
        return {}
    for value in inputs:
        dims = value.type.tensor_type.shape.dim
        if not dims or not all(d.HasField("dim_value") and d.dim_value > 0 for d in dims[1:]):
            return {}
    from ..runtime.ort import random_inputs, session  # onnxruntime only when needed

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    listed = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names
                              if n not in listed)
    try:
        sess = session(probe)
        outputs = [o.name for o in sess.get_outputs()]
        values = sess.run(None, random_inputs(sess, 1))
    except Exception:
        return {}
    wanted = set(names)
    return {name: [int(d) for d in np.shape(value)] for name, value in
            zip(outputs, values, strict=True) if name in wanted and np.ndim(value) == 4}
