"""``kse-onnx verify``: is the optimized model the rewrite it claims, and how close is it
to the original?

(a) exactness: the optimized model against the *reference*, the original graph with
    each compressed Conv's weight replaced by W_hat, rebuilt from the settings recorded
    in the optimized model (the analysis is deterministic, so it is the same W_hat);
(b) approximation: the optimized model against the original (relative error, top-1
    agreement) on random inputs and on the user's inputs.
Relative error is ``||a - b|| / ||b||`` over each output, in float64; values non-finite
in both models alike are left out and reported (:mod:`.runtime.compare`). An INT8 output
replaces (a) by its error against the reference, and fails on a collapse
(:func:`.runtime.checks.collapse`). A reference onnxruntime cannot load or run is
reported as kse-onnx's fault, never the user's model's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .analysis.model import analyse
from .errors import ModelError
from .graph.blocks import remove_blocks
from .graph.classifier import classifier_gemms
from .graph.core import constant_values, import_graph, quiet_graphsurgeon
from .graph.export import METADATA_KEY, copy_model_fields, settings_of
from .graph.groups import chain_group, masked_model, residual_groups, selected_groups
from .graph.inputs import restore_graph_inputs
from .graph.io import load_model
from .graph.names import unique_tensor_names, with_unique_node_names
from .graph.settings import RecordedSettings, SettingsError
from .lowering import LayerForm, effective_form, uniform_form
from .lowering.readback import folded, read_weight
from .options import LowerOptions
from .refit.graph_walk import node_names
from .refit.normal import SharedLayout
from .runtime.checks import (
    INT8_COLLAPSE_REL_ERROR,
    collapse,
    default_rtol,
    is_quantized_output,
)
from .runtime.compare import Comparison, compare
from .runtime.ort import random_inputs, run_batched, session


@dataclass
class VerifyResult:
    rtol: float
    exactness: list[Comparison] = field(default_factory=list)
    approximation: list[Comparison] = field(default_factory=list)
    quantized: bool = False  # an INT8 output: exactness does not apply
    # an INT8 output against its float counterpart, the original with W_hat (not after a
    # refit, whose float kernels an INT8 graph no longer holds): the INT8 error alone
    int8: list[Comparison] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        rows = (*self.exactness, *self.int8, *self.approximation)
        found = [f"{c.label}: {c.problem}" for c in rows if c.problem]
        if self.quantized:  # exactness cannot judge it: its outputs must still hold
            found += [f"{c.label}: INT8 output collapsed against the {c.reference}: {why}"
                      for c in self.int8 or self.approximation if not c.problem
                      and (why := collapse(c.rel_error, c.top1_agreement, c.classes,
                                           c.worst_channel))]
        return found

    @property
    def exact(self) -> bool:
        """Within tolerance, and every output finite and of the reference's shape."""
        return not self.problems and all(c.rel_error <= self.rtol for c in self.exactness)

    def summary(self) -> str:
        lines = []
        for title, rows in (("rewrite exactness (optimized vs original with W_hat)",
                             self.exactness),
                            ("INT8 error (optimized vs original with W_hat)", self.int8),
                            ("approximation (optimized vs original)", self.approximation)):
            if not rows and title.startswith("INT8"):
                continue
            lines.append(title + ":")
            for c in rows:
                if c.problem:
                    lines.append(f"  {c.label}: {c.problem}")
                    continue
                agree = ("" if c.top1_agreement is None
                         else f", top-1 agreement {c.top1_agreement:.3f}")
                lines.append(f"  {c.label}: relative error {c.rel_error:.2e}, "
                             f"max abs {c.max_abs:.2e}{agree}")
                if c.note:
                    lines.append(f"    ({c.note})")
        if self.problems:
            return "\n".join(lines + [f"FAIL: {self.problems[0]}"])
        if self.quantized:
            lines[0] += " not checked: the model is quantized to INT8"
            judged = self.int8 or self.approximation
            worst = max(judged, key=lambda c: c.rel_error)
            agree = ("" if worst.top1_agreement is None
                     else f", top-1 agreement {worst.top1_agreement:.3f}")
            return "\n".join(lines + [
                f"PASS: INT8 output holds against the {worst.reference} ({worst.label}: "
                f"relative error {worst.rel_error:.2e}{agree}; a collapse, relative error >= "
                f"{INT8_COLLAPSE_REL_ERROR:g} or chance-level agreement, fails)"])
        verdict = "PASS" if self.exact else "FAIL"
        lines.append(f"{verdict}: rewrite exactness {'within' if self.exact else 'above'} "
                     f"relative tolerance {self.rtol:g}")
        return "\n".join(lines)


