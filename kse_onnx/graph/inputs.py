"""The graph's input list, preserved exactly through import and export.

ONNX lets an initializer also be listed as a graph input. From IR 4 on, that makes it a
default the caller may override: not a constant, so KSE must not rewrite what reads it.
graphsurgeon imports it as a constant and drops it from the inputs; here it becomes a
graph input again (:func:`overridable_as_inputs`) and gets its default back on export.
IR 3 required every initializer to be listed as an input (the style of older zoo
models), which makes every weight part of the graph's input list: a rewrite cannot
keep that list (the compressed weights are other tensors), so such a model is refused
with the fix (:func:`refuse_listed_weights`) rather than written with other inputs;
:func:`check_same_inputs` holds every written model to its original's input list.
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs
from onnx import helper

from ..errors import ModelError


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


def listed_weights(model: onnx.ModelProto) -> list[str]:
    """Initializers the graph also lists as inputs, in input order."""
    inits = {i.name for i in model.graph.initializer}
    return [v.name for v in model.graph.input if v.name in inits]


def refuse_listed_weights(model: onnx.ModelProto, where) -> None:
    """An IR < 4 model listing its weights as graph inputs: compressing would change its
    graph inputs (the README promises the same ones), so it is refused, saying how to
    convert it (docs/lowering.md, "IR version 3")."""
    listed = listed_weights(model)
    if model.ir_version >= 4 or not listed:
        return
    shown = ", ".join(listed[:3]) + (f", ... ({len(listed)} in all)" if len(listed) > 3 else "")
    raise ModelError(f"{where}: IR version {model.ir_version} lists its weights as graph "
                     f"inputs ({shown}); compressing them would change the model's graph "
                     "inputs, so it is refused: re-save it at IR version >= 4 with only its "
                     "data inputs listed (docs/lowering.md, \"IR version 3\")")


def check_same_inputs(model: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """``model``, a rewrite of ``original``, has its graph input list: the same names in
    the same order, each overridable default of the same shape; else a ModelError."""
    def listed(m):
        dims = {i.name: list(i.dims) for i in m.graph.initializer}
        return [(v.name, dims.get(v.name)) for v in m.graph.input]

    before, after = listed(original), listed(model)
    if before != after:
        changed = sorted({n for n, _ in before} ^ {n for n, _ in after}
                         or {n for (n, d), (_, e) in zip(before, after, strict=False) if d != e})
        raise ModelError(f"the rewrite would change the model's graph inputs ({changed[:3]}"
                         f"{' ...' if len(changed) > 3 else ''}): refused, nothing written")


def _image_input(model: onnx.ModelProto):
    """The dims of the model's first graph input that is not an initializer, or None."""
    listed = {i.name for i in model.graph.initializer}
    for value in model.graph.input:
        if value.name not in listed:
            return value.type.tensor_type.shape.dim
    return None


def unbatched(model: onnx.ModelProto) -> bool:
    """True when the model's first input has rank 3: one image (C, H, W) without a batch
    axis (torchvision's detectors). Such a graph is defined on one image per run: the
    calibration images, still given batched (n, C, H, W), are fed one at a time with
    that axis dropped (:func:`as_fed`), and :func:`fixed_batch` is 1."""
    dims = _image_input(model)
    return dims is not None and len(dims) == 3


def fixed_batch(model: onnx.ModelProto) -> int | None:
    """The batch size the model's first input fixes (its first dimension, a number; 1 for
    an input without a batch axis, :func:`unbatched`), or None when it is symbolic or
    absent. Such a graph is defined on that many images at a time (a Reshape may hold the
    number), so whatever runs it in torch or onnxruntime runs it that many images at a
    time."""
    dims = _image_input(model)
    if dims is None:
        return None
    if len(dims) == 3:
        return 1
    if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
        return int(dims[0].dim_value)
    return None


def as_fed(x, model_unbatched: bool):
    """What one run of the model takes from the images ``x`` (a whole batch of it): ``x``,
    or for an input without a batch axis its one image ``x[0]``."""
    return x[0] if model_unbatched else x


def whole_batches(x, batch: int | None):
    """The first images of ``x`` that fill whole batches of ``batch`` (all of ``x`` when no
    batch is fixed, or when ``x`` holds fewer than one batch: the caller then says so)."""
    if not batch or len(x) < batch:
        return x
    return x[:len(x) - len(x) % batch]
