"""What the budget can cut: *units* of channels removed together, each ranked by the KSE
indicator, least important first.

- a layer unit: the input channels of one compressed Conv not fed by a channel stream.
  With a prunable producer chain (:func:`..graph.channels.producer_chain`) the producing
  Conv loses the same output channels; otherwise a Gather selects them. A channel's mass
  is the layer's indicator v_c.
- a stream unit: the channel classes of a residual stream (:mod:`..graph.residual`)
  that appear in the same set of tensors (one "span": in a ResNet with channel-padding
  shortcuts, the classes born in stage s run through every later stage). Every reader
  of the stream loses them, every producer too. A class's mass is the sum of the
  indicators of every reader input channel in that class: ``m_k = sum_r sum_{c in k} v_rc``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..graph.channels import producer_chain
from ..graph.residual import Stream, find_streams


@dataclass
class Unit:
    name: str
    ids: np.ndarray  # channels (layer unit) or classes (stream unit), least important first
    mass: np.ndarray  # indicator mass of each id, same order
    readers: list[str] = field(default_factory=list)  # Convs whose input count includes it
    producers: list[str] = field(default_factory=list)  # Convs whose output count includes it
    stream: str | None = None  # the stream's key for a stream unit

    @property
    def size(self) -> int:
        return len(self.ids)

    def kept(self, k: int) -> np.ndarray:
        """The ``k`` ids of highest mass, sorted."""
        return np.sort(self.ids[self.size - k:])


@dataclass
class Cuts:
    """Every unit of a model, and each Conv's units on its input and output side."""

    units: list[Unit]
    streams: dict[str, Stream]
    geometry: dict[str, dict]  # conv name -> cin, cout, kernel, attrs, hw

    def counts(self, kept: dict[str, int]) -> dict[str, tuple[int, int]]:
        """(cin, cout) of every Conv when unit ``u`` keeps ``kept[u.name]`` ids."""
        out = {name: [g["cin"], g["cout"]] for name, g in self.geometry.items()}
        for u in self.units:
            cut = u.size - kept[u.name]
            for r in u.readers:
                out[r][0] -= cut
            for p in u.producers:
                out[p][1] -= cut
        return {name: (a, b) for name, (a, b) in out.items()}


def find_cuts(graph, sites, indicators: dict[str, np.ndarray]) -> Cuts:
    """Units of ``graph`` given the indicator of every compressible Conv (site name ->
    v); a stream whose readers are not all compressible is left whole."""
    nodes = {s.node.name: s for s in sites}
    units, streams, in_stream = [], {}, set()
    for stream in find_streams(graph):
        names = [r.name for r in stream.readers]
        if not all(n in nodes and nodes[n].name in indicators for n in names):
            continue
        streams[stream.key] = stream
        in_stream |= set(names)
        mass = np.zeros(stream.n_classes)
        for r in stream.readers:
            np.add.at(mass, stream.channels[r.inputs[0].name], indicators[nodes[r.name].name])
        for i, span in enumerate(stream.spans()):
            order = span[np.argsort(mass[span], kind="stable")]
            tensors = {t for t, ids in stream.channels.items() if np.isin(span[0], ids)}
            units.append(Unit(f"stream {stream.key} #{i}", order, mass[order],
                              sorted(r.name for r in stream.readers
                                     if r.inputs[0].name in tensors),
                              sorted(p.name for p in stream.producers
                                     if p.outputs[0].name in tensors), stream.key))
    for site in sites:
        if site.name not in indicators or site.node.name in in_stream:
            continue
        v = indicators[site.name]
        order = np.argsort(v, kind="stable")
        chain = producer_chain(graph, site.node)
        producers = [chain.head.inputs[0].name] if chain is not None else []
        units.append(Unit(site.name, order, v[order], [site.node.name], producers))
    geometry = {}
    for node in graph.nodes:
        if node.op == "Conv" and any(node.name in u.readers + u.producers for u in units):
            geometry[node.name] = _geometry(node)
    return Cuts(units, streams, geometry)


def _geometry(node) -> dict:
    from ..graph.select import constant_values

    w = constant_values(node.inputs[1])
    shape = node.inputs[0].shape
    attrs = {k: node.attrs[k] for k in ("strides", "pads", "dilations", "auto_pad")
             if k in node.attrs}
    return {"cin": int(w.shape[1]), "cout": int(w.shape[0]), "kernel": list(w.shape[2:]),
            "attrs": attrs, "hw": [int(shape[2]), int(shape[3])]}
