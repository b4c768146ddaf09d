"""What the drop compares on a model whose input has no batch axis: the float tensors a
detector computes just before its data-dependent post-processing (docs/refit.md,
"Models whose input has no batch axis").

torchvision's SSDlite320 ends in score thresholds (Greater, NonZero), per-class TopK and
NonMaxSuppression: the boxes it outputs differ in number and order from image to image
and from model to model, so an output compared value by value measures mostly which
boxes NMS kept. The tensors read by that post-processing (each class's scores over all
anchors, the decoded boxes) have fixed shapes and change as smoothly as the network's
outputs do: their relative error is the measure of a detector. A model without such
nodes is compared on its outputs.
"""

from __future__ import annotations

import onnx
from onnx import helper

# Operators whose output's shape or meaning depends on the data: they and everything
# computed from them are post-processing.
DATA_DEPENDENT = frozenset({"NonZero", "NonMaxSuppression", "TopK", "Compress", "Unique",
                            "Loop", "If", "Scan"})


def before_data_dependent(model: onnx.ModelProto) -> list[str]:
    """The tensors computed from the graph's inputs by nodes outside the data-dependent
    region (the :data:`DATA_DEPENDENT` nodes and everything computed from them) that a
    node of that region reads, sorted by name (a rewrite may reorder the graph's nodes,
    not rename these); [] when the graph has no such node."""
    graph = model.graph
    produced_by = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    inits = {t.name for t in graph.initializer}
    from_input = {v.name for v in graph.input if v.name not in inits}
    region: set[int] = set()
    for i, node in enumerate(graph.node):  # graph order is topological
        if any(t in from_input for t in node.input):
            from_input.update(o for o in node.output if o)
        if node.op_type in DATA_DEPENDENT or any(
                produced_by.get(t) in region for t in node.input if t in produced_by):
            region.add(i)
    found: list[str] = []
    for i in sorted(region):
        for t in graph.node[i].input:
            if t in from_input and produced_by.get(t) not in region and t not in found:
                found.append(t)
    return sorted(found)


def compared_model(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """(what a per-image drop runs of ``model``, whether it is the tensors before the
    data-dependent post-processing): ``model`` with those tensors as its only outputs
    (onnxruntime then skips the post-processing), or ``model`` itself."""
    names = before_data_dependent(model)
    if not names:
        return model, False
    tapped = onnx.ModelProto()
    tapped.CopyFrom(model)
    del tapped.graph.output[:]
    tapped.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    return tapped, True
