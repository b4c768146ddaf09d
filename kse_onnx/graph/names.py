"""Names: node names unique on import, tensor names unique before export.

Plans, layer forms and reports are keyed by Conv node name, so two nodes sharing a name
would share a plan. On import every node gets a name no other node has: the first holder
of a name keeps it, later holders and unnamed nodes get ``<name or op_index>_<k>`` with
the smallest free k (deterministic, and the same on every import of the same model, so
``verify`` finds the names ``optimize`` used).

Rewrites name new tensors after their node (``conv1_kse_weight``). graphsurgeon exports
tensors by name, so a new tensor named like one of the input's own tensors would be
joined with it and rewire the graph. Before export, every tensor object that is not the
input's own holder of its name is renamed ``u<k>_<name>`` (a prefix keeps the suffixes
other modules read, such as ``_kse_select``).
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

_OWN = "kse_input_tensors"  # attribute of an imported gs.Graph: name -> the input's tensor


def unique_node_names(graph: gs.Graph) -> None:
    """Give every node of ``graph`` a distinct, non-empty name, in place."""
    taken = {node.name for node in graph.nodes if node.name}
    seen: set[str] = set()
    for index, node in enumerate(graph.nodes):
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        base = node.name or f"{node.op}_{index}"
        name = base if not node.name and base not in taken else _fresh_suffix(base, taken)
        node.name = name
        taken.add(name)
        seen.add(name)


def with_unique_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model``, or a copy whose nodes have distinct names by the rule above, for
    onnxruntime, which refuses repeated node names (names have no effect on the result)."""
    names = [node.name for node in model.graph.node]
    if all(names) and len(set(names)) == len(names):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    taken, seen = {n for n in names if n}, set()
    for index, node in enumerate(copy.graph.node):
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        base = node.name or f"{node.op_type}_{index}"
        node.name = base if not node.name and base not in taken else _fresh_suffix(base, taken)
        taken.add(node.name)
        seen.add(node.name)
    return copy


def remember_tensors(graph: gs.Graph) -> None:
    """Record which tensor object owns each name of the imported model."""
    setattr(graph, _OWN, dict(graph.tensors()))


def unique_tensor_names(graph: gs.Graph) -> None:
    """Rename, in place, tensors whose name another tensor object of ``graph`` holds;
    the input's own tensor of a name (see :func:`remember_tensors`) keeps it."""
    own = graph.__dict__.get(_OWN, {})  # graphsurgeon resolves missing attributes as ops
    ordered, ids = [], set()
    for tensor in _walk(graph):
        if id(tensor) not in ids:
            ids.add(id(tensor))
            ordered.append(tensor)
    groups: dict[str, list] = {}
    for tensor in ordered:
        if tensor.name:
            groups.setdefault(tensor.name, []).append(tensor)
    taken = set(groups) | set(own)
    for name, holders in groups.items():
        if len(holders) < 2:
            continue
        keeper = next((t for t in holders if t is own.get(name)), holders[0])
        for tensor in holders:
            if tensor is not keeper:
                tensor.name = _fresh_prefix(name, taken)
                taken.add(tensor.name)


def _walk(graph: gs.Graph):
    yield from graph.inputs
    yield from graph.outputs
    for node in graph.nodes:
        yield from node.inputs
        yield from node.outputs


def _fresh_suffix(base: str, taken: set[str]) -> str:
    k = 1
    while f"{base}_{k}" in taken:
        k += 1
    return f"{base}_{k}"


def _fresh_prefix(base: str, taken: set[str]) -> str:
    k = 1
    while f"u{k}_{base}" in taken:
        k += 1
    return f"u{k}_{base}"
