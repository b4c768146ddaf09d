"""What the budget can cut: *spans* of channel groups (:mod:`..graph.groups`), each
span's ids ranked by the group's importance (the KSE indicator summed over its
readers), least important first.

- a layer's own group: the input channels of one compressed Conv that reads no residual
  group. When the group is a ``chain`` the producing Conv loses the same output
  channels; otherwise (a ``reader`` group) a Gather selects them. A channel's mass is
  the layer's indicator v_c; the whole group is one span.
- a residual group: its classes that appear in the same set of tensors form one span
  (in a ResNet with channel-padding shortcuts, the classes born in stage s run through
  every later stage). Every reader of the span's tensors loses them, every producer
  too. A class's mass is its importance ``m_k = sum_r sum_{c in k} v_rc``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..graph.core import constant_values
from ..graph.group import Group
from ..graph.groups import chain_group, residual_groups


@dataclass
class Span:
    """Ids of one group the budget cuts together, least important first."""

    name: str
    ids: np.ndarray  # channels (a layer's own group) or classes (a residual group)
    mass: np.ndarray  # indicator mass of each id, same order
    readers: list[str] = field(default_factory=list)  # Convs whose input count includes it
    producers: list[str] = field(default_factory=list)  # Convs whose output count includes it
    group: str | None = None  # the residual group's key (budget_streams records it)

    @property
    def size(self) -> int:
        return len(self.ids)

    def kept(self, k: int) -> np.ndarray:
        """The ``k`` ids of highest mass, sorted."""
        return np.sort(self.ids[self.size - k:])


@dataclass
class Cuts:
    """Every span of a model, and each Conv's spans on its input and output side."""

    spans: list[Span]
    groups: dict[str, Group]  # the residual groups cut, by key
    geometry: dict[str, dict]  # conv name -> cin, cout, kernel, attrs, hw

    def counts(self, kept: dict[str, int]) -> dict[str, tuple[int, int]]:
        """(cin, cout) of every Conv when span ``s`` keeps ``kept[s.name]`` ids."""
        out = {name: [g["cin"], g["cout"]] for name, g in self.geometry.items()}
        for s in self.spans:
            cut = s.size - kept[s.name]
            for r in s.readers:
                out[r][0] -= cut
            for p in s.producers:
                out[p][1] -= cut
        return {name: (a, b) for name, (a, b) in out.items()}


def find_cuts(graph, sites, indicators: dict[str, np.ndarray]) -> Cuts:
    """Spans of ``graph`` given the indicator of every compressible Conv (site name ->
    v); a residual group whose readers are not all compressible is left whole."""
    nodes = {s.node.name: s for s in sites}
    spans, groups, shared = [], {}, set()
    for group in residual_groups(graph):
        names = [r.name for r in group.readers]
        if not all(n in nodes and nodes[n].name in indicators for n in names):
            continue
        groups[group.key] = group
        shared |= set(names)
        mass = group.importance(indicators)
        for i, span in enumerate(group.spans()):
            order = span[np.argsort(mass[span], kind="stable")]
            tensors = {t for t, ids in group.channels.items() if np.isin(span[0], ids)}
            spans.append(Span(f"stream {group.key} #{i}", order, mass[order],
                              sorted(r.name for r in group.readers
                                     if r.inputs[0].name in tensors),
                              sorted(p.name for p in group.producers
                                     if p.outputs[0].name in tensors), group.key))
    for site in sites:
        if site.name not in indicators or site.node.name in shared:
            continue
        v = indicators[site.name]
        order = np.argsort(v, kind="stable")
        producers = [p.name for p in chain_group(graph, site.node).producers]
        spans.append(Span(site.name, order, v[order], [site.node.name], producers))
    geometry = {}
    for node in graph.nodes:
        if node.op == "Conv" and any(node.name in s.readers + s.producers for s in spans):
            geometry[node.name] = _geometry(node)
    return Cuts(spans, groups, geometry)


def _geometry(node) -> dict:
    w = constant_values(node.inputs[1])
    x = node.inputs[0]
    attrs = {k: node.attrs[k] for k in ("strides", "pads", "dilations", "auto_pad")
             if k in node.attrs}
    return {"cin": int(w.shape[1]), "cout": int(w.shape[0]), "kernel": list(w.shape[2:]),
            "attrs": attrs, "hw": [int(x.shape[2]), int(x.shape[3])]}
