"""The measured search: allocate for predicted targets, build, time the whole model
against the reference, and correct the targets until the measured ratio is at most R at
every timing point, as close to R as the rounds allow (docs/budget.md).

The per-layer table predicts savings only roughly (a layer timed alone is not a layer
in the network), so each round's predicted target at each point comes from every
(predicted, measured) pair so far (:func:`_bracketed_goal`): linear between the pair
measured under ``R - MARGIN`` with the largest predicted ratio and the one measured over
it with the smallest (regula falsi), or, with no pair over it, the best pair's
correction ``1 - (1 - R + MARGIN) / f_p``, ``f_p = (1 - measured_p) / (1 - predicted_p)``.
The first pair is the smallest model (every unit at its smallest aligned count), timed
first: if even it is above R, R is out of reach and the error names the best reachable
ratio. Of everything measured at or under R (the smallest model included), the set
keeping the most indicator mass wins; when it is far under R, :func:`_refine` bisects
towards the nearest set measured over R, or towards the whole model (1x, over any R < 1)
when every round landed under R. Float and INT8 budgets follow this one rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import ModelError, OptionError
from ..runtime.bench import interleaved_latency
from .allocate import Predictor, allocate, minimum
from .spans import Cuts
from .table import time_layer

MODEL_BUDGET_S = 6.0  # timed loop per whole-model measurement and timing point
MARGIN = 0.01  # aim this far below R (measurement noise)
CLOSE = 0.025  # a round this close under R ends the search
REFINE_ROUNDS = 3  # bisections between the kept sets under and over R (see search)
LAYOUT_BLOCK = 8  # channels of onnxruntime's blocked conv layout, at least (_step_by_reach)
LAYOUT_MARGIN = 0.1  # the aligned step's smallest model must be this much faster
MAX_REPEATS = 200

# build(layers, streams) -> serialized model timed against the reference
Builder = Callable[[dict, dict], bytes]


@dataclass
class Budget:
    """The chosen kept channels and everything measured on the way."""

    target: float
    step: int
    layers: dict[str, list[int]]  # compressed Conv -> kept input channels
    streams: dict[str, list[int]]  # stream key -> kept classes
    kept_counts: dict[str, int]  # unit -> kept ids
    mass_kept: float  # indicator mass kept / total, over every unit
    rounds: list[dict] = field(default_factory=list)
    minimum: dict = field(default_factory=dict)
    table: dict = field(default_factory=dict)
    reference: str = "the original"
    timed: str = "float"  # the form every timed model took (the one written)
    # the reference's time over the float original's, per point (1 when the reference is
    # the float original): a ratio times this is the ratio to the float original
    reference_to_float: dict = field(default_factory=dict)
    # the step's choice by reach (:func:`_step_by_reach`): each step's smallest model
    layout: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"target_latency": self.target, "step": self.step, "reference": self.reference,
                "timed": self.timed, "reference_to_float": self.reference_to_float,
                "layout": self.layout,
                "rule": "greedy: the aligned cut with the most predicted latency saved per "
                        "indicator mass lost, until the predicted ratio meets the round's "
                        "target; each round's target interpolated between the rounds "
                        "measured under and over R, then bisection towards R from below",
                "measured": self.rounds, "smallest_model": self.minimum,
                "indicator_mass_kept": round(self.mass_kept, 6),
                "kept_counts": self.kept_counts, "table": self.table}


def keeps(cuts: Cuts, kept: dict[str, int]) -> tuple[dict, dict]:
    """(layer -> kept input channels, residual group key -> kept classes) for span
    counts ``kept``."""
    layers, classes = {}, {}
    for span in cuts.spans:
        ids = span.kept(kept[span.name])
        if span.group is None:
            layers[span.name] = ids.tolist()
        else:
            classes.setdefault(span.group, []).extend(ids.tolist())
    for key, ids in classes.items():
        group = cuts.groups[key]
        classes[key] = sorted(ids)
        for r in group.readers:
            layers[r.name] = group.kept(r.inputs[0].name, ids).tolist()
    return dict(sorted(layers.items())), dict(sorted(classes.items()))


def mass_kept(cuts: Cuts, kept: dict[str, int]) -> float:
    total = sum(float(s.mass.sum()) for s in cuts.spans)
    held = sum(float(s.mass[s.size - kept[s.name]:].sum()) for s in cuts.spans)
    return held / total if total > 0 else 1.0


def measure_table(cuts: Cuts, points, step: int, opset: int, providers,
                  int8: bool = False, float_convs=frozenset()) -> dict:
    """The per-layer latency table of every Conv a unit touches (INT8 layers for an
    INT8 budget, except ``float_convs``, which the INT8 output keeps in float)."""
    table, done = {}, {}
    for name, g in sorted(cuts.geometry.items()):
        quantized = int8 and name not in float_convs
        # layers of one geometry (ResNet-50's repeated blocks) are timed once
        key = repr((g["cin"], g["cout"], g["kernel"], sorted(g["attrs"].items()), g["hw"],
                    quantized))
        if key not in done:
            done[key] = time_layer(g["cin"], g["cout"], g["kernel"], g["attrs"], g["hw"],
                                   opset, step, points, providers, quantized)
        table[name] = done[key]
    return table


def measure(models: dict, points, providers) -> dict[str, dict[str, float]]:
    """label -> point -> ratio to the first model, interleaved."""
    out: dict = {}
    for batch, threads in points:
        for t in interleaved_latency(models, batch, threads, MAX_REPEATS, providers=providers,
                                     budget_s=MODEL_BUDGET_S):
            out.setdefault(t.label, {})[f"b{batch}t{threads}"] = round(t.ratio, 4)
            out.setdefault(t.label + " ms", {})[f"b{batch}t{threads}"] = round(t.median_ms, 4)
    return out


def search(cuts: Cuts, table: dict, build: Builder, reference: bytes, original: bytes,
           target: float, step: int, rounds: int, points, providers,
           reference_label: str = "the original", timed: str = "float") -> Budget:
    """Kept channels meeting ``target`` (module docstring); an OptionError if out of reach."""
    if not cuts.spans:
        raise ModelError("target-latency: no Conv input channel can be pruned in this model")
    step, first, layout = _step_by_reach(cuts, build, reference, original, step, points,
                                         providers)
    smallest = minimum(cuts, step)
    best = max(first["smallest"].values())
    if best > target:
        raise OptionError("--target-latency", f"{target:g} is out of reach: the best reachable "
                                              f"ratio is {best:.3f}x {reference_label} (every "
                                              f"prunable channel removed, {step} kept per cut)")
    float_ms = {p: first["reference ms"][p] for p in first["reference ms"]}
    predictor = Predictor(cuts, table, float_ms)
    to_float = {p: round(first["reference ms"][p] / first["original float ms"][p], 4)
                for p in float_ms if first["original float ms"].get(p)}
    budget = Budget(target, step, {}, {}, {}, 0.0, table=table, reference=reference_label,
                    timed=timed, reference_to_float=to_float, layout=layout,
                    minimum={"ratio": first["smallest"], "noise": {
                        p: round(abs(1 - first["reference again"][p]), 4) for p in float_ms}})
    history = [(predictor.ratios(smallest), first["smallest"])]
    budget.layers, budget.streams = keeps(cuts, smallest)  # measured under R: the fallback
    budget.kept_counts, budget.mass_kept = dict(smallest), mass_kept(cuts, smallest)
    under, over = (smallest, best), None  # (kept counts, worst ratio): best under R, least over
    for round_ in range(rounds):
        goals = {p: _bracketed_goal([(a[p], b[p]) for a, b in history], target)
                 for p in float_ms}
        plan = allocate(cuts, predictor, step, goals)
        layers, streams = keeps(cuts, plan.kept)
        ratios = measure({"reference": reference, "budget": build(layers, streams)}, points,
                         providers)["budget"]
        mass = mass_kept(cuts, plan.kept)
        budget.rounds.append({"round": round_, "predicted_target": _rounded(goals),
                              "predicted": _rounded(plan.predicted), "ratio": ratios,
                              "indicator_mass_kept": round(mass, 6),
                              "kept_counts": dict(plan.kept)})
        worst = max(ratios.values())
        if worst <= target and mass > budget.mass_kept:
            budget.layers, budget.streams, budget.kept_counts = layers, streams, plan.kept
            budget.mass_kept = mass
            under = (plan.kept, worst)
        elif worst > target and (over is None or worst < over[1]):
            over = (plan.kept, worst)
        if 0 <= target - worst <= CLOSE:
            break
        history.append((plan.predicted, ratios))
    if over is None and target < 1:  # every round under R: the whole model is over it
        over = ({span.name: span.size for span in cuts.spans}, 1.0)
    if over is not None and target - under[1] > 2 * CLOSE:
        _refine(cuts, budget, build, reference, target, step, points, providers, under, over)
    return budget


def _step_by_reach(cuts: Cuts, build: Builder, reference: bytes, original: bytes,
                   step: int, points, providers) -> tuple[int, dict, dict]:
    """(the step, the first measurement, its record). The first measurement times the
    reference (twice), the float original and the smallest model at ``step``; when
    ``step`` is not a multiple of ``LAYOUT_BLOCK`` and some span is wider than it, also
    the smallest model at ``lcm(step, LAYOUT_BLOCK)``, and that step is taken when its
    smallest model is faster by more than ``LAYOUT_MARGIN``. Why: onnxruntime's CPU convs
    run a blocked channel layout (NCHWc, 8 or 16 channels a block) when the channel
    counts allow, and a network whose counts break it pays a layout change around every
    such conv. At 320x320 the YOLOv8n-width detector with every span cut to 4 channels
    ran at 1.70x the original (at 8: 0.63x); at 32x32 and batch 64 the authors'
    ResNet-56 cut to 4 ran at 0.26x (at 8: 0.43x), where the finer step reaches further.
    The layer table cannot see this (a conv timed alone pays no neighbour's layout)."""
    aligned = math.lcm(step, LAYOUT_BLOCK)
    models = {"reference": reference, "reference again": reference,
              "original float": original, "smallest": build(*keeps(cuts, minimum(cuts, step)))}
    probe = aligned != step and any(span.size > step for span in cuts.spans)
    if probe:
        models["smallest aligned"] = build(*keeps(cuts, minimum(cuts, aligned)))
    first = measure(models, points, providers)
    if not probe:
        return step, first, {}
    fine, coarse = max(first["smallest"].values()), max(first["smallest aligned"].values())
    chosen = aligned if coarse < fine * (1 - LAYOUT_MARGIN) else step
    layout = {"steps": [step, aligned], "smallest_ratio": {str(step): first["smallest"],
                                                           str(aligned): first["smallest aligned"]},
              "chosen_step": chosen}
    if chosen == aligned:
        first["smallest"] = first["smallest aligned"]
    return chosen, first, layout


def _refine(cuts: Cuts, budget: Budget, build: Builder, reference: bytes, target: float,
            step: int, points, providers, under, over) -> None:
    """Bisect unit by unit between the kept counts measured under R and those measured
    over it, when the best under R is far under it: the whole model's time can jump
    between two kept sets the layer table predicts close together (INT8: 0.33x and
    0.67x of onnxruntime's INT8 for sets predicted 0.38 and 0.41 on ResNet-50), so the
    predicted correction alone lands far under R. Each midpoint is measured; under R
    with more indicator mass it becomes the chosen set (and the new lower end), else the
    upper end. At most REFINE_ROUNDS more whole-model measurements."""
    low, high = under[0], over[0]
    for k in range(REFINE_ROUNDS):
        mid = {name: _between(low[name], high[name], step) for name in low}
        if mid == low or mid == high:
            break
        layers, streams = keeps(cuts, mid)
        ratios = measure({"reference": reference, "budget": build(layers, streams)}, points,
                         providers)["budget"]
        mass = mass_kept(cuts, mid)
        budget.rounds.append({"round": f"refine {k + 1}", "ratio": ratios,
                              "indicator_mass_kept": round(mass, 6), "kept_counts": dict(mid)})
        worst = max(ratios.values())
        if worst <= target:
            if mass > budget.mass_kept:
                budget.layers, budget.streams, budget.kept_counts = layers, streams, mid
                budget.mass_kept = mass
            low = mid
            if target - worst <= CLOSE:
                break
        else:
            high = mid


def _between(a: int, b: int, step: int) -> int:
    """A count half way between ``a`` and ``b``, on the step grid."""
    return int(step * round((a + b) / (2 * step))) if a != b else a


def _goal(predicted: float, measured: float, target: float) -> float:
    """Predicted target of the next round: ``1 - (1 - R + MARGIN) / f``."""
    f = (1 - measured) / (1 - predicted) if predicted < 1 and measured < 1 else 1.0
    f = min(max(f, 0.25), 4.0)
    return 1 - (1 - target + MARGIN) / f


def _bracketed_goal(points: list[tuple[float, float]], target: float) -> float:
    """Predicted target of the next round from every (predicted, measured) pair so far
    (the INT8 search): between the largest predicted ratio measured at or under
    ``R - MARGIN`` and the smallest measured over it, linear (regula falsi); with no pair
    over it, :func:`_goal` from the best pair under it. Unlike :func:`_goal` alone, a
    round measured above 1 (noise, or a layout the table does not see) cannot send the
    next round to the smallest model."""
    aim = target - MARGIN
    under = [pm for pm in points if pm[1] <= aim]
    over = [pm for pm in points if pm[1] > aim]
    if not under:
        return _goal(*points[-1], target)
    low = max(under)
    if not over:
        return _goal(*low, target)
    high = min(over)
    if high[0] <= low[0]:  # noise made the pairs disagree: stay with the measured one
        return low[0]
    return low[0] + (aim - low[1]) * (high[0] - low[0]) / (high[1] - low[1])


def _rounded(values: dict) -> dict:
    return {k: round(v, 4) for k, v in values.items()}