def reference_model(original: onnx.ModelProto, settings: RecordedSettings,
                    optimized: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """``original`` with each compressed Conv's weight replaced by its W_hat. For a
    refitted model (``refit`` in ``settings``), W_hat is rebuilt from the plan's codes
    and the kernel values read back from ``optimized``, and the compressed Convs' biases
    and the refitted classifier's weights are taken from ``optimized`` too (docs/refit.md)."""
    kse, select = _analysis(settings, "optimized model")
    kept, streams = settings.budget_layers, settings.budget_streams
    if settings.removed_blocks:  # --budget-blocks: the reference lacks them too
        try:
            original = remove_blocks(original, settings.removed_blocks)
        except ValueError as exc:
            raise ModelError(f"optimized model: recorded removed blocks refused: {exc}"
                             ) from None
    if streams:  # a latency budget: pruned stream channels are zero in the reference
        try:
            original = masked_model(original, streams)
        except (ValueError, TypeError) as exc:
            raise ModelError(f"optimized model: recorded budget streams refused: {exc}") from None
    result = analyse(original, kse, select, kept=kept)
    refitted = settings.refit is not None and optimized is not None
    written = import_graph(optimized) if refitted else None
    rows = _producer_rows(result, kept, streams, settings) if refitted else {}
    for site in result.sites:
        plan = result.plans.get(site.name)
        if plan is None or not plan.compressed:
            continue
        w_hat = plan.w_hat
        if refitted:
            w_hat, bias = _read_back(written, site.name, plan, settings, rows.get(site.name))
            if bias is not None:
                _set_input(site.node, 2, gs.Constant(f"{site.name}_refit_bias", bias))
        site.node.inputs[1] = gs.Constant(f"{site.name}_w_hat", w_hat)
    if refitted and settings.refit.refit == "distill":
        compressed = {s.name for s in result.sites if s.name in result.plans
                      and result.plans[s.name].compressed}
        _copy_distilled(result.graph, written, compressed, rows)
    if refitted and settings.refit.refit_classifier:
        _copy_classifier(original, result.graph, written, streams or {})
    for group, classes in selected_groups(result.graph, streams, strict=False):
        group.mask(classes)  # the optimized model drops them: zero after W_hat
    graph = result.graph
    unique_tensor_names(graph)
    with quiet_graphsurgeon():
        model = gs.export_onnx(graph.cleanup())
    restore_graph_inputs(model, original)
    del model.graph.value_info[:]  # inferred for the original: onnxruntime infers its own
    return copy_model_fields(model, original)


def _producer_rows(result, kept, streams, settings: RecordedSettings) -> dict:
    """Filters each producer of a cut group kept (:meth:`..graph.group.Group.rows`): a
    layer's own group keeps what its reader reads (the latency budget's kept channels,
    else the reader's form's kept channels), a residual group its recorded classes.
    Whether the producer was pruned at all (not with ``--no-prune-producers``, nor for
    a factored reader) :func:`_read_back` sees from its stored weight."""
    rows = {}
    for site in result.sites:
        plan = result.plans.get(site.name)
        if isinstance(kept, dict) and site.name in kept:
            reads = np.asarray(kept[site.name], np.int64)
        elif plan is not None and plan.compressed:
            reads = effective_form(_form(site.name, settings), plan).keep(plan)
        else:
            continue
        rows.update(chain_group(result.graph, site.node).rows(reads))
    for group, classes in selected_groups(result.graph, streams, strict=False):
        rows.update(group.rows(classes))
    return rows


def _form(name: str, settings: RecordedSettings) -> LayerForm:
    """The form recorded for layer ``name``, else the lowering's uniform one."""
    forms = settings.layer_forms or {}
    if name in forms:
        return LayerForm.parse(forms[name])
    return uniform_form(settings.lower or LowerOptions("dense"))


def _analysis(settings: RecordedSettings, where) -> tuple:
    """The recorded analysis options, or a ModelError naming ``where``."""
    try:
        return settings.analysis(METADATA_KEY)
    except SettingsError as exc:
        raise ModelError(f"{where}: kse-onnx settings in its metadata: {exc}") from None


def _read_back(graph, name: str, plan, settings: RecordedSettings, rows=None):
    """(W_hat from the plan's codes and the kernels stored in ``graph``, bias); with
    ``rows`` (a pruned producer), each kernel is read from the kept filters only."""
    form = _form(name, settings)
    n = plan.weight_shape[0]
    node = next((x for x in graph.nodes if x.name == name), None)
    stored = None if node is None else folded(node.inputs[1])
    if rows is not None and (stored is None or stored.shape[0] == n):
        rows = None  # not pruned in this graph (e.g. --no-prune-producers), or not plain
    weight, bias = read_weight(graph, name, plan, effective_form(form, plan), rows)
    labels = plan.labels
    if rows is not None:
        labels = np.full_like(plan.labels, -1)
        labels[rows] = plan.labels[rows]
        weight = weight.copy()
    layout = SharedLayout.from_labels(plan.labels, plan.q)
    reader = SharedLayout.from_labels(labels, plan.q)
    n, c, kh, kw = plan.weight_shape
    flat = weight.reshape(n, c, kh * kw).astype(np.float64)
    w_hat = layout.expand(reader.kernels_of(flat)).reshape(plan.weight_shape)
    return w_hat.astype(plan.w_hat.dtype), bias


def _copy_distilled(reference: gs.Graph, written: gs.Graph, compressed: set[str],
                    rows: dict) -> None:
    """A distilled model (``--refit distill``) trained every weight, not only the shared
    kernels: each float constant input of a node that is not a compressed Conv is read
    back from the node of the same name and operator in the optimized graph; a pruned
    producer's kept filters (``rows``) are put back in place, the pruned ones zero.
    Integer constants (a Pad's amounts, a Slice's bounds) are settings, never trained:
    the budget rewrote a pruned group's, and the original's stay."""
    mine = {n.name: n for n in written.nodes}
    for node in reference.nodes:
        other = mine.get(node.name)
        if node.name in compressed or other is None or other.op != node.op:
            continue
        for index, tensor in enumerate(node.inputs):
            if (index >= len(other.inputs) or not isinstance(tensor, gs.Constant)
                    or not np.issubdtype(tensor.values.dtype, np.floating)):
                continue
            values, old = constant_values(other.inputs[index]), tensor.values
            if values is None:
                continue
            kept = rows.get(node.name)
            if values.shape != old.shape:
                if (kept is None or not old.ndim or values.shape[1:] != old.shape[1:]
                        or len(kept) != len(values)):
                    continue
                full = np.zeros_like(old)
                full[kept] = values
                values = full
            node.inputs[index] = gs.Constant(f"{node.name}_distilled_{index}",
                                             values.astype(old.dtype))


def _set_input(node, index: int, tensor) -> None:
    while len(node.inputs) <= index:
        node.inputs.append(gs.Variable.empty())
    node.inputs[index] = tensor


def _copy_classifier(original: onnx.ModelProto, reference: gs.Graph, written: gs.Graph,
                     streams: dict):
    """The refitted classifier's constants, taken from the optimized graph (columns of
    pruned stream channels put back as zeros)."""
    names = set(node_names(original)[i] for i in classifier_gemms(original))
    mine = {n.name: n for n in written.nodes if n.op == "Gemm" and n.name in names}
    widened = {}
    for group in residual_groups(reference):
        for gemm, tensor in group.gemms:
            if group.key in streams:
                widened[gemm.name] = (group.kept(tensor, streams[group.key]),
                                      len(group.channels[tensor]), gemm.attrs.get("transB", 0))
    for node in reference.nodes:
        if node.name not in mine:
            continue
        for index in (1, 2):
            if index < len(node.inputs) and index < len(mine[node.name].inputs):
                values = constant_values(mine[node.name].inputs[index])
                if values is not None and index == 1 and node.name in widened:
                    keep, channels, trans_b = widened[node.name]
                    full = np.zeros((values.shape[0], channels) if trans_b
                                    else (channels, values.shape[1]), values.dtype)
                    if trans_b:
                        full[:, keep] = values
                    else:
                        full[keep] = values
                    values = full
                if values is not None:
                    node.inputs[index] = gs.Constant(f"{node.name}_refit_{index}", values)


def verify(original_path, optimized_path, inputs=None, batch: int = 2,
           rtol: float | None = None, seed: int = 0) -> VerifyResult:
    """``rtol`` None: from the weights' dtype (:func:`.checks.default_rtol`)."""
    original = load_model(original_path)
    optimized = load_model(optimized_path)
    settings = settings_of(optimized, optimized_path)
    if rtol is None:
        rtol = default_rtol(optimized)
    if settings is None:
        raise ModelError(f"{optimized_path}: carries no kse-onnx settings in its metadata; "
                         "was it written by kse-onnx optimize?")
    sess_opt = _session(optimized, optimized_path)
    sess_orig = _session(with_unique_node_names(original), original_path)
    quantized = is_quantized_output(original, optimized)  # from the graph, not metadata
    _analysis(settings, optimized_path)  # read (bounded, well-typed) before any work
    refitted = settings.refit is not None
    sess_ref = (None if quantized and refitted else
                _reference_session(original, settings, optimized, original_path))
    feeds = [("random", random_inputs(sess_opt, batch, seed))]
    if inputs is not None:
        feeds.append(("user inputs", _load_inputs(inputs, sess_opt)))
    result = VerifyResult(rtol, quantized=quantized)
    for label, feed in feeds:
        out = run_batched(sess_opt, feed, "optimized model")
        if sess_ref is not None:
            rows = result.int8 if quantized else result.exactness
            rows.append(compare(label, out, run_batched(sess_ref, feed, REFERENCE),
                                "original with W_hat"))
        result.approximation.append(compare(label, out, run_batched(
            sess_orig, feed, "original model"), "original"))
    return result


REFERENCE = "kse-onnx's reference model (the original with W_hat, built by verify)"


def _reference_session(original, settings, optimized, original_path):
    """A session of :func:`reference_model`; a failure to load it is ours, not the
    user's model's (which loaded), and the message says so."""
    try:
        return session(reference_model(original, settings, optimized))
    except ModelError as exc:
        if "onnxruntime cannot load" not in str(exc):
            raise
        raise ModelError(f"{REFERENCE} cannot be loaded by onnxruntime, although "
                         f"{original_path} loads: a kse-onnx bug, please report it "
                         f"({exc})") from exc


def _session(model, path):
    """An onnxruntime session, its failure naming ``path``."""
    try:
        return session(model)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None


def _load_inputs(path, sess) -> dict:
    from .runtime.feeds import user_feeds  # validated reader of the user's .npz

    return user_feeds(path, sess)
