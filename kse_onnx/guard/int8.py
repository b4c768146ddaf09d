"""``--quantize int8-static --max-drop D``: the INT8 model within D, its worst nodes
left in float.

1. the ``--max-drop`` search (or the latency budget) chooses the KSE model in float
   (its layer forms still timed in INT8);
2. that model is quantized (onnxruntime's ``quantize_static``, calibrated on the images
   the refit used) and its drop against the original measured on the selection part of
   the held-out images (:mod:`.confirm`);
3. over D, every node the QDQ model rounds next to is ranked by the error it causes
   alone: the QDQ model with only that node's (de)quantization kept, the rest in float
   (:mod:`kse_onnx.quantize.probe`), one forward pass on up to ``RANK_IMAGES`` held-out
   images per node, scored by the output error of :mod:`.measure` (per-slice for
   outputs that are not logits, so scores flattened beside pixel coordinates count);
4. the ``k`` worst are left float (``nodes_to_exclude``), ``k`` the smallest that holds
   D found by bisection, each candidate quantized again and measured in full;
   the chosen one is measured again on the confirmation images, which no choice saw,
   and that drop is the one reported (the next candidate with more nodes float, when it
   fails there);
5. when only leaving every ranked node float would hold D, no INT8 setting does: a
   one-line error names the best drop reached, and nothing is written.

Why rank by probes, not by quantizing with one node left out: that is a calibration per
node (a minute for 60 nodes on a small detector), a probe is one forward pass. A
misranked node costs integer kernels, never accuracy: every candidate is measured.
The nodes left float are recorded (``int8_float_nodes`` in the written settings, and
``report.extra["int8"]``).
"""

from __future__ import annotations

import dataclasses
import sys
from types import SimpleNamespace

import onnx

from ..errors import ModelError
from ..graph.count import conv_counts
from ..graph.export import check_model, settings_of
from ..graph.settings import RecordedSettings
from ..options import DataOptions, GuardOptions, QuantizeOptions
from ..quantize.apply import kept_float, quantize_output
from ..quantize.probe import QdqIndex
from ..quantize.ptq import STATIC_MIN_OPSET, at_least_opset, expand_constants, quantize_int8
from ..runtime.loadcheck import runtime_check
from .confirm import confirmed, cut
from .measure import Drop, drop, outputs
from .search import Builder, guarded_budget, guarded_search, split

RANK_IMAGES = 256


def guarded(builder: Builder, images, guard: GuardOptions, data: DataOptions | None,
            budget=None, log=None):
    """(built, Drop) of ``--max-drop`` (with ``budget``: ``--target-latency`` too); with
    ``--quantize int8-static`` the model is chosen in float, then quantized within D."""
    options = builder.settings.get("quantize")
    static = (options is not None and options.quantize == "int8-static"
              and not options.float_output)
    if static:
        builder = dataclasses.replace(builder, settings={
            **builder.settings, "quantize": dataclasses.replace(options, float_output=True)})
    if budget is not None and budget.active:
        built, measured = guarded_budget(builder, images, guard, data, budget.target_latency)
    else:
        built, measured = guarded_search(builder, images, guard, data)
    if not static:
        return built, measured
    quiet = getattr(builder.settings.get("progress"), "quiet", False)
    say = (lambda line: None) if quiet else (
        log or (lambda line: print(line, file=sys.stderr, flush=True)))
    return int8_within(builder.source, built, options, images, guard, data, measured, say,
                       builder.settings.get("output_name") or "compressed model")


def rank_nodes(floating: onnx.ModelProto, options: QuantizeOptions, calibration, x,
               reference: list) -> list[tuple[str, float]]:
    """The nodes int8-static rounds next to in ``floating``, worst first: the output
    error of the QDQ model rounding next to that node alone, on images ``x``."""
    settings = settings_of(floating) or RecordedSettings()
    qdq, _ = quantize_int8(floating, "int8-static", settings.compressed, calibration,
                           share=False, float_convs=kept_float(floating, options))
    index = QdqIndex.of(qdq, at_least_opset(expand_constants(floating), STATIC_MIN_OPSET))
    scores = [(name, drop(reference, outputs(index.alone({name}), x, name)).error)
              for name in index.nodes()]
    return sorted(scores, key=lambda s: (-s[1], s[0]))  # NaN: never first by accident


