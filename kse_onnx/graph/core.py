"""The graph core every module builds on: a graphsurgeon view of a model
(:func:`import_graph`), the constant values behind a tensor (:func:`constant_values`),
and graphsurgeon kept quiet while it runs."""

from __future__ import annotations

import contextlib

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import first_line
from .inputs import overridable_as_inputs
from .names import remember_tensors, unique_node_names
from .walk import producer


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


def constant_values(tensor) -> np.ndarray | None:
    """Values of an initializer or of a ``Constant`` node's output, reached through any
    chain of ``Identity`` nodes (exporters write them for tensors that are equal); else
    None. Overridable initializers are graph inputs here, so never constants."""
    for _ in range(64):  # a chain of Identity nodes, bounded
        node = producer(tensor)
        if node is None or node.op != "Identity" or not node.inputs:
            break
        tensor = node.inputs[0]
    if not isinstance(tensor, gs.Constant):
        node = producer(tensor)
        if node is None or node.op != "Constant":
            return None
        tensor = node.attrs.get("value")
        if not isinstance(tensor, gs.Constant):
            return None
    with quiet_graphsurgeon():  # values are loaded lazily: bfloat16 warns here
        return np.asarray(tensor.values)
