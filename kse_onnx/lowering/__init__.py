"""Writing KSE plans back into the graph.

Every lowering runs the same three phases over the compressed Convs:
1. input stage (:func:`lower_inputs`): each Conv reads only its kept channels, either
   because its producer will drop the others (recorded, applied in phase 2) or through
   a Gather on axis 1; then the chosen form replaces the Conv (``dense``: one Conv with
   W_hat over the kept channels; ``factored``: grouped Convs per level and a 1x1
   channel-fusion Conv);
2. producer pruning: producers lose the channels no consumer reads. The output node
   of every form is a plain Conv, so this works whatever form the producer took;
3. storage (``compact`` only): dense weights become codebook + integer codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ..analysis.plan import LayerPlan
from ..graph.channels import ProducerChain, kept_channels, producer_chain, prune_chain
from ..graph.select import ConvSite, constant_values
from ..options import LowerOptions
from . import compact, dense, factored


@dataclass
class Lowered:
    """How one compressed Conv was written."""

    keep: np.ndarray  # original input channels the lowered Conv reads
    input_stage: str  # "producer", "gather" or "all"


def lower(graph: gs.Graph, sites: list[ConvSite], plans: dict[str, LayerPlan],
          options: LowerOptions) -> dict[str, Lowered]:
    """Rewrite every compressed Conv of ``graph`` in place; returns what was done."""
    done: dict[str, Lowered] = {}
    prunes: list[tuple[ProducerChain, np.ndarray]] = []
    compressed = [s for s in sites if s.name in plans and plans[s.name].compressed]
    for site in compressed:
        plan = plans[site.name]
        keep = kept_channels(plan.q, plan.indicator, options.align)
        stage, x = lower_inputs(graph, site.node, keep, options, prunes)
        done[site.name] = Lowered(keep, stage)
        if options.lowering == "factored":
            factored.rewrite(graph, site.node, x, plan, keep)
        else:
            dense.rewrite(site.node, x, plan, keep)
    for chain, keep in prunes:
        prune_chain(chain, keep)
    if options.lowering == "compact":
        for site in compressed:
            compact.rewrite(graph, site.node)
    graph.cleanup().toposort()
    return done


def lower_inputs(graph, node, keep, options, prunes):
    """Make ``node``'s data input carry only ``keep``; returns (stage, tensor to read)."""
    x = node.inputs[0]
    if len(keep) == constant_values(node.inputs[1]).shape[1]:
        return "all", x
    prune = options.prune_producers and options.lowering != "factored"
    chain = producer_chain(graph, node) if prune else None
    if chain is not None:
        prunes.append((chain, keep))
        return "producer", x
    indices = gs.Constant(f"{node.name}_kse_keep", keep.astype(np.int64))
    gathered = gs.Variable(f"{node.name}_kse_kept", dtype=x.dtype)
    graph.nodes.append(gs.Node("Gather", f"{node.name}_kse_gather", {"axis": 1},
                               inputs=[x, indices], outputs=[gathered]))
    return "gather", gathered