def int8_within(original: onnx.ModelProto, built, options: QuantizeOptions, images,
                guard: GuardOptions, data: DataOptions | None, float_drop: Drop, say,
                output_name: str = "compressed model"):
    """(built with its INT8 model, its Drop): the chosen float ``built.model`` quantized,
    the worst nodes left float until the drop on the selection images is at most D, then
    confirmed on the images kept back (:mod:`.confirm`): the confirmed drop is reported."""
    fit, x, y, source = split(images, guard, data)
    parts = cut(x, y, guard.confirm, source)
    x, y = parts.select_x, parts.select_y
    floating = built.model
    reference = outputs(original, x, "the original")
    tried = []

    def candidate(float_nodes: list[str]):
        model, info = quantize_output(floating, options, fit, set(float_nodes))
        measured = drop(reference, outputs(model, x, "an INT8 candidate"), y, source)
        tried.append({"float_nodes": len(float_nodes), "drop": measured.to_dict()})
        say(f"max-drop INT8: {len(float_nodes)} node(s) left float: {measured.line()}")
        return float_nodes, SimpleNamespace(model=model, info=info), measured

    held = []  # (float nodes, built, selection drop) that held D, fewest float nodes first
    first = candidate([])
    ranked: list[tuple[str, float]] = []
    if first[2].points <= guard.max_drop:
        held.append(first)
    else:
        ranked = rank_nodes(floating, options, fit, x[:RANK_IMAGES],
                            outputs(original, x[:RANK_IMAGES], "the original"))
        lo, hi = 0, len(ranked)  # lo fails; hi (all float) is no INT8
        while hi - lo > 1:
            mid = (lo + hi) // 2
            result = candidate([name for name, _ in ranked[:mid]])
            if result[2].points <= guard.max_drop:
                held.insert(0, result)
                hi = mid
            else:
                lo = mid
        if not held:
            raise ModelError(_none_holds(guard, tried, len(ranked), len(x), source))
    quantized, chosen, measured, looks = confirmed(
        original, held, lambda c: c[1], parts, guard.max_drop, say,
        lambda c: f"INT8 with {len(c[0])} node(s) left float")
    info = quantized.info
    info["max_drop"] = {
        "float_model_drop": float_drop.to_dict(), "measured_on": f"{len(x)} {source}",
        "confirmed_on": f"{len(parts.confirm_x)} {parts.confirm_source()}",
        "confirmations": looks, "calibrated_on": len(fit),
        "ranked": [[n, _finite(e)] for n, e in ranked], "tried": tried,
        "selection_drop": chosen[2].to_dict(), "drop": measured.to_dict()}
    return _with_model(built, quantized.model, info, original, output_name), measured


def _finite(value: float) -> float | None:
    return value if value == value and abs(value) != float("inf") else None


def _none_holds(guard: GuardOptions, tried: list, ranked: int, images: int,
                source: str) -> str:
    finite = [t for t in tried if t["drop"]["points"] is not None]
    best = min(finite, key=lambda t: t["drop"]["points"]) if finite else None
    reached = ("no INT8 candidate ran" if best is None else
               f"the best drop reached was {best['drop']['points']:.2f} points with "
               f"{best['float_nodes']} of {ranked} nodes left float")
    return (f"--quantize int8-static --max-drop {guard.max_drop:g}: no INT8 model holds the "
            f"drop on the {images} {source}; {reached}; nothing written (drop --quantize, "
            "or raise --max-drop)")


def _with_model(built, model: onnx.ModelProto, info: dict, original: onnx.ModelProto,
                output_name: str):
    """``built`` (an Optimized) with ``model`` and the report facts that follow from it."""
    check_model(model, output_name)
    report = built.report
    report.extra["int8"] = info
    report.extra["runtime_check"] = runtime_check(model, original, output_name)
    report.settings = settings_of(model).to_dict()
    report.file_size_after = model.ByteSize()
    counts = report.extra.get("graph_counts")
    if isinstance(counts, dict):
        counts["after"] = conv_counts(model)
    return type(built)(model, report)
