"""``optimize --target-latency R``: the kept channels of every layer, timed on the user's
runtime (or replayed from ``--choices``), and the original masked for the pruned stream
channels, ready for the analysis, the refit and the lowering. With ``--budget-blocks``,
whole residual blocks first (:mod:`.depth`).

Where the removed blocks go: when no stream channel is cut, the model handed on keeps
them and the result names them (:class:`Pruned`): the refit walks the original with the
student skipping them (so each later layer is fitted to the original's values, making
up for the blocks), and the lowering deletes them. When stream channels are cut too, the
channel budget was searched on the model without the blocks (its residual groups are
those of that graph), so the model handed on is that one, masked.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import onnx

from ..analysis.plan import layer_indicator
from ..errors import OptionError
from ..graph.blocks import removable_blocks, remove_blocks
from ..graph.core import import_graph
from ..graph.groups import masked_model
from ..graph.runtime_shapes import fill_conv_shapes
from ..graph.select import conv_sites
from ..graph.walk import default_opset
from ..options import BudgetOptions, KSEOptions, LowerOptions, QuantizeOptions, SelectOptions
from ..runtime.ort import provider_list
from .build import timing_model
from .depth import block_scores, choose_blocks
from .importance import rescaled, sensitivities
from .replay import recorded_budget
from .search import keeps, measure, measure_table, search
from .spans import Cuts, find_cuts
from .table import INT8_BLOCK

TIMING_IMAGES = 4  # calibration inputs behind a timed INT8 model: only its time matters


@dataclass
class Pruned:
    """What the budget hands on: the model to analyse, refit and lower; each layer's kept
    input channels; each stream's kept classes; the blocks the refit's student skips and
    the lowering deletes (module docstring); all removed blocks (recorded for
    ``--choices``); the report."""

    model: onnx.ModelProto
    layers: dict
    streams: dict
    skipped_blocks: list[str] = field(default_factory=list)
    removed_blocks: list[str] = field(default_factory=list)
    report: dict = field(default_factory=dict)
    skipped_convs: list[str] = field(default_factory=list)  # in the skipped blocks


def run_budget(model: onnx.ModelProto, kse: KSEOptions, select: SelectOptions,
               lower_options: LowerOptions, budget: BudgetOptions, target, quantize:
               QuantizeOptions | None, images, quiet: bool = False,
               refit_mode: str = "none") -> Pruned:
    """The budget's kept channels (and removed blocks) and the model they apply to."""
    if lower_options.lowering == "factored":
        raise OptionError("--lowering", "factored cannot be used with --target-latency (the "
                                        "budget writes each layer dense over its kept channels)")
    if target is not None and target.active:
        raise OptionError("--target-latency", "cannot be combined with --target-macs or "
                                              "--target-size")
    if budget.budget_blocks and refit_mode == "block":
        raise OptionError("--budget-blocks", "cannot be combined with --refit block (its "
                                             "blocks are the graph's; use act or distill)")
    if lower_options.choices:
        layers, streams, blocks = recorded_budget(lower_options.choices)
        report = {"target_latency": budget.target_latency,
                  "replayed": f"kept channels taken from {lower_options.choices}, not timed"}
    else:
        layers, streams, report, blocks = _measured(model, kse, select, lower_options, budget,
                                                    quantize, images, quiet)
    if blocks and refit_mode == "block":
        raise OptionError("--refit", f"block cannot refit a model whose residual blocks "
                                     f"were removed ({lower_options.choices} records "
                                     f"{len(blocks)}); use act or distill")
    found = removable_blocks(model) if blocks else []
    try:
        shallow = remove_blocks(model, blocks, found)
    except ValueError as exc:
        raise OptionError("--choices", f"{lower_options.choices}: {exc}") from None
    try:
        masked = masked_model(shallow if streams else model, streams)
    except ValueError as exc:
        raise OptionError("--choices", str(exc)) from None
    skipped = [] if streams else list(blocks)
    gone = {c for b in found if b.name in skipped for c in b.convs}
    return Pruned(masked, layers, streams, skipped, list(blocks), report, sorted(gone))


