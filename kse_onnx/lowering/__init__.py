"""Writing KSE plans back into the graph.

Every lowering runs the same three phases over the compressed Convs:
1. input stage (:func:`lower_inputs`): each Conv reads only its kept channels, either
   because its producer will drop the others (recorded, applied in phase 2) or through
   a Gather on axis 1; then the layer's form replaces the Conv (``dense``: one Conv with
   W_hat over the kept channels; ``factored``: grouped Convs per level and a 1x1
   channel-fusion Conv);
2. producer pruning: producers lose the channels no consumer reads. The output node
   of every form is a plain Conv, so this works whatever form the producer took;
3. storage (``compact``): dense weights become codebook + integer codes.

Each layer's form is a :class:`LayerForm`; the ``dense``, ``compact`` and ``factored``
lowerings give every layer the same one, ``auto`` (:mod:`.auto`) chooses per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ..analysis.plan import LayerPlan
from ..errors import ModelError
from ..graph.channels import kept_channels
from ..graph.core import constant_values
from ..graph.group import Group
from ..graph.groups import chain_group, selected_groups
from ..graph.names import unique_tensor_names
from ..graph.select import ConvSite
from ..options import LowerOptions
from . import compact, dense, factored


@dataclass(frozen=True)
class LayerForm:
    """How one compressed Conv is written: ``form`` is ``dense`` or ``factored``;
    ``align`` rounds the kept input channel count up to a multiple of it with zero
    kernels, and 0 keeps every input channel (same shape as the original Conv, W_hat)."""

    form: str = "dense"
    align: int = 8

    @property
    def label(self) -> str:
        if self.align == 0:
            return "whole"
        return f"{self.form}/align{self.align}"

    @classmethod
    def parse(cls, label: str) -> LayerForm:
        if label == "whole":
            return cls("dense", 0)
        form, _, align = label.partition("/align")
        if form not in ("dense", "factored") or not align.isdigit() or int(align) < 1:
            raise ValueError(f"unknown layer form {label!r}")
        return cls(form, int(align))

    def keep(self, plan: LayerPlan) -> np.ndarray:
        """Input channels the layer reads in this form."""
        if self.align == 0:
            return np.arange(len(plan.q))
        return kept_channels(plan.q, plan.indicator, self.align)


@dataclass
class Lowered:
    """How one compressed Conv was written."""

    keep: np.ndarray  # original input channels the lowered Conv reads
    input_stage: str  # "producer", "gather", "all" or "stream"
    form: LayerForm
    gather_reason: str | None = None  # why a "gather" layer has no group to cut upstream


def uniform_form(options: LowerOptions) -> LayerForm:
    """The form every layer gets under a fixed (non-auto) lowering."""
    return LayerForm("factored" if options.lowering == "factored" else "dense", options.align)


def effective_form(form: LayerForm, plan: LayerPlan) -> LayerForm:
    """``form``, except that a 1x1 conv is never factored: its kernels are scalars, so
    the per-kernel responses cost as much as the dense layer and the fusion comes on
    top (MobileNetV2: 7.9x the multiply-adds); it is written dense at the same align."""
    if form.form == "factored" and tuple(plan.weight_shape[2:]) == (1, 1):
        return LayerForm("dense", form.align)
    return form


def compressed_sites(sites: list[ConvSite], plans: dict[str, LayerPlan]) -> list[ConvSite]:
    return [s for s in sites if s.name in plans and plans[s.name].compressed]


def lower(graph: gs.Graph, sites: list[ConvSite], plans: dict[str, LayerPlan],
          options: LowerOptions, forms: dict[str, LayerForm] | None = None,
          compact_storage: bool | None = None, streams: dict | None = None
          ) -> dict[str, Lowered]:
    """Rewrite every compressed Conv of ``graph`` in place; returns what was done.

    ``forms`` gives a layer's form by name (default: :func:`uniform_form`);
    ``compact_storage`` defaults to ``options.lowering == "compact"``; ``streams`` maps
    a residual group's key to the classes it keeps (:mod:`..graph.groups`; the graph
    must be masked for them): its readers then read it as is, and the other channels
    are removed from the whole group. Any other layer's kept channels are cut at its
    own group's producer (a ``chain``), or selected by a Gather."""
    done: dict[str, Lowered] = {}
    prunes: list[tuple[Group, np.ndarray]] = []
    compressed = compressed_sites(sites, plans)
    default = uniform_form(options)
    try:
        pruned_streams = selected_groups(graph, streams)
    except ValueError as exc:
        raise ModelError(str(exc)) from None
    readers = {r.name: (st, kept) for st, kept in pruned_streams for r in st.readers}
    for site in compressed:
        plan = plans[site.name]
        form = effective_form((forms or {}).get(site.name, default), plan)
        keep = form.keep(plan)
        if site.node.name in readers:
            stream, kept = readers[site.node.name]
            if not np.array_equal(keep, stream.kept(site.node.inputs[0].name, kept)):
                raise ModelError(f"node {site.name!r}: its kept channels are not those its "
                                 f"channel stream {stream.key!r} keeps")
            stage, x, why = "stream", site.node.inputs[0], None
        else:
            stage, x, why = lower_inputs(graph, site.node, keep, form, options, prunes)
        done[site.name] = Lowered(keep, stage, form, why)
        if form.form == "factored":
            factored.rewrite(graph, site.node, x, plan, keep)
        else:
            dense.rewrite(site.node, x, plan, keep)
    for group, kept in prunes + pruned_streams:
        group.prune(kept)
    if options.lowering == "compact" if compact_storage is None else compact_storage:
        for site in compressed:
            if done[site.name].form.form == "dense":  # a factored layer stores its kernels once
                compact.rewrite(graph, site.node)
    unique_tensor_names(graph)  # before cleanup and toposort, which go by name
    graph.cleanup().toposort()
    return done


def lower_inputs(graph, node, keep, form: LayerForm, options: LowerOptions, prunes):
    """Make ``node``'s data input carry only ``keep``; returns (stage, tensor to read,
    why its own group is no chain, for a Gather the options did not ask for)."""
    x = node.inputs[0]
    if len(keep) == constant_values(node.inputs[1]).shape[1]:
        return "all", x, None
    why = None  # --no-prune-producers, or a factored layer: the options chose the Gather
    if options.prune_producers and form.form != "factored":
        group = chain_group(graph, node)
        if group.kind == "chain":
            prunes.append((group, keep))
            return "producer", x, None
        why = group.reason
    indices = gs.Constant(f"{node.name}_kse_keep", keep.astype(np.int64))
    gathered = gs.Variable(f"{node.name}_kse_kept", dtype=x.dtype)
    graph.nodes.append(gs.Node("Gather", f"{node.name}_kse_gather", {"axis": 1},
                               inputs=[x, indices], outputs=[gathered]))
    return "gather", gathered, why
