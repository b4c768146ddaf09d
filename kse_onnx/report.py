"""Per-layer counts and the summary users read: weights, multiply-adds, file sizes.

Counts per Conv with weight (N, C, kh, kw), output H x W, C' kept input channels and
``Q = sum_c q_c`` kernels kept (docs/algorithm.md, section 7):
- params: dense ``N*C*kh*kw`` before; ``N*C'*kh*kw`` as a dense Conv over kept channels;
  ``Q*kh*kw`` in the paper's factored count (each shared kernel stored once);
- multiply-adds: each of those times ``H*W``; the factored form also needs ``N*C'*H*W``
  additions to fuse channels, reported apart (``fusion_adds``).
Biases are not counted (KSE leaves them alone). These are counts, not speed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TypedDict

import numpy as np


@dataclass
class LayerReport:
    name: str
    status: str  # "compressed", "unchanged" (analysed, nothing to gain) or "skipped"
    reason: str | None
    shape: list[int]  # N, C, kh, kw (empty when the weight is not a constant)
    output_hw: int | None
    channels_per_level: list[int] = field(default_factory=list)
    q_values: list[int] = field(default_factory=list)  # kernels per channel, by level
    kept_channels: int = 0
    lowered_channels: int = 0  # kept channels after alignment (set by the lowering)
    kept_kernel_fraction: float = 1.0
    params_before: int = 0
    params_dense: int = 0
    params_factored: int = 0
    lowering: str | None = None
    # per input channel, for a compressed layer: level, q, indicator v and its two terms
    # (raw kernel sparsity s and entropy e); enough to replay the decision:
    # v = minmax(sqrt(minmax(s) / (1 + alpha minmax(e)))), then level and q from v, G, T
    channels: dict | None = None

    def macs(self, params: int) -> int | None:
        return None if self.output_hw is None else params * self.output_hw

    def to_dict(self) -> dict:
        d = asdict(self)
        d["macs_before"] = self.macs(self.params_before)
        d["macs_dense"] = self.macs(self.params_dense)
        d["macs_factored"] = self.macs(self.params_factored)
        n = self.shape[0] if self.shape else 0
        hw = self.output_hw
        d["fusion_adds"] = None if hw is None else n * self.kept_channels * hw
        return d


def layer_report(name, weight_shape, output_hw, plan=None, reason=None, G=None) -> LayerReport:
    """Counts of one Conv: ``plan`` is its LayerPlan, or None when it was skipped."""
    if weight_shape is None:
        return LayerReport(name, "skipped", reason, [], output_hw)
    n, c, kh, kw = (int(d) for d in weight_shape)
    dense = n * c * kh * kw
    base = LayerReport(name, "skipped", reason, [n, c, kh, kw], output_hw, kept_channels=c,
                       lowered_channels=c, params_before=dense, params_dense=dense,
                       params_factored=dense)
    if plan is None:
        return base
    base.reason = plan.reason
    base.status = "compressed" if plan.compressed else "unchanged"
    if not plan.compressed:
        return base
    levels = int(G) if G else int(plan.levels.max()) + 1
    base.channels_per_level = np.bincount(plan.levels, minlength=levels).tolist()
    base.q_values = [int(plan.q[plan.levels == g][0]) if np.any(plan.levels == g) else 0
                     for g in range(levels)]
    kept = int((plan.q > 0).sum())
    base.kept_channels = base.lowered_channels = kept
    base.kept_kernel_fraction = float(plan.q.sum()) / (n * c)
    base.params_dense = n * kept * kh * kw
    base.params_factored = int(plan.q.sum()) * kh * kw
    base.channels = channel_plan(plan)
    return base


def channel_plan(plan) -> dict:
    """The per-channel decision of a LayerPlan as JSON-ready lists (floats round-trip
    exactly through JSON)."""
    return {"level": plan.levels.tolist(), "q": plan.q.tolist(),
            "indicator": [float(v) for v in plan.indicator],
            "sparsity": [float(v) for v in plan.sparsity],
            "entropy": [float(v) for v in plan.entropy]}


# Version of the report's JSON (docs/pipelines.md, "Report schema"): raised when a key
# changes meaning or goes away; new keys may appear within a version.
REPORT_SCHEMA_VERSION = 1


class ReportExtra(TypedDict, total=False):
    """The optional sections of a report, written at the top level of its JSON."""

    accuracy: dict  # the written model's measured drop (guard.measure.Drop, + thresholds)
    warnings: list[str]  # said to the user: high measured error, no calibration images
    max_drop_search: dict  # --max-drop: the ladder, the refit images, every candidate tried
    graph_counts: dict  # conv weights and multiply-adds the written graph runs, before/after
    runtime_check: str  # onnxruntime loaded and ran the output
    target: dict  # --target-macs/--target-size: G, T and what they reach
    budget: dict  # --target-latency: the measured rounds
    refit: dict  # per-layer reconstruction errors of the refit
    auto: dict  # the auto lowering's timed choices
    int8: dict  # --quantize: integer kernels, codebooks, convs left in float
    notes: list[str]  # analysis notes (shape inference)
    note: str  # a single remark (an unchanged copy, a float output)


@dataclass
class ModelReport:
    model: str
    settings: dict
    layers: list[LayerReport]
    file_size_before: int | None = None
    file_size_after: int | None = None
    extra: ReportExtra = field(default_factory=dict)

    def totals(self) -> dict:
        def total(key):
            values = [layer.to_dict()[key] for layer in self.layers]
            return None if any(v is None for v in values) else int(sum(values))

        keys = ("params_before", "params_dense", "params_factored", "macs_before",
                "macs_dense", "macs_factored", "fusion_adds")
        return {key: total(key) for key in keys}

    def to_dict(self) -> dict:
        return {"schema_version": REPORT_SCHEMA_VERSION, "model": self.model,
                "settings": self.settings,
                "file_size_before": self.file_size_before,
                "file_size_after": self.file_size_after, "totals": self.totals(),
                "layers": [layer.to_dict() for layer in self.layers], **self.extra}

    def write_json(self, path) -> None:
        """Written atomically (:func:`kse_onnx.paths.atomic_write`)."""
        from .paths import atomic_write

        atomic_write(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    def table(self) -> str:
        """The readable summary printed by the CLI."""
        rows = [("layer", "N", "C", "k", "channels/level", "q/level", "kept", "params",
                 "MACs dense", "MACs factored", "lowering / note")]
        for layer in self.layers:
            d = layer.to_dict()
            if layer.status != "compressed":
                rows.append((layer.name, *_shape_cells(layer), "", "", "", "", "", "",
                         f"{layer.status}: {layer.reason}"))
                continue
            rows.append((layer.name, *_shape_cells(layer),
                         "/".join(map(str, layer.channels_per_level)),
                         "/".join(map(str, layer.q_values)),
                         f"{layer.kept_kernel_fraction:.2f}",
                         f"{_si(d['params_before'])}->{_si(d['params_factored'])}",
                         f"{_si(d['macs_before'])}->{_si(d['macs_dense'])}",
                         _si(d["macs_factored"]), layer.lowering or ""))
        lines = _format(rows)
        t = self.totals()
        lines.append("")
        lines.append(f"conv weights: {_si(t['params_before'])} -> {_si(t['params_dense'])} "
                     f"stored densely ({_ratio(t['params_dense'], t['params_before'])}), "
                     f"{_si(t['params_factored'])} shared "
                     f"({_ratio(t['params_factored'], t['params_before'])})")
        lines.append(f"conv multiply-adds per image: {_si(t['macs_before'])} -> "
                     f"{_si(t['macs_dense'])} as dense convs "
                     f"({_ratio(t['macs_dense'], t['macs_before'])}), "
                     f"{_si(t['macs_factored'])} factored "
                     f"({_ratio(t['macs_factored'], t['macs_before'])}) "
                     f"+ {_si(t['fusion_adds'])} fusion additions")
        graph = self.extra.get("graph_counts")
        if graph:
            before, after = graph["before"], graph["after"]
            lines.append(f"the written graph runs: conv weights {_si(before['weights'])} -> "
                         f"{_si(after['weights'])} "
                         f"({_ratio(after['weights'], before['weights'])}), conv multiply-adds "
                         f"{_si(before['macs'])} -> {_si(after['macs'])} "
                         f"({_ratio(after['macs'], before['macs'])})")
        if self.file_size_before and self.file_size_after:
            lines.append(f"file size: {_si(self.file_size_before)}B -> "
                         f"{_si(self.file_size_after)}B "
                         f"({_ratio(self.file_size_after, self.file_size_before)})")
        target = self.extra.get("target")
        if target:
            lines.append(f"target: multiply-adds <= {target['target_macs'] or '-'}, file <= "
                         f"{target['target_size'] or '-'} of the original -> G={target['G']}, "
                         f"T={target['T']}: multiply-adds (paper's count) "
                         f"{target['macs']:.3f}x, file {target['file_size']:.3f}x "
                         f"(predicted {target['predicted_file_size']:.3f}x)")
        int8 = self.extra.get("int8")
        if int8:
            floats = "; ".join(f"{name}: {why}" for name, why in int8["float_convs"].items())
            lines.append(f"{int8['mode']}: {int8['integer_convs']} of {int8['convs']} convs run "
                         f"as integer kernels in onnxruntime, {int8['shared_int8_weights']} "
                         f"weights stored as int8 codebook + codes"
                         + (f"; float: {floats}" if floats else ""))
            nodes = int8.get("float_nodes") or []
            if nodes:
                shown = ", ".join(nodes[:8]) + (", ..." if len(nodes) > 8 else "")
                lines.append(f"--max-drop: {len(nodes)} node(s) left float in INT8 to hold "
                             f"the drop ({shown}; all in the report's int8.float_nodes)")
        refit = self.extra.get("refit")
        if refit:
            lines.extend(refit_lines(refit))
        for note in self.extra.get("notes", []):
            lines.append(f"note: {note}")
        auto = self.extra.get("auto")
        if auto:
            lines.append(f"auto lowering, measured latency: {auto['verdict']}")
        budget = self.extra.get("budget")
        if budget:
            lines.append(budget_line(budget))
        lines.extend(accuracy_lines(self.extra))
        lines.append("multiply-adds are counts, not measured speed: "
                     "time the models with onnxruntime to know the latency.")
        return "\n".join(lines)


def accuracy_lines(extra: ReportExtra) -> list[str]:
    """The measured drop of the written model, the search that chose it, and warnings."""
    lines = []
    search = extra.get("max_drop_search")
    if search:
        last = search["chosen"]
        if search.get("minimize") == "latency":
            ratio = "" if last["ratio"] is None else f" (measured {last['ratio']:.3f}x)"
            lines.append(f"fastest-within-drop search: {len(search['tried'])} latency budgets "
                         f"tried; chosen R={last['R']:g}{ratio}")
        else:
            own = ", ".join(f"{name} G={g} T={t}" for name, (g, t) in
                            sorted((last.get("layer_gt") or {}).items()))
            lines.append(f"max-drop search: {len(search['tried'])} candidates built; chosen "
                         f"G={last['G']} T={last['T']}, {len(last.get('layer_gt') or {})} "
                         f"layer(s) at their own G/T ({own or 'none'}), "
                         f"{len(last['layers_left_whole'])} left whole ("
                         + (", ".join(last["layers_left_whole"]) or "none") + ")")
        lines.append(f"  chosen on {search['measured_on']}; confirmed on "
                     f"{search['confirmed_on']} ({search['confirmations']} looked at)")
    accuracy = extra.get("accuracy")
    if accuracy and accuracy.get("measured", True):
        if accuracy["points"] is None:
            measured = f"non-finite outputs on {accuracy['images']} {accuracy['source']}"
        else:
            measured = (f"drop {accuracy['points']:.2f} points by {accuracy['measure']}, "
                        f"relative output error {accuracy['rel_error']:.4f}, on "
                        f"{accuracy['images']} {accuracy['source']}")
        limit = f" (--max-drop {accuracy['max_drop']:g})" if accuracy.get("max_drop") else ""
        lines.append(f"measured against the original: {measured}{limit}")
    lines.extend(f"warning: {w}" for w in extra.get("warnings", []))
    return lines


def budget_line(budget: dict) -> str:
    """The latency budget's outcome: target, measured ratio at each point, mass kept."""
    if "replayed" in budget:
        return f"latency budget {budget['target_latency']:g}: {budget['replayed']}"
    chosen = [r for r in budget["measured"]
              if r["indicator_mass_kept"] == budget["indicator_mass_kept"]
              and max(r["ratio"].values()) <= budget["target_latency"]]
    measured = (chosen or budget["measured"])[-1]["ratio"]
    ratios = ", ".join(f"{p} {v:.3f}x" for p, v in measured.items())
    to_float = budget.get("reference_to_float") or {}
    if budget["reference"] != "the original" and all(p in to_float for p in measured):
        ratios += " (" + ", ".join(f"{p} {v * to_float[p]:.3f}x" for p, v in measured.items()
                                   ) + " of the float original)"
    return (f"latency budget {budget['target_latency']:g} x {budget['reference']}: measured "
            f"{ratios} ({len(budget['measured'])} round(s)); indicator mass kept "
            f"{budget['indicator_mass_kept']:.3f}")


