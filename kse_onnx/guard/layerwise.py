"""Per-layer G/T for ``--max-drop``: what each setting of each layer costs in error and
in bytes, and the path of settings the search bisects along.

Each eligible Conv has the options of ``LADDER`` (G, T), most aggressive first, and
"whole" (left uncompressed). An option's *error* is the relative output error of the
original with only that layer's weight replaced by its W_hat (one forward pass, no
refit: a ranking, not a promise); its *bytes* are those of its weight stored compact
(distinct kernels plus codes, :func:`..lowering.compact.codebook`; the dense weight when
that is smaller; whole: the dense weight).

The path starts with every layer at the most aggressive option. Each step moves one layer
to a gentler option: the move with the largest fall of the summed error per byte added
(moves that add no bytes first); it ends when no move lowers the error (every layer
whole or at an option without error). The drop falls along the path and the bytes grow,
so the search bisects on it for the first state that holds the drop. Why greedy by error
per byte: it is the classic knapsack heuristic, it gives each layer the gentlest setting
it is worth, not only "whole", and it costs one forward pass per layer and setting, where
refitting each would cost minutes.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import onnx

from ..analysis.model import analyse
from ..lowering.compact import codebook
from ..options import KSEOptions, SelectOptions
from .measure import drop, outputs

LADDER = ((5, 1), (4, 1), (5, 0), (4, 0), (3, 0))  # (G, T), smallest files first


@dataclass(frozen=True)
class Option:
    """One setting of one layer: ``levels`` (G, T), or None for whole."""

    levels: tuple[int, int] | None
    error: float
    size: int


def escape(name: str) -> str:
    """A glob matching exactly ``name`` (``[``, ``*`` and ``?`` taken literally)."""
    return "".join(f"[{c}]" if c in "[]*?" else c for c in name)


def probe_error(source: onnx.ModelProto, weight: str, values: np.ndarray, x: np.ndarray,
                reference: list, label: str) -> float:
    """The relative output error of ``source`` with initializer ``weight`` set to
    ``values`` (cast to its type), on ``x`` against ``reference``."""
    probe = onnx.ModelProto()
    probe.CopyFrom(source)
    tensor = next(i for i in probe.graph.initializer if i.name == weight)
    tensor.CopyFrom(onnx.numpy_helper.from_array(
        values.astype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)), tensor.name))
    return drop(reference, outputs(probe, x, label)).rel_error


def layer_options(source: onnx.ModelProto, base: KSEOptions, select: SelectOptions,
                  x: np.ndarray, reference: list) -> dict[str, list[Option]]:
    """Every eligible layer's options: the LADDER's in order, then whole."""
    weights = {n.name: n.input[1] for n in source.graph.node if n.op_type == "Conv"}
    inits = {i.name: i for i in source.graph.initializer}
    select = dataclasses.replace(select, layer_gt=())  # the search sets every layer's
    options: dict[str, list[Option]] = {}
    for G, T in LADDER:
        result = analyse(source, dataclasses.replace(base, G=G, T=T), select)
        for name, plan in sorted(result.plans.items()):
            if not plan.compressed or weights.get(name) not in inits:
                continue
            dense = onnx.numpy_helper.to_array(inits[weights[name]])
            values = plan.w_hat.astype(dense.dtype)
            table, codes = codebook(values)
            size = min(table.nbytes + codes.nbytes, dense.nbytes)
            error = probe_error(source, weights[name], values, x, reference, name)
            options.setdefault(name, []).append(Option((G, T), error, size))
    for name in options:
        options[name].append(Option(None, 0.0, onnx.numpy_helper.to_array(
            inits[weights[name]]).nbytes))
    return options


def upgrade_path(options: dict[str, list[Option]]) -> list[dict[str, int]]:
    """States (layer -> index of its option) from every layer at its first option, one
    move at a time (module docstring); deterministic (ties: the first layer by name)."""
    state = dict.fromkeys(sorted(options), 0)
    path = [dict(state)]
    while True:
        best = None  # (error fall per byte, layer, option)
        for name in sorted(options):
            now = options[name][state[name]]
            for j in range(state[name] + 1, len(options[name])):
                gain = now.error - options[name][j].error
                if not gain > 0:
                    continue
                cost = options[name][j].size - now.size
                score = math.inf if cost <= 0 else gain / cost
                if best is None or score > best[0]:
                    best = (score, name, j)
        if best is None:
            return path
        state[best[1]] = best[2]
        path.append(dict(state))


def settings_of(options: dict[str, list[Option]], state: dict[str, int]):
    """(``--layer-gt`` entries, ``--skip`` globs, {layer: [G, T] or "whole"}) of a state:
    layers at their first option take the model's G and T (no entry)."""
    layer_gt, skip, chosen = [], [], {}
    for name in sorted(state):
        if not state[name]:
            continue
        levels = options[name][state[name]].levels
        if levels is None:
            skip.append(escape(name))
            chosen[name] = "whole"
        else:
            layer_gt.append(f"{escape(name)}={levels[0]},{levels[1]}")
            chosen[name] = list(levels)
    return tuple(layer_gt), tuple(skip), chosen


__all__ = ["LADDER", "Option", "escape", "layer_options", "probe_error", "settings_of",
           "upgrade_path"]
