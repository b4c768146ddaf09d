"""Channel bookkeeping: which input channels a compressed Conv keeps, and whether the
tensor it reads can lose those channels at their producer instead of through a Gather.

A chain ``P -> op1 -> ... -> t -> Conv`` is prunable when ``P`` is a group-1 Conv with
constant weights, every op between is channel-wise (BatchNormalization, activations,
Add/Sub/Mul/Div with a per-channel or scalar constant), and every tensor on the way,
``t`` included, feeds exactly one node and is no graph output. Then dropping channels
from ``P``'s filters (and the per-channel parameters on the way) is exact, and nothing
else reads them: residual Adds and Concats are never pruned through.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from .select import constant_values

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


@dataclass
class ProducerChain:
    """Tensors from a producer Conv's output to the consumer Conv's input, and the nodes
    between them (in order from the producer)."""

    head: gs.Variable  # the producer Conv's output
    nodes: list[gs.Node]


def producer_chain(graph: gs.Graph, conv: gs.Node) -> ProducerChain | None:
    """The prunable chain feeding ``conv``'s data input, or None."""
    outputs = {t.name for t in graph.outputs}
    tensor, between = conv.inputs[0], []
    while True:
        if not isinstance(tensor, gs.Variable) or tensor.name in outputs:
            return None
        if len(tensor.outputs) != 1 or len(tensor.inputs) != 1:
            return None
        node = tensor.inputs[0]
        if node.op == "Conv":
            return ProducerChain(tensor, between[::-1]) if _prunable_conv(node) else None
        if not _channelwise(node):
            return None
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


def prune_chain(chain: ProducerChain, keep: np.ndarray) -> None:
    """Keep only channels ``keep`` from the producer Conv through the chain."""
    producer = chain.head.inputs[0]
    _replace_input(producer, 1, constant_values(producer.inputs[1])[keep])
    if len(producer.inputs) > 2 and producer.inputs[2].name:
        _replace_input(producer, 2, constant_values(producer.inputs[2])[keep])
    for node in chain.nodes:
        if node.op == "BatchNormalization":
            for i in range(1, 5):
                _replace_input(node, i, constant_values(node.inputs[i])[keep])
        elif node.op == "PRelu" or node.op in ELEMENTWISE_BINARY:
            values = constant_values(node.inputs[1])
            if values.size > 1:
                _replace_input(node, 1, values[..., keep, :, :])


def _replace_input(node: gs.Node, index: int, values: np.ndarray) -> None:
    """Give ``node`` a new constant input (never mutates a constant others may share)."""
    node.inputs[index] = gs.Constant(f"{node.name}_kse_in{index}", np.ascontiguousarray(values))
