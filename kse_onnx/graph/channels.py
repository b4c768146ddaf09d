"""Channel bookkeeping: which input channels a compressed Conv keeps, and whether the
tensor it reads can lose those channels at their producer instead of through a Gather
(a ``chain`` :class:`.group.Group`).

A chain ``P -> op1 -> ... -> t -> Conv`` is prunable when ``P`` is a group-1 Conv with
constant weights, every op between is channel-wise (BatchNormalization, activations,
Add/Sub/Mul/Div with a per-channel or scalar constant), and every tensor on the way,
``t`` included, feeds exactly one node and is no graph output. Then dropping channels
from ``P``'s filters (and the per-channel parameters on the way) is exact, and nothing
else reads them: residual Adds and Concats are never pruned through.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .core import constant_values
from .group import Group
from .walk import consumers, producer

ELEMENTWISE_UNARY = {
    "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Elu", "Selu", "Celu", "Softplus", "Mish", "Gelu", "Identity", "Dropout", "Neg", "Abs",
}
ELEMENTWISE_BINARY = {"Add", "Sub", "Mul", "Div"}


def kept_channels(q: np.ndarray, indicator: np.ndarray, align: int) -> np.ndarray:
    """Sorted input channels the lowered Conv reads: those with q > 0, plus, to reach a
    multiple of ``align``, the pruned channels of highest indicator (their W_hat is 0,
    so the layer still computes exactly W_hat)."""
    keep = np.flatnonzero(q > 0)
    c = len(q)
    target = min(c, -(-len(keep) // align) * align)
    if target > len(keep):
        pruned = np.flatnonzero(q == 0)
        extra = pruned[np.argsort(-indicator[pruned], kind="stable")][: target - len(keep)]
        keep = np.sort(np.concatenate([keep, extra]))
    return keep


def chain(conv: gs.Node, outputs: set[str]) -> Group | str:
    """The ``chain`` group feeding ``conv``'s data input (``outputs``: the graph's
    output names), or the reason there is none."""
    tensor, between = conv.inputs[0], []
    while True:
        if not isinstance(tensor, gs.Variable):
            return f"tensor {tensor.name!r} is a constant"
        if tensor.name in outputs:
            return f"tensor {tensor.name!r} is a graph output"
        if len(consumers(tensor)) != 1:
            return f"tensor {tensor.name!r} is read by {len(consumers(tensor))} nodes"
        node = producer(tensor)
        if node is None:
            return f"tensor {tensor.name!r} is a graph input"
        if node.op == "Conv":
            if not _prunable_conv(node):
                return f"producer {node.name!r} is grouped or has no constant weight or bias"
            count = constant_values(node.inputs[1]).shape[0]
            ops = between[::-1]
            tensors = [t.name for t in [node.outputs[0], *(n.outputs[0] for n in ops)]]
            return Group("chain", {t: np.arange(count) for t in tensors}, [node], [conv], ops)
        if not _channelwise(node):
            return f"node {node.name!r} ({node.op}) is not channel-wise"
        between.append(node)
        tensor = node.inputs[0]


def _prunable_conv(node: gs.Node) -> bool:
    if node.attrs.get("group", 1) != 1 or len(node.outputs) != 1:
        return False
    weight = constant_values(node.inputs[1])
    if weight is None or weight.ndim != 4:
        return False
    return len(node.inputs) < 3 or constant_values(node.inputs[2]) is not None


def _channelwise(node: gs.Node) -> bool:
    """Node acts on each of its first input's channels separately."""
    if len(node.outputs) != 1 or not node.inputs:
        return False
    data = node.inputs[0]
    if node.op == "BatchNormalization":
        return len(node.outputs) == 1 and all(constant_values(t) is not None
                                              for t in node.inputs[1:])
    if node.op in ELEMENTWISE_UNARY:
        extra = [t for t in node.inputs[1:] if t.name]
        if node.op == "PRelu":
            return _per_channel_constant(extra[0]) is not None
        return all(constant_values(t) is not None and constant_values(t).size == 1
                   for t in extra)
    if node.op in ELEMENTWISE_BINARY and len(node.inputs) == 2:
        other = node.inputs[1]
        return isinstance(data, gs.Variable) and _per_channel_constant(other) is not None
    return False


def _per_channel_constant(tensor) -> np.ndarray | None:
    """A constant that broadcasts per channel on NCHW: scalar, (C,1,1), (1,C,1,1)."""
    values = constant_values(tensor)
    if values is None:
        return None
    if values.size == 1 or (values.ndim in (3, 4) and values.shape[-2:] == (1, 1)
                            and (values.ndim == 3 or values.shape[0] == 1)):
        return values
    return None
