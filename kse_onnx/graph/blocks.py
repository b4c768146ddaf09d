"""Residual blocks a latency budget may remove whole (``--budget-blocks``, docs/budget.md).

A *removable block* is ``y = Add(x, F(x))`` (optionally followed by a Relu) where the
branch ``F`` is a set of nodes whose only non-constant input is ``x``, whose tensors are
read only inside the branch or by the Add, and which holds at least one Conv. Removing
it replaces ``y`` by ``x`` everywhere: exact for ``F = 0``, and the identity the block
adds to. With a Relu after the Add, ``x`` must itself be a Relu's output
(non-negative), so that ``Relu(x) = x`` and the Relu goes too; a block whose Relu would
stay is not offered. Why: in a residual network the time left once every block's inner
channels are at their smallest is in the full-width stream tensors each block still
writes (a Conv output, an Add, a Relu). On the authors' ResNet-56 at batch 64, 13 of
its 25 identity blocks removed ran at 0.61x-0.62x of onnxruntime's INT8 of the
original, where every channel cut could reach no further than 0.87x-0.89x
(docs/results.md, "Removing whole blocks").

A downsampling block (its shortcut a Pad, a strided Conv or a pooling of the block's
input) reads something besides ``x``, so it is never removable: the shapes stay whole.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import onnx

from .runtime_shapes import runtime_shapes

MAX_BRANCH_NODES = 64  # a branch larger than this is not one block (the walk stops)


@dataclass(frozen=True)
class Block:
    """One removable block: its Add node's name, the shortcut tensor ``x``, the tensor
    the block writes (the Add's or its Relu's output) and its nodes (names)."""

    name: str
    shortcut: str
    output: str
    nodes: frozenset[str]
    convs: tuple[str, ...]


def _constant_names(model: onnx.ModelProto) -> set[str]:
    names = {i.name for i in model.graph.initializer}
    names |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return names


def removable_blocks(model: onnx.ModelProto) -> list[Block]:
    """Every removable block of ``model``, in graph order (module docstring)."""
    nodes = list(model.graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for v in n.input:
            if v:
                consumers.setdefault(v, []).append(i)
    constants = _constant_names(model)
    outputs = {o.name for o in model.graph.output}
    named = Counter(n.name for n in nodes)
    found = []  # (block, branch output)
    for i, node in enumerate(nodes):
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        for x, b in (node.input, node.input[::-1]):
            block = _block(i, x, b, nodes, producer, consumers, constants, outputs)
            if block is not None and all(n and named[n] == 1 for n in block.nodes):
                found.append((block, b))  # every node named, once (recorded by name)
                break
    shapes = _shapes(model, {t for block, b in found for t in (block.shortcut, b)})
    # a broadcasting Add (or a shape unknown): y = x would change the stream's shape
    return [block for block, b in found
            if shapes.get(block.shortcut) is not None
            and shapes.get(block.shortcut) == shapes.get(b)]


def _shapes(model: onnx.ModelProto, names: set[str]) -> dict[str, tuple]:
    """Tensor name -> its shape, for ``names``: from ONNX shape inference where it knows
    every axis (a size, or a name the graph's inputs declare), else from one batch-1
    onnxruntime run (:func:`.runtime_shapes.runtime_shapes`; the Slices of a YOLO C2f
    leave inference with made-up names); absent when neither knows."""
    if not names:
        return {}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - a model inference refuses: every shape from a run
        inferred = model
    declared = {d.dim_param for v in model.graph.input
                for d in v.type.tensor_type.shape.dim if d.dim_param}
    out = {}
    for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        dims = v.type.tensor_type.shape.dim
        shape = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims)
        if v.name in names and dims and all(isinstance(d, int) and d > 0 or d in declared
                                            for d in shape):
            out[v.name] = shape
    missing = sorted(names - set(out))
    if missing:
        ran = runtime_shapes(model, missing)
        out.update({n: ("run", *shape) for n, shape in ran.items()})
    return out


def _block(add: int, x: str, b: str, nodes, producer, consumers, constants, outputs):
    """The block ``Add(x, b)`` with ``b`` the branch's output, or None."""
    if x in constants or b in constants or b not in producer or x == b:
        return None
    branch: set[int] = set()
    stack = [producer[b]]
    while stack:
        i = stack.pop()
        if i in branch:
            continue
        branch.add(i)
        if len(branch) > MAX_BRANCH_NODES:
            return None
        for v in nodes[i].input:
            if not v or v == x or v in constants:
                continue
            if v not in producer:  # a graph input other than x
                return None
            stack.append(producer[v])
    if not any(nodes[i].op_type == "Conv" for i in branch):
        return None
    for i in branch:
        for o in nodes[i].output:
            if o in outputs or any(c not in branch and c != add for c in consumers.get(o, ())):
                return None
    add_node = nodes[add]
    out = add_node.output[0]
    if out in outputs:
        return None
    members = {nodes[i].name for i in branch} | {add_node.name}
    readers = consumers.get(out, [])
    if len(readers) == 1 and nodes[readers[0]].op_type == "Relu":
        relu = nodes[readers[0]]
        if x not in producer or nodes[producer[x]].op_type != "Relu":
            return None  # Relu(x) would stay: x is not known non-negative
        members.add(relu.name)
        out = relu.output[0]
    if out in outputs or not all(nodes[i].name for i in branch):
        return None
    convs = tuple(nodes[i].name for i in sorted(branch) if nodes[i].op_type == "Conv")
    return Block(add_node.name, x, out, frozenset(members), convs)


def remove_blocks(model: onnx.ModelProto, names, found: list[Block] | None = None
                  ) -> onnx.ModelProto:
    """A copy of ``model`` without the blocks named ``names`` (Add node names): every
    reader of a block's output reads its shortcut. A name that is not a removable block
    of ``model`` is a ValueError naming it. ``found``: :func:`removable_blocks` of
    ``model``, when the caller has it (finding them runs shape inference, and may run
    the model once)."""
    names = set(names)
    if not names:
        return model
    blocks = {b.name: b for b in (removable_blocks(model) if found is None else found)}
    unknown = sorted(names - set(blocks))
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not a removable residual block of this model")
    chosen = [blocks[n] for n in sorted(names)]
    gone = set().union(*(b.nodes for b in chosen))
    alias = {b.output: b.shortcut for b in chosen}

    def source(v: str) -> str:
        while v in alias:
            v = alias[v]
        return v

    out = onnx.ModelProto()
    out.CopyFrom(model)
    kept = [n for n in out.graph.node if n.name not in gone]
    for n in kept:
        for k, v in enumerate(n.input):
            if v:
                n.input[k] = source(v)
    read = {v for n in kept for v in n.input} | {o.name for o in out.graph.output}
    while True:  # the removed branches' Constant nodes, now read by nothing
        dead = {id(n) for n in kept if n.op_type == "Constant" and not read & set(n.output)}
        if not dead:
            break
        kept = [n for n in kept if id(n) not in dead]
        read = {v for n in kept for v in n.input} | {o.name for o in out.graph.output}
    del out.graph.node[:]
    out.graph.node.extend(kept)
    written = {o for n in kept for o in n.output}
    inits = [i for i in out.graph.initializer if i.name in read]
    del out.graph.initializer[:]
    out.graph.initializer.extend(inits)
    infos = [v for v in out.graph.value_info if v.name in written]
    del out.graph.value_info[:]
    out.graph.value_info.extend(infos)
    return out