def refit_lines(refit: dict) -> list[str]:
    """Per-layer reconstruction errors of a refit (relative, on the calibration set)."""
    held = refit.get("held_out", 0)
    shown = max((f.get("error_images", 0) for f in refit["layers"]), default=0)
    lines = [f"refit ({refit['mode']}, {refit['images']} calibration images, {held} of them "
             f"held out, {refit['seconds']:.1f} s): relative error of each compressed conv's "
             "output before -> after on the fitted images"
             + (f" (the first {shown})" if 0 < shown < refit["images"] - held else "")
             + ("; every step judged on the held-out ones" if held else "")]
    for f in refit["layers"]:
        extra = ("" if f["act_error_after"] is None else
                 f"; after its activation {f['act_error_before']:.4f} -> "
                 f"{f['act_error_after']:.4f}")
        if f.get("held_error_after") is not None:
            extra += f"; held-out {f['held_error_before']:.4f} -> {f['held_error_after']:.4f}"
            if f.get("held_positions"):
                extra += f" on {f['held_positions']:,} sampled positions"
        lines.append(f"  {f['name']}: {f['error_before']:.4f} -> {f['error_after']:.4f} "
                     f"({f['target']}, {f['solver']}, {f['seconds']:.2f} s){extra}")
    for b in refit["blocks"]:
        lines.append(f"  block {b['first']} .. {b['last']} ({b['convs']} convs, joint): "
                     f"{b['error_before']:.4f} -> {b['error_after']:.4f} ({b['seconds']:.2f} s)")
    c = refit.get("classifier")
    if c:
        verdict = "" if c.get("kept", True) else "; not kept (no improvement)"
        lines.append(f"  classifier {c['name']} (least squares to the original's logits): "
                     f"{c['error_before']:.4f} -> {c['error_after']:.4f} on "
                     f"{c.get('judged_on', 'the fitted images')}{verdict}")
    d = refit.get("distill")
    if d:
        rate = f", rate {d['rate']:.3g} (depth {d['depth']})" if "rate" in d else ""
        lines.append(f"  distill ({d['epochs']} epochs{rate}, {d['seconds']:.1f} s): held-out "
                     f"{d['measure']} {d['held_before']:.4f} -> {d['held_after']:.4f}; "
                     f"kept {d['kept']}")
    return lines


def _shape_cells(layer):
    if not layer.shape:
        return ("", "", "")
    n, c, kh, kw = layer.shape
    return (str(n), str(c), f"{kh}x{kw}")


def _format(rows) -> list[str]:
    widths = [max(len(str(r[i])) for r in rows if len(r) > i) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [str(v).ljust(w) for v, w in zip(r, widths, strict=False)]
        out.append("  ".join(cells).rstrip())
    return out


def _si(value) -> str:
    if value is None:
        return "?"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return str(value)


def _ratio(after, before) -> str:
    if not after or not before:
        return "?"
    return f"{after / before:.3f}x"
