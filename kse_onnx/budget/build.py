"""Models the budget times: the original with each layer reading only its kept channels
and each pruned stream channel removed, weights unclustered (timing depends on shapes
only), written as the final model is (dense over the kept channels)."""

from __future__ import annotations

import numpy as np
import onnx

from ..analysis.plan import LayerPlan
from ..graph.core import import_graph
from ..graph.export import export_model
from ..graph.select import conv_sites
from ..graph.settings import RecordedSettings
from ..lowering import LayerForm, lower
from ..options import LowerOptions, SelectOptions

EXACT = LayerForm("dense", 1)  # every budget layer: dense over exactly its kept channels


def timing_plan(weight: np.ndarray, kept) -> LayerPlan:
    """A plan keeping channels ``kept`` whole and pruning the others (no clustering)."""
    n, c = weight.shape[:2]
    q = np.zeros(c, dtype=np.int64)
    q[np.asarray(kept, dtype=np.int64)] = n
    labels = np.where(q[None, :] > 0, np.arange(n)[:, None], -1)
    w_hat = weight * (q > 0)[None, :, None, None]
    kernels = [weight[:, ch] if q[ch] else weight[:0, ch] for ch in range(c)]
    return LayerPlan(weight.shape, np.zeros(c), np.zeros(c), q.astype(float) / n,
                     (q > 0).astype(np.int64), q, labels, kernels, w_hat.astype(weight.dtype))


def timing_model(model: onnx.ModelProto, select: SelectOptions, options: LowerOptions,
                 layers: dict, streams: dict) -> onnx.ModelProto:
    """``model`` with ``layers`` (name -> kept input channels) and ``streams`` applied."""
    graph = import_graph(model)
    sites = conv_sites(graph, select)
    plans = {s.name: timing_plan(s.weight, layers[s.name]) for s in sites if s.name in layers}
    lower(graph, sites, plans, options, dict.fromkeys(plans, EXACT), False, streams)
    return export_model(graph, model, RecordedSettings())
