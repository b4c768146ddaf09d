"""The residual walk: the closure of a tensor read by a Conv over the ops that link
channels, giving a ``residual`` :class:`.group.Group` or the reason it is none.

The closure runs over: Convs reading it (readers), Convs writing it (producers),
zero-preserving channel-wise ops (Relu, LeakyRelu, Identity, Dropout,
BatchNormalization, Add/Sub/Mul/Div by a per-channel constant), Adds and Subs of two
group tensors, Slices off the channel axis, channel Pads with zeros (the "option A"
shortcut: output channel ``c + lo`` is input channel ``c``), and GlobalAveragePool ->
Flatten -> Gemm (a pooled Gemm reading it). Anything else reading or writing a group
tensor, or a group tensor being a graph output, makes it no group, with the reason.

Channels linked by these ops form classes (union-find on (tensor, channel)). Removing
a class is exact once its producers' filters (and the additive per-channel constants on
the way) are zero (:meth:`.group.Group.mask`): the channel is then 0 everywhere in the
group, so its readers' and the pooled Gemms' weights on it do not matter.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .core import constant_values
from .group import Group, NotAGroup
from .walk import consumers, producer, rank, static_dim

ZERO_UNARY = {"Relu", "LeakyRelu", "Identity", "Dropout"}


def closure(graph: gs.Graph, start: gs.Variable, folded_pads) -> tuple[Group | str, set]:
    """(the residual group of ``start``, or the reason there is none; the names of the
    tensors visited). ``folded_pads()`` gives Pad node -> pads after constant folding."""
    outputs = {t.name for t in graph.outputs}
    tensors: dict[str, gs.Variable] = {}
    links: list[tuple[str, str, int, int]] = []  # (a, b, lo, hi): b[c + lo] is a[c]
    group = Group("residual", {})
    nodes_done: set[str] = set()
    queue = [start]
    try:
        while queue:
            t = queue.pop()
            if t.name in tensors:
                continue
            if not isinstance(t, gs.Variable):
                raise NotAGroup(f"tensor {t.name!r} is a constant")
            if t.name in outputs:
                raise NotAGroup(f"tensor {t.name!r} is a graph output")
            if producer(t) is None:
                raise NotAGroup(f"tensor {t.name!r} is a graph input")
            if rank(t) not in (None, 4):
                raise NotAGroup(f"tensor {t.name!r} has rank {rank(t)}, not 4")
            tensors[t.name] = t
            for node in [producer(t), *consumers(t)]:
                if node.name in nodes_done:
                    continue
                nodes_done.add(node.name)
                queue += _visit(node, t, group, links, folded_pads)
        counts = _channel_counts(tensors, links)
    except NotAGroup as exc:
        return exc.reason, set(tensors)
    group.channels = _classes(counts, links)
    return group, set(tensors)


def _channel_counts(tensors: dict, links) -> dict[str, int]:
    """Channels of every group tensor: from inferred shapes, carried along the links
    (a Pad adds lo + hi); a conflict or an unknown count is no group."""
    counts = {n: static_dim(t, 1) for n, t in tensors.items() if static_dim(t, 1) is not None}
    for _ in range(len(tensors) + 1):
        changed = False
        for a, b, lo, hi in links:
            for src, dst, delta in ((a, b, lo + hi), (b, a, -(lo + hi))):
                if src in counts and dst not in counts:
                    counts[dst] = counts[src] + delta
                    changed = True
                elif src in counts and counts[dst] != counts[src] + delta:
                    raise NotAGroup(f"tensors {src!r} and {dst!r} disagree on their "
                                    "channel counts")
        if not changed:
            break
    unknown = sorted(set(tensors) - set(counts))
    if unknown:
        raise NotAGroup(f"tensor {unknown[0]!r}: channel count unknown")
    if min(counts.values()) < 1:
        raise NotAGroup("a tensor would have no channel")
    return counts


def _visit(node, t, group: Group, links, folded_pads) -> list:
    """Record ``node`` (which reads or writes group tensor ``t``); tensors to visit."""
    where = f"node {node.name!r} ({node.op})"
    if node.op == "Conv":
        if node.attrs.get("group", 1) != 1:
            raise NotAGroup(f"{where}: grouped conv")
        if constant_values(node.inputs[1]) is None or (
                len(node.inputs) > 2 and node.inputs[2].name
                and constant_values(node.inputs[2]) is None):
            raise NotAGroup(f"{where}: weight or bias is not a constant")
        if node.outputs[0] is t:
            group.producers.append(node)
        elif node.inputs[0] is t:
            group.readers.append(node)
        else:
            raise NotAGroup(f"{where}: reads it as weight or bias")
        return []
    if node.op == "GlobalAveragePool" and node.inputs[0] is t:
        group.gemms.append((_pooled_gemm(node), t.name))
        return []
    if len(node.outputs) != 1 or not isinstance(node.inputs[0], gs.Variable):
        raise NotAGroup(f"{where}: not one output of a tensor")
    x, y = node.inputs[0], node.outputs[0]
    if node.op in ZERO_UNARY or (node.op == "BatchNormalization" and all(
            constant_values(i) is not None for i in node.inputs[1:5])):
        return _link(group, links, node, x, y)
    if node.op in ("Add", "Sub", "Mul", "Div") and len(node.inputs) == 2:
        other = node.inputs[1]
        if isinstance(other, gs.Variable) and node.op in ("Add", "Sub"):
            links += [(x.name, y.name, 0, 0), (other.name, y.name, 0, 0)]
            group.ops.append(node)
            return [x, other, y]
        values = constant_values(other)
        if values is None or not (values.size == 1 or (
                values.ndim in (3, 4) and values.shape[-2:] == (1, 1))):
            raise NotAGroup(f"{where}: its other operand is no per-channel constant")
        if node.op in ("Add", "Sub") and values.size == 1 and float(values.reshape(-1)[0]):
            raise NotAGroup(f"{where}: a non-zero scalar offset (a cut channel would not "
                            "stay 0)")
        return _link(group, links, node, x, y)
    if node.op == "Slice":
        axes = constant_values(node.inputs[3]) if len(node.inputs) > 3 else None
        if axes is None or np.any((axes == 1) | (axes == -3)):
            raise NotAGroup(f"{where}: may slice the channel axis")
        return _link(group, links, node, x, y)
    if node.op == "Pad" and node.attrs.get("mode", "constant") == "constant":
        return _pad(node, x, y, group, links, folded_pads)
    raise NotAGroup(f"{where}: does not keep channels apart and zero channels zero")


def _link(group: Group, links, node, x, y) -> list:
    """``node`` maps channel c of ``x`` to channel c of ``y``."""
    links.append((x.name, y.name, 0, 0))
    group.ops.append(node)
    return [x, y]


def _pad(node, x, y, group: Group, links, folded_pads) -> list:
    """A constant Pad with zeros: channels ``lo`` and ``hi`` added around ``x``'s."""
    where = f"node {node.name!r} (Pad)"
    if len(node.inputs) > 2 and node.inputs[2].name:
        value = constant_values(node.inputs[2])
        if value is None or np.any(value):
            raise NotAGroup(f"{where}: pads with a value that is not 0")
    pads = constant_values(node.inputs[1])
    pads = folded_pads().get(node.name) if pads is None else pads
    if pads is None or len(pads) != 8 or len(node.inputs) > 3:
        raise NotAGroup(f"{where}: pads are not 8 constants")
    lo, hi = int(pads[1]), int(pads[5])
    if lo < 0 or hi < 0:
        raise NotAGroup(f"{where}: crops channels")
    links.append((x.name, y.name, lo, hi))
    group.ops.append(node)
    group.pads[node.name] = (lo, hi)
    return [x, y]


