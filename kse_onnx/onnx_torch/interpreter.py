"""The one loop that runs ONNX nodes with torch (through the op table, :mod:`.ops`).

An :class:`Interpreter` is built once per graph: it reads the default-domain opset and
every node's attributes, and refuses, before anything runs, every node the op table
cannot compute exactly as onnxruntime does (all of them listed in one error). Then
:meth:`Interpreter.run` runs a range of nodes (in graph order by default) over an
environment of named tensors, with

- overrides: ``{node index: fn(args) -> output(s)}`` computes a node another way (the
  refit's shared-kernel Conv with free kernels, in place of the graph's Conv);
- captures: the environment is returned, so any intermediate tensor can be read;
- a ``lookup`` of the names not in the environment (initializers, parameters, held
  constants).

:meth:`Interpreter.node` runs one node: the single place the op table is called. The
whole-calibration-set runs of the refit (float16, chunked, on disk) wrap it in
:class:`kse_onnx.onnx_torch.held.HeldRunner`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from ..errors import ModelError
from ..graph.walk import default_opset
from . import ops

Override = Callable[[list], "torch.Tensor | tuple"]


class Interpreter:
    """The nodes of ``model``'s graph, ready to run with torch (:mod:`.ops`).

    ``where`` names the model in errors (a path, "refit", "distill"); ``only``: the
    indices of the nodes that will run (all by default), the only ones checked."""

    def __init__(self, model: onnx.ModelProto, where: str = "model",
                 only: set[int] | None = None):
        self.model = model
        self.nodes = model.graph.node
        self.opset = default_opset(model)
        self.attrs = [ops.attributes(node, self.opset) for node in self.nodes]
        refuse_unmapped(model.graph, self.attrs, where, only)

    def node(self, i: int, args: list, override: Override | None = None) -> tuple:
        """The outputs (a tuple) of node ``i`` from its input values ``args`` (None for
        an omitted optional input); ``override(args)`` computes them instead when given."""
        node = self.nodes[i]
        out = override(args) if override is not None else ops.OPS[node.op_type](
            args, self.attrs[i])
        return out if isinstance(out, tuple) else (out,)

    def run(self, env: dict, order: Iterable[int] | None = None,
            lookup: Callable[[str], torch.Tensor] | None = None,
            overrides: Mapping[int, Override] | None = None) -> dict:
        """Run the nodes ``order`` (indices; all, in graph order, by default), each reading
        its inputs from ``env`` or else ``lookup(name)``, and writing its outputs into
        ``env``, which is returned (every intermediate tensor in it). Constant nodes are
        skipped: their values come from ``lookup``."""
        overrides = overrides or {}
        for i in range(len(self.nodes)) if order is None else order:
            node = self.nodes[i]
            if node.op_type == "Constant":
                continue
            args = [None if not name else env[name] if name in env else lookup(name)
                    for name in node.input]
            for name, value in zip(node.output, self.node(i, args, overrides.get(i)),
                                   strict=False):
                env[name] = value
        return env


def constant_value(node: onnx.NodeProto) -> np.ndarray:
    """The tensor a Constant node holds, whichever attribute carries it."""
    attr = node.attribute[0]
    value = onnx.helper.get_attribute_value(attr)
    if attr.name == "value":
        return numpy_helper.to_array(value)
    dtype = np.float32 if attr.name.startswith("value_float") else np.int64
    return np.array(value, dtype=dtype)


def refuse_unmapped(graph: onnx.GraphProto, attrs: list[dict], where: str,
                    only: set[int] | None = None) -> None:
    """One ModelError listing every node (of ``only``, when given) the interpreter cannot
    compute as onnxruntime does (grouped by operator or setting, with the node names),
    before anything runs."""
    missing: dict[str, list[str]] = {}
    for i, (node, node_attrs) in enumerate(zip(graph.node, attrs, strict=True)):
        if only is not None and i not in only:
            continue
        why = ops.refusal(node, node_attrs)
        if why is not None:
            missing.setdefault(why, []).append(node.name or node.output[0])
    if missing:
        count = sum(len(v) for v in missing.values())
        listed = "; ".join(f"{why} (node{'s' if len(names) > 1 else ''} "
                           f"{', '.join(repr(n) for n in names[:5])}"
                           f"{f' and {len(names) - 5} more' if len(names) > 5 else ''})"
                           for why, names in missing.items())
        raise ModelError(f"{where}: the fine-tuning importer cannot map {count} node(s): "
                         f"{listed}")
