"""``optimize --target-latency R``: the kept channels of every layer, timed on the user's
runtime (or replayed from ``--choices``), and the original masked for the pruned stream
channels, ready for the analysis, the refit and the lowering."""

from __future__ import annotations

import math

import onnx

from ..analysis.plan import layer_indicator
from ..errors import OptionError
from ..graph.core import import_graph
from ..graph.groups import masked_model
from ..graph.runtime_shapes import fill_conv_shapes
from ..graph.select import conv_sites
from ..graph.walk import default_opset
from ..options import BudgetOptions, KSEOptions, LowerOptions, QuantizeOptions, SelectOptions
from ..runtime.ort import provider_list
from .build import timing_model
from .importance import rescaled, sensitivities
from .replay import recorded_budget
from .search import keeps, measure_table, search
from .spans import Cuts, find_cuts
from .table import INT8_BLOCK

TIMING_IMAGES = 4  # calibration inputs behind a timed INT8 model: only its time matters


def run_budget(model: onnx.ModelProto, kse: KSEOptions, select: SelectOptions,
               lower_options: LowerOptions, budget: BudgetOptions, target, quantize:
               QuantizeOptions | None, images, quiet: bool = False
               ) -> tuple[onnx.ModelProto, dict, dict, dict]:
    """(masked model, layer -> kept input channels, stream -> kept classes, report)."""
    if lower_options.lowering == "factored":
        raise OptionError("--lowering", "factored cannot be used with --target-latency (the "
                                        "budget writes each layer dense over its kept channels)")
    if target is not None and target.active:
        raise OptionError("--target-latency", "cannot be combined with --target-macs or "
                                              "--target-size")
    if lower_options.choices:
        layers, streams = recorded_budget(lower_options.choices)
        report = {"target_latency": budget.target_latency,
                  "replayed": f"kept channels taken from {lower_options.choices}, not timed"}
    else:
        layers, streams, report = _measured(model, kse, select, lower_options, budget,
                                            quantize, images, quiet)
    try:
        masked = masked_model(model, streams)
    except ValueError as exc:
        raise OptionError("--choices", str(exc)) from None
    return masked, layers, streams, report


def model_cuts(model: onnx.ModelProto, kse: KSEOptions, select: SelectOptions) -> Cuts:
    """The spans of ``model``, ranked by the KSE indicator of every compressible Conv."""
    graph = import_graph(model)
    fill_conv_shapes(graph, model)
    sites = conv_sites(graph, select)
    indicators = {}
    for site in sites:
        if site.reason is None:
            v = layer_indicator(site.weight, kse)
            if v is not None:
                indicators[site.name] = v
    return find_cuts(graph, sites, indicators)


def _measured(model, kse, select, lower_options, budget, quantize, images, quiet):
    cuts = model_cuts(model, kse, select)
    errors = None
    if budget.budget_importance == "sensitivity":
        if images is None:
            raise OptionError("--budget-importance", "sensitivity needs --calibration (its "
                                                     "images measure each group's cost)")

        def probe(counts: dict) -> bytes:
            return timing_model(model, select, lower_options, *keeps(cuts, counts)
                                ).SerializeToString()

        errors = sensitivities(cuts, model, images, budget.budget_step, probe, quiet)
        cuts = rescaled(cuts, errors, budget.budget_step)
    providers = provider_list(lower_options.provider)
    points = lower_options.timing_points
    opset = default_opset(model)
    int8 = quantize is not None and quantize.active
    static = int8 and quantize.quantize == "int8-static"
    step = math.lcm(budget.budget_step, INT8_BLOCK) if static else budget.budget_step
    timed, few = "float", None
    if int8:
        from ..quantize.apply import kept_float
        from ..quantize.ptq import quantize_int8

        if static:
            if images is None:
                raise OptionError("--calibration", "int8-static needs calibration inputs")
            few = images[:TIMING_IMAGES]
        float_convs = kept_float(model, quantize)
        reference = quantize_int8(model, quantize.quantize, set(), few, share=False)[0]
        label = f"onnxruntime's {quantize.quantize} of the original"
        timed = (f"{quantize.quantize} as --quantize writes it (onnxruntime's quantizer), "
                 + (f"QDQ calibrated on the first {len(few)} calibration input(s): enough for "
                    "timing, the written model calibrates on all; INT8 layer table" if static
                    else "ConvInteger; float layer table"))
    else:
        reference, label, float_convs = model, "the original", set()
    table = measure_table(cuts, points, step, opset, providers, static, float_convs)

    def build(layers: dict, streams: dict) -> bytes:
        built = timing_model(model, select, lower_options, layers, streams)
        if int8:
            built = quantize_int8(built, quantize.quantize, set(layers), few, share=False,
                                  float_convs=kept_float(built, quantize))[0]
        return built.SerializeToString()

    found = search(cuts, table, build, reference.SerializeToString(), model.SerializeToString(),
                   budget.target_latency, step, budget.budget_rounds, points, providers, label,
                   timed)
    report = found.to_dict()
    report["importance"] = budget.budget_importance
    if errors is not None:
        report["sensitivity"] = {name: round(e, 6) for name, e in errors.items()}
    return found.layers, found.streams, report
