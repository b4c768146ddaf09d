"""Channel streams: tensors whose channels several Convs read and Adds join (a ResNet's
residual stream), so a channel can only be removed from all of them at once.

A *stream* is the closure of a tensor read by a Conv over: Convs reading it (readers),
Convs writing it (producers), zero-preserving channel-wise ops (Relu, LeakyRelu,
Identity, Dropout, BatchNormalization, Add/Sub/Mul/Div by a per-channel constant), Adds
and Subs of two stream tensors, Slices off the channel axis, channel Pads with zeros
(the "option A" shortcut: output channel ``c + lo`` is input channel ``c``), and
GlobalAveragePool -> Flatten -> Gemm (a classifier reading it). Anything else reading or
writing a stream tensor, or a stream tensor being a graph output, makes it no stream.

Channels linked by these ops form *classes* (union-find on (tensor, channel)). Removing
a class is exact once its producers' filters (and the additive per-channel constants on
the way) are zero (:func:`mask`): the channel is then 0 everywhere in the stream, so its
readers' and the classifier's weights on it do not matter, and :func:`prune` drops it
from every producer, constant, Pad and classifier.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .select import constant_values, import_graph, quiet_graphsurgeon

ZERO_UNARY = {"Relu", "LeakyRelu", "Identity", "Dropout"}


@dataclass
class Stream:
    """One stream: its tensors (sorted by name), the channel class of each tensor's
    channels, and the nodes that read, write or carry it."""

    channels: dict[str, np.ndarray]  # tensor name -> class id of each channel
    producers: list[gs.Node] = field(default_factory=list)
    readers: list[gs.Node] = field(default_factory=list)
    ops: list[gs.Node] = field(default_factory=list)
    pads: dict[str, tuple[int, int]] = field(default_factory=dict)  # Pad node -> lo, hi
    classifiers: list[tuple[gs.Node, str]] = field(default_factory=list)  # (Gemm, tensor)

    @property
    def key(self) -> str:
        """The stream's name: its first tensor name."""
        return min(self.channels)

    @property
    def n_classes(self) -> int:
        return int(max(c.max() for c in self.channels.values())) + 1

    def kept(self, tensor: str, classes) -> np.ndarray:
        """Channels of ``tensor`` whose class is in ``classes``."""
        return np.flatnonzero(np.isin(self.channels[tensor], np.asarray(list(classes), int)))

    def spans(self) -> list[np.ndarray]:
        """Classes grouped by the set of tensors they appear in (each group is cut to a
        multiple of the budget step on its own, so every tensor's count stays aligned)."""
        where: dict[int, set] = {}
        for name, ids in self.channels.items():
            for cid in ids:
                where.setdefault(int(cid), set()).add(name)
        groups: dict[tuple, list[int]] = {}
        for cid in sorted(where):
            groups.setdefault(tuple(sorted(where[cid])), []).append(cid)
        return [np.array(v) for _, v in sorted(groups.items(), key=lambda kv: kv[1][0])]


def find_streams(graph: gs.Graph) -> list[Stream]:
    """Every stream of ``graph`` that carries channels some Conv reads and that is more
    than a plain producer chain (:func:`.channels.producer_chain` handles those)."""
    found, seen = [], set()
    folded = None

    def folded_pads():
        nonlocal folded
        if folded is None:
            with quiet_graphsurgeon():
                copy = graph.copy()
                copy.fold_constants()
            folded = {n.name: constant_values(n.inputs[1]) for n in copy.nodes if n.op == "Pad"}
        return folded

    for node in graph.nodes:
        if node.op != "Conv" or not isinstance(node.inputs[0], gs.Variable):
            continue
        start = node.inputs[0]
        if start.name in seen:
            continue
        stream, names = _closure(graph, start, folded_pads)
        seen |= names
        if stream is not None and (len(stream.readers) > 1 or stream.classifiers
                                   or any(n.op in ("Add", "Sub", "Pad") for n in stream.ops)):
            found.append(stream)
    return sorted(found, key=lambda s: s.key)


def _closure(graph, start, folded_pads):
    """(Stream or None, names of the tensors visited)."""
    outputs = {t.name for t in graph.outputs}
    tensors: dict[str, gs.Variable] = {}
    links: list[tuple[str, str, int, int]] = []  # (a, b, lo, hi): b[c + lo] is a[c]
    stream = Stream({})
    nodes_done: set[str] = set()
    queue = [start]
    try:
        while queue:
            t = queue.pop()
            if t.name in tensors:
                continue
            if not isinstance(t, gs.Variable) or t.name in outputs or len(t.inputs) != 1:
                raise _NotStream
            if t.shape is not None and len(t.shape) != 4:
                raise _NotStream
            tensors[t.name] = t
            for node in [t.inputs[0], *t.outputs]:
                if node.name in nodes_done:
                    continue
                nodes_done.add(node.name)
                queue += _visit(node, t, stream, links, folded_pads)
        counts = _channel_counts(tensors, links)
    except _NotStream:
        return None, set(tensors)
    stream.channels = _classes(counts, links)
    return stream, set(tensors)


