"""Finding the channel groups of a graph (:class:`.group.Group`): every Conv's input
channels belong to one group, and every decision that a tensor is no group of a kind
carries its reason (the report shows the reason a layer's channels go through a Gather).

- :func:`residual_groups`: the groups several Convs share or Adds join (the residual
  walk, :mod:`.residual`); the latency budget cuts them, never the default lowering;
- :func:`chain_group`: a Conv's own group otherwise: a ``chain`` to a producer Conv
  (:mod:`.channels`), or a ``reader`` group with the reason there is no chain;
- :func:`find_groups`: all of them, each Conv's input in exactly one.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .channels import chain
from .core import constant_values, import_graph, quiet_graphsurgeon
from .group import Group
from .residual import closure


def residual_groups(graph: gs.Graph, rejected: dict[str, str] | None = None) -> list[Group]:
    """Every residual group of ``graph`` (sorted by key): a closure (:mod:`.residual`)
    from a tensor some Conv reads that is more than a plain chain (several readers, a
    pooled Gemm, an Add, Sub or channel Pad). ``rejected`` (if given) gets, per start
    tensor whose closure is no group, the reason."""
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
        group, names = closure(graph, start, folded_pads)
        seen |= names
        if isinstance(group, str):
            if rejected is not None:
                rejected[start.name] = group
        elif (len(group.readers) > 1 or group.gemms
              or any(n.op in ("Add", "Sub", "Pad") for n in group.ops)):
            found.append(group)
    return sorted(found, key=lambda g: g.key)


def chain_group(graph: gs.Graph, conv: gs.Node) -> Group:
    """``conv``'s own group: the ``chain`` from its producer Conv when the channels can
    be cut there, else a ``reader`` group (``conv`` alone, with the reason)."""
    found = chain(conv, {t.name for t in graph.outputs})
    if isinstance(found, Group):
        return found
    weight = constant_values(conv.inputs[1])
    count = weight.shape[1] if weight is not None and weight.ndim == 4 else 0
    return Group("reader", {conv.inputs[0].name: np.arange(count)}, readers=[conv],
                 reason=found)


def find_groups(graph: gs.Graph) -> list[Group]:
    """Every group of ``graph``: its residual groups, then, in graph order, the own
    group (:func:`chain_group`) of every Conv reading none of them."""
    rejected: dict[str, str] = {}
    groups = residual_groups(graph, rejected)
    shared = {r.name for g in groups for r in g.readers}
    for node in graph.nodes:
        if node.op == "Conv" and node.name not in shared:
            own = chain_group(graph, node)
            why = rejected.get(node.inputs[0].name)
            if own.kind == "reader" and why and why != own.reason:
                own.reason += f"; no residual group: {why}"
            groups.append(own)
    return groups


def selected_groups(graph: gs.Graph, kept: dict | None, strict: bool = True
                    ) -> list[tuple[Group, np.ndarray]]:
    """(group, sorted kept classes) of every residual group named in ``kept`` (group key
    -> kept class ids, as ``budget_streams`` records them); ValueError on a key that
    names no group or on classes out of range. Not ``strict`` (``kept`` was checked on
    another graph): keys naming no group here are left out, classes taken as given."""
    if not kept:
        return []
    found = {g.key: g for g in residual_groups(graph)}
    if not strict:
        return [(found[key], kept[key]) for key in sorted(kept) if key in found]
    out = []
    for key in sorted(kept):
        if key not in found:
            raise ValueError(f"tensor {key!r}: starts no residual channel group in this graph")
        out.append((found[key], found[key].check_classes(kept[key])))
    return out


def masked_model(model: onnx.ModelProto, kept: dict) -> onnx.ModelProto:
    """``model`` with the residual groups named in ``kept`` (group key -> kept class ids)
    masked (:meth:`.group.Group.mask`); same graph otherwise."""
    from .export import copy_model_fields  # export imports this package's neighbours
    from .inputs import restore_graph_inputs

    if not kept:
        return model
    graph = import_graph(model)
    for group, classes in selected_groups(graph, kept):
        group.mask(classes)
    with quiet_graphsurgeon():
        out = gs.export_onnx(graph.cleanup(), do_type_check=False)
    restore_graph_inputs(out, model)
    return copy_model_fields(out, model)
