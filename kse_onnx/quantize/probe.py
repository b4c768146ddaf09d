"""One node's share of an INT8 model's error: its QDQ model with every other node's
rounding bypassed.

A QDQ model marks where values are rounded: ``DequantizeLinear(QuantizeLinear(x))`` on
activations, ``DequantizeLinear(w_int8)`` on weights and biases. :func:`alone` keeps the
DequantizeLinear nodes next to the named nodes (those feeding them, and those of the
activations they produce) and replaces every other one by an Identity of the float
value: the activation before its QuantizeLinear (through the Relu or Clip the quantizer
folded into that rounding, put back), or the float model's tensor at the same input of
the same node (onnxruntime keeps node names). Running it is one forward pass,
where quantizing again with a node left out (``nodes_to_exclude``) is a calibration each.
A DequantizeLinear read by several nodes is kept for all of them when one is probed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx
from onnx import helper

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
ABSORBED = ("Relu", "Clip")  # the quantizer drops them before a QuantizeLinear (uint8 clamps)


@dataclass
class QdqIndex:
    """Where a QDQ ``model`` rounds, read once: for each DequantizeLinear output, its float
    value (None when unknown: then it is never bypassed) and the nodes it is next to."""

    model: onnx.ModelProto
    floating: onnx.ModelProto
    float_value: dict[str, str | None] = field(default_factory=dict)
    neighbours: dict[str, set[str]] = field(default_factory=dict)  # DQ output -> node names
    absorbed: dict[str, onnx.NodeProto] = field(default_factory=dict)  # DQ output -> Relu

    @classmethod
    def of(cls, model: onnx.ModelProto, floating: onnx.ModelProto) -> QdqIndex:
        """``model``: onnxruntime's QDQ output for ``floating``, the float model it read."""
        index = cls(model, floating)
        producers = {out: node for node in model.graph.node for out in node.output}
        float_nodes = {n.name: n for n in floating.graph.node if n.name}
        float_producers = {out: n for n in floating.graph.node for out in n.output}
        float_inits = {i.name for i in floating.graph.initializer}
        readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for node in model.graph.node:
            for i, name in enumerate(node.input):
                readers.setdefault(name, []).append((node, i))
        for dq in model.graph.node:
            if dq.op_type != "DequantizeLinear":
                continue
            out = dq.output[0]
            near = {n.name for n, _ in readers.get(out, []) if n.op_type not in QDQ_OPS}
            q = producers.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                value = q.input[0]
                source = producers.get(value)
                if source is not None and source.op_type not in QDQ_OPS:
                    near.add(source.name)
                meant = float_producers.get(value)
                if (meant is not None and meant.op_type in ABSORBED and source is not None
                        and source.op_type != meant.op_type):
                    index.absorbed[out] = meant
            else:  # a weight or bias: the float model's tensor at the same input
                value = None
                for node, i in readers.get(out, []):
                    twin = float_nodes.get(node.name)
                    if twin is not None and i < len(twin.input) and twin.input[i] in float_inits:
                        value = twin.input[i]
                        break
            index.float_value[out] = value
            index.neighbours[out] = near - {""}
        return index

    def nodes(self) -> list[str]:
        """The named nodes next to some rounding, in graph order: what can be left float."""
        near = set().union(*self.neighbours.values()) if self.neighbours else set()
        seen, order = set(), []
        for node in self.model.graph.node:
            if node.name in near and node.name not in seen and node.op_type not in QDQ_OPS:
                seen.add(node.name)
                order.append(node.name)
        return order

    def alone(self, names: set[str]) -> onnx.ModelProto:
        """The QDQ model rounding only next to ``names``; the rest in float."""
        probe = onnx.ModelProto()
        probe.CopyFrom(self.model)
        have = {i.name for i in probe.graph.initializer}
        float_inits = {i.name: i for i in self.floating.graph.initializer}
        nodes = []
        for node in probe.graph.node:
            out = node.output[0] if node.output else ""
            value = self.float_value.get(out) if node.op_type == "DequantizeLinear" else None
            if value is None or self.neighbours.get(out, set()) & names:
                nodes.append(node)
                continue
            if value not in have and value in float_inits:
                probe.graph.initializer.append(float_inits[value])
                have.add(value)
            absorbed = self.absorbed.get(out)
            if absorbed is not None:  # the Relu the quantizer folded into this rounding
                for name in absorbed.input[1:]:
                    if name and name not in have and name in float_inits:
                        probe.graph.initializer.append(float_inits[name])
                        have.add(name)
                redo = onnx.NodeProto()
                redo.CopyFrom(absorbed)
                redo.input[0], redo.output[0], redo.name = value, out, f"{out}_float"
                nodes.append(redo)
            elif value != out:  # onnxruntime may name a weight's DQ output as the weight
                nodes.append(helper.make_node("Identity", [value], [out], name=f"{out}_float"))
        del probe.graph.node[:]
        probe.graph.node.extend(nodes)
        return probe