def _channel_counts(tensors: dict, links) -> dict[str, int]:
    """Channels of every stream tensor: from inferred shapes, carried along the links
    (a Pad adds lo + hi); a conflict or an unknown count is no stream."""
    counts = {n: t.shape[1] for n, t in tensors.items()
              if t.shape is not None and isinstance(t.shape[1], int)}
    for _ in range(len(tensors) + 1):
        changed = False
        for a, b, lo, hi in links:
            for src, dst, delta in ((a, b, lo + hi), (b, a, -(lo + hi))):
                if src in counts and dst not in counts:
                    counts[dst] = counts[src] + delta
                    changed = True
                elif src in counts and counts[dst] != counts[src] + delta:
                    raise _NotStream
        if not changed:
            break
    if len(counts) != len(tensors) or min(counts.values()) < 1:
        raise _NotStream
    return counts


class _NotStream(Exception):
    pass


def _visit(node, t, stream: Stream, links, folded_pads) -> list:
    """Record ``node`` (which reads or writes stream tensor ``t``); tensors to visit."""
    if node.op == "Conv":
        if node.attrs.get("group", 1) != 1 or constant_values(node.inputs[1]) is None or (
                len(node.inputs) > 2 and node.inputs[2].name
                and constant_values(node.inputs[2]) is None):
            raise _NotStream
        if node.outputs[0] is t:
            stream.producers.append(node)
        elif node.inputs[0] is t:
            stream.readers.append(node)
        else:
            raise _NotStream
        return []
    if node.op == "GlobalAveragePool" and node.inputs[0] is t:
        stream.classifiers.append((_classifier(node), t.name))
        return []
    if len(node.outputs) != 1 or not isinstance(node.inputs[0], gs.Variable):
        raise _NotStream
    x, y = node.inputs[0], node.outputs[0]
    if node.op in ZERO_UNARY or (node.op == "BatchNormalization" and all(
            constant_values(i) is not None for i in node.inputs[1:5])):
        links.append((x.name, y.name, 0, 0))
        stream.ops.append(node)
        return [x, y]
    if node.op in ("Add", "Sub", "Mul", "Div") and len(node.inputs) == 2:
        other = node.inputs[1]
        if isinstance(other, gs.Variable) and node.op in ("Add", "Sub"):
            links += [(x.name, y.name, 0, 0), (other.name, y.name, 0, 0)]
            stream.ops.append(node)
            return [x, other, y]
        values = constant_values(other)
        if values is None or not (values.size == 1 or (
                values.ndim in (3, 4) and values.shape[-2:] == (1, 1))):
            raise _NotStream
        if node.op in ("Add", "Sub") and values.size == 1 and float(values.reshape(-1)[0]):
            raise _NotStream  # a non-zero scalar offset: the channel would not stay 0
        links.append((x.name, y.name, 0, 0))
        stream.ops.append(node)
        return [x, y]
    if node.op == "Slice":
        axes = constant_values(node.inputs[3]) if len(node.inputs) > 3 else None
        if axes is None or np.any((axes == 1) | (axes == -3)):
            raise _NotStream
        links.append((x.name, y.name, 0, 0))
        stream.ops.append(node)
        return [x, y]
    if node.op == "Pad" and node.attrs.get("mode", "constant") == "constant":
        if len(node.inputs) > 2 and node.inputs[2].name:
            value = constant_values(node.inputs[2])
            if value is None or np.any(value):
                raise _NotStream
        pads = constant_values(node.inputs[1])
        pads = folded_pads().get(node.name) if pads is None else pads
        if pads is None or len(pads) != 8 or len(node.inputs) > 3:
            raise _NotStream
        lo, hi = int(pads[1]), int(pads[5])
        if lo < 0 or hi < 0:
            raise _NotStream
        links.append((x.name, y.name, lo, hi))
        stream.ops.append(node)
        stream.pads[node.name] = (lo, hi)
        return [x, y]
    raise _NotStream


def _classifier(gap: gs.Node) -> gs.Node:
    """The Gemm of GlobalAveragePool -> Flatten(axis 1) -> Gemm(constant B)."""
    flat = gap.outputs[0].outputs
    if len(flat) != 1 or flat[0].op != "Flatten" or flat[0].attrs.get("axis", 1) != 1:
        raise _NotStream
    gemm = flat[0].outputs[0].outputs
    if len(gemm) != 1 or gemm[0].op != "Gemm" or gemm[0].inputs[0] is not flat[0].outputs[0]:
        raise _NotStream
    if constant_values(gemm[0].inputs[1]) is None or gemm[0].attrs.get("transA", 0):
        raise _NotStream
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


