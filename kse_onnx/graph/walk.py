"""Walking a graph: who writes a tensor, who reads it, what is known of its shape, and
the model's default opset. One set of helpers for every graph walker of the package,
on a graphsurgeon view (:func:`producer`, :func:`consumers`, :func:`static_dim`) and on
a ModelProto (:func:`proto_producers`, :func:`proto_consumers`, :func:`default_opset`).
"""

from __future__ import annotations

import onnx

DEFAULT_DOMAINS = ("", "ai.onnx")


def default_opset(model: onnx.ModelProto) -> int | None:
    """The model's default-domain (ai.onnx) opset version; None when it imports none
    (``graph.io.load_model`` refuses such a model, so a loaded model always has one)."""
    for entry in model.opset_import:
        if entry.domain in DEFAULT_DOMAINS:
            return int(entry.version)
    return None


def producer(tensor):
    """The node writing graphsurgeon tensor ``tensor``, or None (a graph input, a
    constant, or a tensor written by several nodes, which ONNX forbids)."""
    writers = getattr(tensor, "inputs", [])
    return writers[0] if len(writers) == 1 else None


def consumers(tensor) -> list:
    """The nodes reading graphsurgeon tensor ``tensor`` (one entry per reading node)."""
    return list(getattr(tensor, "outputs", []))


def rank(tensor) -> int | None:
    """Rank of ``tensor`` when shape inference gave one, else None."""
    shape = getattr(tensor, "shape", None)
    return None if shape is None else len(shape)


def static_dim(tensor, axis: int) -> int | None:
    """Dimension ``axis`` of ``tensor`` when shape inference fixed it to a number; None
    when the shape is unknown, shorter, or that dimension is symbolic."""
    shape = getattr(tensor, "shape", None)
    if shape is None or not -len(shape) <= axis < len(shape):
        return None
    dim = shape[axis]
    return dim if isinstance(dim, int) else None


def proto_producers(graph: onnx.GraphProto) -> dict[str, int]:
    """Tensor name -> index of the node writing it."""
    return {o: i for i, n in enumerate(graph.node) for o in n.output if o}


def proto_consumers(graph: onnx.GraphProto) -> dict[str, list[int]]:
    """Tensor name -> indices of the nodes reading it, in graph order (a node reading a
    tensor twice is listed twice)."""
    readers: dict[str, list[int]] = {}
    for i, n in enumerate(graph.node):
        for name in n.input:
            if name:
                readers.setdefault(name, []).append(i)
    return readers