def _pooled_gemm(gap: gs.Node) -> gs.Node:
    """The Gemm of GlobalAveragePool -> Flatten(axis 1) -> Gemm(constant B, no transA):
    a Gemm reading the pooled channels (not always the model's classifier, see
    :mod:`.classifier`)."""
    where = f"node {gap.name!r} (GlobalAveragePool)"
    flat = consumers(gap.outputs[0])
    if len(flat) != 1 or flat[0].op != "Flatten" or flat[0].attrs.get("axis", 1) != 1:
        raise NotAGroup(f"{where}: not read by one Flatten(axis=1)")
    gemm = consumers(flat[0].outputs[0])
    if len(gemm) != 1 or gemm[0].op != "Gemm" or gemm[0].inputs[0] is not flat[0].outputs[0]:
        raise NotAGroup(f"{where}: its Flatten is not read by one Gemm")
    if constant_values(gemm[0].inputs[1]) is None or gemm[0].attrs.get("transA", 0):
        raise NotAGroup(f"{where}: its Gemm has no constant B or transposes A")
    return gemm[0]


def _classes(counts: dict[str, int], links) -> dict[str, np.ndarray]:
    """Union-find over (tensor, channel); class ids numbered by each class's smallest
    (tensor name, channel), so they do not depend on the node order."""
    parent: dict = {}

    def find(a):
        while parent.setdefault(a, a) != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b, lo, _ in links:
        for c in range(counts[a]):
            ra, rb = find((a, c)), find((b, c + lo))
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    roots = sorted({find((name, c)) for name, n in counts.items() for c in range(n)})
    ids = {r: i for i, r in enumerate(roots)}
    return {name: np.array([ids[find((name, c))] for c in range(n)])
            for name, n in sorted(counts.items())}