def _replace(node: gs.Node, index: int, values: np.ndarray, tag: str) -> None:
    node.inputs[index] = gs.Constant(f"{node.name}_kse_{tag}{index}",
                                     np.ascontiguousarray(values))


def mask(stream: Stream, kept_classes) -> None:
    """Make the channels of every class not in ``kept_classes`` exactly 0 in the
    stream: zero their producers' filters and biases, and BatchNormalization scales and
    shifts and additive constants on the way (same shapes: the graph still runs)."""
    kept = set(int(c) for c in kept_classes)
    for conv in stream.producers:
        drop = ~np.isin(stream.channels[conv.outputs[0].name], list(kept))
        w = constant_values(conv.inputs[1]).copy()
        w[drop] = 0
        _replace(conv, 1, w, "mask")
        if len(conv.inputs) > 2 and conv.inputs[2].name:
            b = constant_values(conv.inputs[2]).copy()
            b[drop] = 0
            _replace(conv, 2, b, "mask")
    for node in stream.ops:
        drop = ~np.isin(stream.channels[node.inputs[0].name], list(kept))
        if node.op == "BatchNormalization":
            for i in (1, 2):
                v = constant_values(node.inputs[i]).copy()
                v[drop] = 0
                _replace(node, i, v, "mask")
        elif node.op in ("Add", "Sub") and not isinstance(node.inputs[1], gs.Variable):
            v = constant_values(node.inputs[1])
            if v.size > 1:
                v = v.copy()
                v[..., drop, :, :] = 0
                _replace(node, 1, v, "mask")


def prune(stream: Stream, kept_classes) -> None:
    """Remove every channel whose class is not in ``kept_classes`` from the stream's
    producers, per-channel constants, Pads and classifiers (readers: by the lowering)."""
    kept = list(int(c) for c in kept_classes)
    keep = {name: stream.kept(name, kept) for name in stream.channels}
    for conv in stream.producers:
        k = keep[conv.outputs[0].name]
        _replace(conv, 1, constant_values(conv.inputs[1])[k], "stream")
        if len(conv.inputs) > 2 and conv.inputs[2].name:
            _replace(conv, 2, constant_values(conv.inputs[2])[k], "stream")
    for node in stream.ops:
        k = keep[node.inputs[0].name]
        if node.op == "BatchNormalization":
            for i in range(1, 5):
                _replace(node, i, constant_values(node.inputs[i])[k], "stream")
        elif node.op in ("Add", "Sub", "Mul", "Div") and not isinstance(node.inputs[1],
                                                                        gs.Variable):
            v = constant_values(node.inputs[1])
            if v.size > 1:
                _replace(node, 1, v[..., k, :, :], "stream")
        elif node.op == "Pad":
            lo, _ = stream.pads[node.name]
            c_in = len(stream.channels[node.inputs[0].name])
            out = keep[node.outputs[0].name]
            pads = np.zeros(8, np.int64)
            pads[1], pads[5] = int(np.sum(out < lo)), int(np.sum(out >= lo + c_in))
            _replace(node, 1, pads, "stream")
    for gemm, tensor in stream.classifiers:
        b = constant_values(gemm.inputs[1])
        k = keep[tensor]
        _replace(gemm, 1, b[:, k] if gemm.attrs.get("transB", 0) else b[k], "stream")


def masked_model(model: onnx.ModelProto, kept: dict) -> onnx.ModelProto:
    """``model`` with the streams named in ``kept`` (stream key -> kept class ids)
    masked (:func:`mask`); same graph otherwise."""
    from .export import copy_model_fields  # export imports this package's neighbours

    if not kept:
        return model
    graph = import_graph(model)
    streams = {s.key: s for s in find_streams(graph)}
    for key, classes in kept.items():
        if key not in streams:
            raise ValueError(f"no channel stream starts at tensor {key!r}")
        mask(streams[key], check_classes(streams[key], classes))
    with quiet_graphsurgeon():
        out = gs.export_onnx(graph.cleanup(), do_type_check=False)
    from .inputs import restore_graph_inputs

    restore_graph_inputs(out, model)
    return copy_model_fields(out, model)


def check_classes(stream: Stream, classes) -> np.ndarray:
    """``classes`` as a sorted index array of this stream's classes, or ValueError."""
    ids = np.asarray(classes)
    if (ids.ndim != 1 or not len(ids) or ids.dtype.kind not in "iu" or ids.min() < 0
            or ids.max() >= stream.n_classes or len(set(ids.tolist())) != len(ids)):
        raise ValueError(f"stream {stream.key!r}: kept classes must be distinct indices in "
                         f"[0, {stream.n_classes})")
    return np.sort(ids)