def unmasked_constants(original, masked) -> dict:
    """Constants a latency budget's mask replaced (masked name -> the original's values,
    node by node), so that the refit's teacher is the original."""
    values = {i.name: i for i in original.graph.initializer}
    nodes = {n.name: n for n in original.graph.node}
    changed = {}
    masked_values = {i.name for i in masked.graph.initializer}
    for node in masked.graph.node:
        before = nodes.get(node.name)
        if before is None:
            continue
        for new, old in zip(node.input, before.input, strict=False):
            if new != old and new in masked_values and old in values:
                changed[new] = onnx.numpy_helper.to_array(values[old])
    return changed


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
    """(layers, streams, report, removed blocks) measured on the user's runtime."""
    if not budget.budget_blocks:
        return (*_channels(model, kse, select, lower_options, budget, quantize, images,
                           quiet), [])
    if images is None:
        raise OptionError("--budget-blocks", "needs --calibration (its images measure "
                                             "what each block costs)")
    providers = provider_list(lower_options.provider)
    points = lower_options.timing_points
    reference, few = _reference(model, quantize, images)

    every = model_cuts(model, kse, select)
    compressed = set(keeps(every, {s.name: s.size for s in every.spans})[0])
    found = removable_blocks(model)

    def timed(names: list[str]) -> dict:
        built = _as_timed(remove_blocks(model, names, found), quantize, few, compressed)
        return measure({"reference": reference.SerializeToString(),
                        "blocks": built.SerializeToString()}, points, providers)["blocks"]

    depth = choose_blocks(block_scores(model, images, quiet, found), budget.target_latency,
                          timed)
    shallow = remove_blocks(model, depth.removed, found)
    worst = max(depth.ratio.values())
    label = _label(quantize)
    if worst <= budget.target_latency:  # blocks alone: every layer keeps its channels
        cuts = model_cuts(shallow, kse, select)
        layers, _ = keeps(cuts, {s.name: s.size for s in cuts.spans})
        report = {"target_latency": budget.target_latency, "reference": label,
                  "blocks": depth.to_dict(), "channels": "none cut (the blocks reach R)",
                  "measured": [{"round": "blocks", "ratio": depth.ratio,
                                "indicator_mass_kept": 1.0}],
                  "indicator_mass_kept": 1.0, "kept_counts": {}}
        return layers, {}, report, depth.removed
    rest = dataclasses.replace(budget, target_latency=budget.target_latency / worst)
    try:
        layers, streams, channels = _channels(shallow, kse, select, lower_options, rest,
                                              quantize, images, quiet)
    except OptionError as exc:  # its ratios are of the model without the blocks
        raise OptionError("--target-latency", (
            f"{budget.target_latency:g} is out of reach: every removable block removed "
            f"({len(depth.removed)}) measured {worst:.3f}x {label}, and cutting channels "
            f"of the rest could not reach {rest.target_latency:.3f}x of that model ("
            f"{str(exc).removeprefix('option --target-latency: ')})")) from None
    final = timing_model(shallow, select, lower_options, layers, streams)
    ratio = measure({"reference": reference.SerializeToString(),
                     "budget": _as_timed(final, quantize, few, layers).SerializeToString()},
                    points, providers)["budget"]
    report = {"target_latency": budget.target_latency, "reference": label,
              "blocks": depth.to_dict(),
              "channels": {**channels, "note": f"searched on the model without the blocks, "
                                               f"to R / {worst:.4f} of it"},
              "measured": [{"round": "blocks and channels, against the original",
                            "ratio": ratio,
                            "indicator_mass_kept": channels["indicator_mass_kept"]}],
              "indicator_mass_kept": channels["indicator_mass_kept"],
              "kept_counts": channels["kept_counts"]}
    return layers, streams, report, depth.removed


def _label(quantize) -> str:
    if quantize is None or not quantize.active:
        return "the original"
    return f"onnxruntime's {quantize.quantize} of the original"


def _reference(model, quantize, images):
    """(the model timed against: the original, or its INT8; the timing images of INT8)."""
    if quantize is None or not quantize.active:
        return model, None
    from ..quantize.ptq import quantize_int8

    few = None
    if quantize.quantize == "int8-static":
        if images is None:
            raise OptionError("--calibration", "int8-static needs calibration inputs")
        few = images[:TIMING_IMAGES]
    return quantize_int8(model, quantize.quantize, set(), few, share=False)[0], few


def _as_timed(built, quantize, few, layers=()):
    """``built`` as the budget times it: itself, or its INT8 as --quantize writes it
    (``layers``: the budget's layers, the quantizer's compressed ones)."""
    if quantize is None or not quantize.active:
        return built
    from ..quantize.apply import kept_float
    from ..quantize.ptq import quantize_int8

    return quantize_int8(built, quantize.quantize, set(layers), few, share=False,
                         float_convs=kept_float(built, quantize))[0]


def _channels(model, kse, select, lower_options, budget, quantize, images, quiet):
    """(layers, streams, report) of the channel budget (docs/budget.md)."""
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
    reference, few = _reference(model, quantize, images)
    if int8:
        from ..quantize.apply import kept_float

        float_convs = kept_float(model, quantize)
        label = _label(quantize)
        timed = (f"{quantize.quantize} as --quantize writes it (onnxruntime's quantizer), "
                 + (f"QDQ calibrated on the first {len(few)} calibration input(s): enough for "
                    "timing, the written model calibrates on all; INT8 layer table" if static
                    else "ConvInteger; float layer table"))
    else:
        label, float_convs, timed = _label(quantize), set(), "float"
    table = measure_table(cuts, points, step, opset, providers, static, float_convs)

    def build(layers: dict, streams: dict) -> bytes:
        built = timing_model(model, select, lower_options, layers, streams)
        return _as_timed(built, quantize, few, layers).SerializeToString()

    found = search(cuts, table, build, reference.SerializeToString(), model.SerializeToString(),
                   budget.target_latency, step, budget.budget_rounds, points, providers, label,
                   timed)
    report = found.to_dict()
    report["importance"] = budget.budget_importance
    if errors is not None:
        report["sensitivity"] = {name: round(e, 6) for name, e in errors.items()}
    return found.layers, found.streams, report
