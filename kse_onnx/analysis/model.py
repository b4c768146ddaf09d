"""KSE plan of a whole model: every Conv site of the graph, and the plan of each
eligible one (docs/architecture.md, "Data flow").

Shared by the facade (:mod:`kse_onnx.api`) and by ``verify``, which rebuilds the same
plans from the settings recorded in an optimized model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .. import __version__, progress
from ..errors import ModelError
from ..graph.core import import_graph
from ..graph.runtime_shapes import fill_conv_shapes
from ..graph.select import ConvSite, conv_sites
from ..options import KSEOptions, SelectOptions, as_dict
from ..report import ModelReport, layer_report
from .plan import LayerPlan, plan_layer


@dataclass
class Analysis:
    """A model's graph, its Conv sites and the KSE plan of every eligible one."""

    graph: object  # onnx_graphsurgeon.Graph
    sites: list[ConvSite]
    plans: dict[str, LayerPlan]
    report: ModelReport


def analyse(model, kse: KSEOptions, select: SelectOptions, model_name: str = "",
            quiet: bool = True, kept: dict | None = None) -> Analysis:
    """Plan every eligible Conv of ``model`` (an onnx.ModelProto); progress on stderr in
    input channels scored unless ``quiet``; ``kept`` maps a layer name to the input
    channels it keeps (the latency budget's override)."""
    notes: list[str] = []
    graph = import_graph(model, notes)
    filled = fill_conv_shapes(graph, model)  # sizes inference lost, from one onnxruntime run
    if notes:
        notes.append(f"conv shapes of {filled} tensors taken from one onnxruntime run" if filled
                     else "conv output sizes unknown: multiply-adds not counted")
    sites = conv_sites(graph, select)
    plans, layers = {}, []
    eligible = [s for s in sites if s.reason is None]
    bar = progress.bar(sum(s.weight.shape[1] for s in eligible), "KSE analysis",
                       unit="channel", quiet=quiet, lines=True)
    for site in sites:
        shape = None if site.weight is None else site.weight.shape
        levels = select.layer_levels(site.name)  # --layer-gt: this layer's own G and T
        layer_kse = kse if levels is None else dataclasses.replace(kse, G=levels[0],
                                                                   T=levels[1])
        if site.reason is None:
            try:
                plans[site.name] = plan_layer(site.weight, layer_kse, key=site.name,
                                              kept=(kept or {}).get(site.name))
            except ValueError as exc:
                raise ModelError(f"node {site.name!r}: recorded budget: {exc}") from None
            bar.update(site.weight.shape[1], layers=f"{len(plans)}/{len(eligible)}")
        layers.append(layer_report(site.name, shape if shape and len(shape) == 4 else None,
                                   site.output_hw, plans.get(site.name), site.reason,
                                   layer_kse.G))
    bar.close()
    settings = {"kse_onnx_version": __version__, **as_dict(kse, select)}
    report = ModelReport(model_name, settings, layers)
    if notes:
        report.extra["notes"] = notes
    return Analysis(graph, sites, plans, report)
