"""The order in which the refit walks a graph, and where it may cut it into blocks.

Order: topological, but a compressed Conv whose output feeds a residual ``Add`` waits
until everything else that is ready has run, so the other inputs of its Add (the skip
branch) exist in the student when the Conv is fitted (residual-aware target).

Cuts: after node i of that order, the tensors still needed later are the "live" set;
when it is a single tensor produced by node i, the graph up to i and the graph after
it meet only there (between two residual blocks of a ResNet, say). A block is the run
of nodes between two cuts.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import onnx

from ..graph.names import with_unique_node_names
from ..graph.walk import proto_consumers, proto_producers


def node_names(model: onnx.ModelProto) -> list[str]:
    """Names of the graph's nodes as kse-onnx's graph import gives them (distinct, see
    :mod:`kse_onnx.graph.names`), so plans keyed by Conv site name match."""
    return [n.name for n in with_unique_node_names(model).graph.node]


def static_nodes(model: onnx.ModelProto) -> list[int]:
    """Indices, in graph order, of the nodes computed from constants alone (Constant
    nodes, and shape arithmetic such as ConstantOfShape feeding a Pad): evaluated once,
    they never hold a cut open."""
    graph = model.graph
    known = {t.name for t in graph.initializer}
    found = []
    for i, node in enumerate(graph.node):
        if all(not name or name in known for name in node.input):
            found.append(i)
            known.update(o for o in node.output if o)
    return found


def needed_nodes(model: onnx.ModelProto, compressed: set[int], fitted: set[int]) -> set[int]:
    """The nodes the refit reads: the compressed Convs, the other ``fitted`` nodes (the
    classifier), every reader of a compressed Conv's output and of the residual Add it
    feeds (its target and its ReLU), and everything these are computed from. The rest (a
    detector's decoding and non-maximum suppression, whose outputs differ in length from
    image to image) is neither run nor required to be computable in torch."""
    nodes = model.graph.node
    produced_by = proto_producers(model.graph)
    readers = proto_consumers(model.graph)
    targets = set(compressed) | set(fitted)
    for i in compressed:
        for j in readers.get(nodes[i].output[0], []):
            targets.add(j)
            if nodes[j].op_type == "Add":
                targets.update(readers.get(nodes[j].output[0], []))
    needed: set[int] = set()
    stack = sorted(targets)
    while stack:
        i = stack.pop()
        if i not in needed:
            needed.add(i)
            stack.extend(produced_by[t] for t in nodes[i].input if t in produced_by)
    return needed


@dataclass
class Walk:
    order: list[int]  # node indices; static nodes (static_nodes) excluded
    consumers: dict[str, int]  # tensor -> number of reads along the order
    residual_add: dict[int, int]  # compressed Conv index -> index of the Add it feeds
    cuts: list[int]  # positions in ``order`` after which one tensor is live


def walk(model: onnx.ModelProto, compressed: set[int], needed: set[int] | None = None) -> Walk:
    """The walk over ``needed`` nodes (all by default, :func:`needed_nodes`); every
    output of a walked node is counted in ``consumers``, 0 when no walked node reads it."""
    nodes = model.graph.node
    produced_by = proto_producers(model.graph)
    readers = proto_consumers(model.graph)
    residual = {}
    for i in compressed:
        users = readers.get(nodes[i].output[0], [])
        if len(users) == 1 and nodes[users[0]].op_type == "Add":
            residual[i] = users[0]
    static = set(static_nodes(model))
    runnable = [i for i in range(len(nodes)) if i not in static
                and (needed is None or i in needed)]
    waits = {i: {produced_by[t] for t in nodes[i].input
                 if t in produced_by and produced_by[t] not in static}
             for i in runnable}
    dependants: dict[int, list[int]] = {}
    for i, deps in waits.items():
        for d in deps:
            dependants.setdefault(d, []).append(i)
    ready = [(int(i in residual), i) for i in runnable if not waits[i]]
    heapq.heapify(ready)
    order = []
    while ready:
        _, i = heapq.heappop(ready)
        order.append(i)
        for j in dependants.get(i, []):
            waits[j].discard(i)
            if not waits[j]:
                heapq.heappush(ready, (int(j in residual), j))
    if len(order) != len(runnable):
        raise ValueError("the graph has a cycle")
    consumers: dict[str, int] = {o: 0 for i in order for o in nodes[i].output if o}
    for i in order:
        for name in nodes[i].input:
            if name:
                consumers[name] = consumers.get(name, 0) + 1
    return Walk(order, consumers, residual, _cuts(model, order, consumers))


def _cuts(model, order, consumers) -> list[int]:
    nodes = model.graph.node
    outputs = {o.name for o in model.graph.output}
    remaining = dict(consumers)
    initializers = {t.name for t in model.graph.initializer}
    live = {t.name for t in model.graph.input if t.name not in initializers}
    cuts = []
    for pos, i in enumerate(order):
        for name in nodes[i].input:
            if name in remaining:
                remaining[name] -= 1
                if remaining[name] == 0:
                    live.discard(name)
        made = [o for o in nodes[i].output if o and (remaining.get(o, 0) or o in outputs)]
        live.update(made)
        if len(live) == 1 and len(made) == 1 and made[0] not in outputs:
            cuts.append(pos)
    return cuts
