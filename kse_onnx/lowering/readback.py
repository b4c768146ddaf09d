"""Read a compressed Conv's shared kernels and bias back out of a lowered graph.

``verify`` needs them for a refitted model, whose kernels are no longer the clustered
ones the analysis recomputes. Only values are read: the codes (``labels``), the kept
channels and the forms come from the plan and the recorded forms, so the reference
built from what is read here still differs from the optimized model wherever the
graph breaks the sharing, drops a channel or wires a kernel to the wrong filter.

- ``dense`` (and ``whole``, ``compact``): the Conv named like the original reads
  ``W_hat[:, keep]``, a constant or ``Gather(codebook, Cast(codes))`` of constants;
- ``factored``: ``{name}_kse_level{g}`` holds each clustered channel's kernels in order,
  ``{name}_kse_whole`` the whole channels; the bias sits on the fusion Conv, the
  ``{name}_kse_bias4d`` constant or the whole-channel Conv.
The kernel of slot (c, j) is the mean of the weight kernels that use it.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..analysis.plan import LayerPlan
from ..errors import ModelError
from ..graph.core import constant_values
from . import LayerForm


def folded(tensor) -> np.ndarray | None:
    """Values of a constant, or of ``Gather(constant, [Cast](constant), axis=0)``."""
    values = constant_values(tensor)
    if values is not None:
        return values
    producers = getattr(tensor, "inputs", [])
    if len(producers) != 1 or producers[0].op != "Gather" or producers[0].attrs.get("axis", 0):
        return None
    data, index = producers[0].inputs[0], producers[0].inputs[1]
    table = constant_values(data)
    codes = constant_values(index)
    if codes is None and len(getattr(index, "inputs", [])) == 1 and index.inputs[0].op == "Cast":
        codes = constant_values(index.inputs[0].inputs[0])
    if table is None or codes is None:
        return None
    return table[codes.astype(np.int64)]


def read_weight(graph: gs.Graph, name: str, plan: LayerPlan, form: LayerForm,
                rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(dense weight (N, C, kh, kw) as the optimized graph computes it, bias or None).
    ``rows``: the filters a pruned producer kept (``dense`` only); the others read as 0."""
    nodes = {node.name: node for node in graph.nodes}
    n, c, kh, kw = plan.weight_shape
    weight = np.zeros(plan.weight_shape, plan.w_hat.dtype)
    if form.form == "dense":
        node = nodes.get(name)
        values = None if node is None else folded(node.inputs[1])
        keep = form.keep(plan)
        rows = np.arange(n) if rows is None else np.asarray(rows, np.int64)
        if values is None or values.shape != (len(rows), len(keep), kh, kw):
            raise ModelError(f"node {name!r}: its weight in the optimized model is not the "
                             f"{form.label} form the model records")
        weight[np.ix_(rows, keep)] = values
        bias = _bias(node)
        if bias is not None and len(bias) == len(rows) < n:
            full = np.zeros(n, bias.dtype)
            full[rows] = bias
            bias = full
        return weight, bias
    bias = None
    clustered = (plan.q > 0) & (plan.q < n)
    for level in sorted(set(plan.levels[clustered].tolist())):
        channels = np.flatnonzero((plan.levels == level) & clustered)
        node = nodes.get(f"{name}_kse_level{level}")
        values = None if node is None else constant_values(node.inputs[1])
        q = int(plan.q[channels[0]])
        if values is None or values.shape != (len(channels) * q, 1, kh, kw):
            raise ModelError(f"node {name!r}: level {level} of its factored form is missing "
                             "or has the wrong shape in the optimized model")
        for i, ch in enumerate(channels):
            weight[:, ch] = values[i * q:(i + 1) * q, 0][plan.labels[:, ch]]
    whole = np.flatnonzero(plan.q == n)
    if len(whole):
        node = nodes.get(f"{name}_kse_whole")
        values = None if node is None else constant_values(node.inputs[1])
        if values is None or values.shape != (n, len(whole), kh, kw):
            raise ModelError(f"node {name!r}: its whole-channel Conv is missing or has the "
                             "wrong shape in the optimized model")
        weight[:, whole] = values
        bias = _bias(node)
    for tail in ("_kse_fusion",):
        if f"{name}{tail}" in nodes:
            bias = _bias(nodes[f"{name}{tail}"]) if bias is None else bias
    tensors = graph.tensors()
    if bias is None and f"{name}_kse_bias4d" in tensors:
        bias = constant_values(tensors[f"{name}_kse_bias4d"]).reshape(-1)
    return weight, bias


def _bias(node) -> np.ndarray | None:
    if len(node.inputs) < 3 or not node.inputs[2].name:
        return None
    values = constant_values(node.inputs[2])
    return None if values is None else values.reshape(-1)
