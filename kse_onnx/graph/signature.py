"""Timing signatures: what a small graph's latency depends on, without the names and the
weight values that do not change it.

``auto`` times each compressed layer as a few small graphs (its candidate forms). Two
layers whose candidates have equal signatures run the same operators with the same
attributes on tensors of the same shapes and types (input shape, kept channels, the
per-level kernel counts q of the factored form, ...), so one timing serves both
(docs/lowering.md, "auto"). ResNet-style networks repeat most layer shapes.
"""

from __future__ import annotations

import hashlib

import onnx


def timing_signature(models: dict[str, onnx.ModelProto]) -> str:
    """A short hex digest of ``models`` (label -> model): labels, operators, attributes,
    graph inputs and constants by type and shape, tensors numbered in order of use.
    Equal digests: same computations on same-shaped data; weight values and every
    name are left out."""
    digest = hashlib.sha256()
    for label, model in models.items():
        digest.update(f"model {label}\n".encode())
        for line in _lines(model.graph):
            digest.update(line.encode() + b"\n")
    return digest.hexdigest()[:16]


def _lines(graph: onnx.GraphProto):
    numbers: dict[str, int] = {}

    def number(name: str) -> str:
        if not name:
            return "-"
        return f"t{numbers.setdefault(name, len(numbers))}"

    for value in graph.input:
        yield f"input {number(value.name)} {_type(value.type)}"
    for tensor in graph.initializer:
        yield f"const {number(tensor.name)} {tensor.data_type} {list(tensor.dims)}"
    for node in graph.node:
        attrs = ";".join(f"{a.name}={_attribute(a)}" for a in sorted(node.attribute,
                                                                     key=lambda a: a.name))
        yield (f"{node.domain}:{node.op_type} [{attrs}] "
               f"{','.join(number(x) for x in node.input)} -> "
               f"{','.join(number(y) for y in node.output)}")
    for value in graph.output:
        yield f"output {number(value.name)}"


def _type(proto: onnx.TypeProto) -> str:
    tensor = proto.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else "?" for d in tensor.shape.dim]
    return f"{tensor.elem_type} {dims}"


def _attribute(attr: onnx.AttributeProto) -> str:
    if attr.type == onnx.AttributeProto.TENSOR:  # a Constant node: its type and shape
        return f"tensor {attr.t.data_type} {list(attr.t.dims)}"
    if attr.type == onnx.AttributeProto.GRAPH:
        return "graph " + "|".join(_lines(attr.g))
    value = onnx.helper.get_attribute_value(attr)
    return repr(value)
