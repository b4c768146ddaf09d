"""The Python API: each function here is one CLI command, with the same option objects."""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import NamedTuple

import onnx

from .analysis.model import Analysis, analyse
from .analysis.target import choose_levels
from .errors import ModelError, OptionError
from .graph.blocks import remove_blocks
from .graph.core import import_graph
from .graph.count import conv_counts
from .graph.export import METADATA_KEY, check_model, export_model, settings_of
from .graph.inputs import fixed_batch, refuse_listed_weights
from .graph.io import PROTOBUF_LIMIT, check_loaded, load_model, model_files, save_model
from .graph.runtime_shapes import fill_conv_shapes
from .graph.select import conv_sites
from .graph.settings import RecordedSettings, SettingsError
from .lowering import lower
from .lowering.auto import choose as choose_forms
from .options import (
    BudgetOptions,
    CalibrationOptions,
    DataOptions,
    GuardOptions,
    KSEOptions,
    LowerOptions,
    ProgressOptions,
    QuantizeOptions,
    RefitOptions,
    SelectOptions,
    TargetOptions,
    check_combined,
)
from .paths import check_paths
from .refit.holdout import fitted_first
from .report import ModelReport
from .runtime.loadcheck import runtime_check

__all__ = ["Analysis", "Optimized", "analyse", "optimize", "optimize_model", "refit", "save",
           "score"]  # Analysis, analyse: re-exported


def score(path: str | os.PathLike, kse: KSEOptions | None = None,
          select: SelectOptions | None = None,
          progress: ProgressOptions | None = None) -> ModelReport:
    """KSE scores, levels and counts of every Conv of the model at ``path``; writes nothing.
    ``progress``: the analysis's bar or log lines on stderr unless quiet."""
    kse, select = kse or KSEOptions(), select or SelectOptions()
    model = load_model(path)
    quiet = (progress or ProgressOptions()).quiet
    report = analyse(model, kse, select, str(path), quiet=quiet).report
    report.file_size_before = os.path.getsize(path)
    return report


class Optimized(NamedTuple):
    """What :func:`optimize_model` returns: the compressed model (not written yet: see
    :func:`save`) and its report."""

    model: onnx.ModelProto
    report: ModelReport


def optimize_model(model: str | os.PathLike | onnx.ModelProto, *, calibration=None,
                   kse: KSEOptions | None = None, select: SelectOptions | None = None,
                   lower_options: LowerOptions | None = None,
                   target: TargetOptions | None = None,
                   quantize: QuantizeOptions | None = None, data: DataOptions | None = None,
                   refit: RefitOptions | None = None, budget: BudgetOptions | None = None,
                   guard: GuardOptions | None = None, calibration_images: int | None = None,
                   progress: ProgressOptions | None = None, log=None,
                   output_name: str = "compressed model") -> Optimized:
    """Compress ``model`` (a path, or a ModelProto checked like a file) and return the
    compressed ModelProto with its report; nothing is written (:func:`save` does).

    ``calibration``: unlabeled images as a path (read with ``data``), an array, or an
    iterable of arrays or of ``{input: array}`` dicts; the first ``calibration_images``
    (default 1024) are used. With them the compressed layers are refitted to the
    original's outputs (``refit``, docs/refit.md) and int8-static calibrates on them.
    ``guard``: ``max_drop`` searches per-layer settings for the smallest model within
    that drop (docs/pipelines.md); without it the written model's error is measured and
    reported all the same (``report.extra["accuracy"]``), on the calibration images or
    on random inputs. With an active ``budget``, the kept channels meet a measured
    latency (docs/budget.md). ``progress``: bars or log lines on stderr unless quiet;
    ``output_name``: what errors about the compressed model call it (the CLI: OUTPUT)."""
    from .calibration import as_images
    from .guard.check import finish_checks
    from .guard.int8 import guarded
    from .guard.measure import input_name
    from .guard.search import Builder
    from .quantize.apply import check_static_inputs

    guard = guard or GuardOptions()
    check_combined(lower_options, target, budget)  # options before any file
    if (budget is not None and budget.budget_blocks and not budget.active
            and not (guard.active and guard.minimize == "latency")):
        raise OptionError("--budget-blocks", "needs --target-latency R (or --max-drop D "
                                             "--minimize latency): it shapes a latency budget")
    source, where, size = _source(model)
    refuse_listed_weights(source, where)  # before any work: IR 3 lists every weight
    if guard.active and target is not None and target.active:
        raise OptionError("--max-drop", "cannot be combined with --target-macs or "
                          "--target-size (it chooses G and T itself)")
    name = input_name(source) if guard.active else None
    images = as_images(calibration, calibration_images, data, name, model=source)
    check_static_inputs(source, images, quantize)  # int8-static: before any work
    settings = dict(kse=kse, select=select, lower_options=lower_options, target=target,
                    quantize=quantize, refit=refit, budget=budget, progress=progress, log=log,
                    output_name=output_name)
    if guard.active:  # with int8-static: chosen in float, then INT8 within the drop
        built, drop = guarded(Builder(_compress, source, where, size, settings), images,
                              guard, data, budget, log)
    else:
        built, drop = _compress(source, where, size, images=images, **settings), None
    finish_checks(source, built.model, built.report, images, guard, drop)
    return built


def save(optimized: Optimized | onnx.ModelProto, path: str | os.PathLike) -> int:
    """Write a model atomically (no partial file on failure); above protobuf's 2 GiB the
    weights go to ``<path>.data`` beside it. Returns the bytes written; an
    :class:`Optimized` gets them as its report's ``file_size_after``."""
    model = optimized.model if isinstance(optimized, Optimized) else optimized
    save_model(model, path)
    written = sum(os.path.getsize(f) for f in (str(path), f"{path}.data") if os.path.exists(f)
                  and (f == str(path) or model.ByteSize() > PROTOBUF_LIMIT))
    if isinstance(optimized, Optimized):
        optimized.report.file_size_after = written
    return written


def optimize(input_path: str | os.PathLike, output_path: str | os.PathLike,
             kse: KSEOptions | None = None, select: SelectOptions | None = None,
             lower_options: LowerOptions | None = None, overwrite: bool = False,
             target: TargetOptions | None = None, quantize: QuantizeOptions | None = None,
             data: DataOptions | None = None, calibration: CalibrationOptions | None = None,
             refit: RefitOptions | None = None, log=None,
             progress: ProgressOptions | None = None,
             budget: BudgetOptions | None = None,
             guard: GuardOptions | None = None) -> ModelReport:
    """The ``optimize`` command: :func:`optimize_model` on the file at ``input_path``,
    then :func:`save` to ``output_path`` (checked against the input first)."""
    check_combined(lower_options, target, budget, quantize, calibration)  # before any file
    _check_paths(input_path, output_path, overwrite)
    built = optimize_model(input_path, calibration=calibration, kse=kse, select=select,
                           lower_options=lower_options, target=target, quantize=quantize,
                           data=data, refit=refit, budget=budget, guard=guard, log=log,
                           progress=progress, output_name=str(output_path))
    save(built, output_path)
    return built.report


def _source(model) -> tuple[onnx.ModelProto, str, int]:
    """(checked model, its name in messages, its serialized size)."""
    if isinstance(model, onnx.ModelProto):
        check_loaded(model, "model")
        return model, "model", model.ByteSize()
    return load_model(model), str(model), os.path.getsize(model)


def _compress(model: onnx.ModelProto, where: str, file_size: int, *, images=None,
              kse: KSEOptions | None = None, select: SelectOptions | None = None,
              lower_options: LowerOptions | None = None, target: TargetOptions | None = None,
              quantize: QuantizeOptions | None = None, refit: RefitOptions | None = None,
              budget: BudgetOptions | None = None, progress: ProgressOptions | None = None,
              log=None, output_name: str = "compressed model") -> Optimized:
    """One compression of ``model`` with fixed settings: the analysis, the optional
    refit on ``images``, the lowering, optional INT8, the checks."""
    kse, select = kse or KSEOptions(), select or SelectOptions()
    lower_options = lower_options or LowerOptions()
    refit = refit or RefitOptions()
    quiet = (progress or ProgressOptions()).quiet
    budget = budget or BudgetOptions()
    original = model
    kse, reached = _targeted(model, kse, select, target, file_size)
    kept, streams, budget_report, skipped, removed, gone = None, None, None, [], [], set()
    if budget.active:
        from .budget.run import run_budget, unmasked_constants

        pruned = run_budget(model, kse, select, lower_options, budget, target, quantize,
                            images, quiet, refit.refit if images is not None else "none")
        model, kept, streams, budget_report = (pruned.model, pruned.layers, pruned.streams,
                                               pruned.report)
        skipped, removed, gone = pruned.skipped_blocks, pruned.removed_blocks, \
            set(pruned.skipped_convs)
    result = analyse(model, kse, select, where, quiet=quiet, kept=kept)
    for name in gone:  # in blocks the lowering deletes: neither refitted nor lowered
        result.plans.pop(name, None)
    # choices are not recorded: the layer_forms say what they gave (replays byte-equal)
    base = RecordedSettings(kse, select, result.report.settings["kse_onnx_version"],
                            dataclasses.replace(lower_options, choices=""))
    if budget.active:
        base = dataclasses.replace(base, budget=budget, budget_layers=kept,
                                   budget_streams=streams, removed_blocks=removed or None)
        result.report.extra["budget"] = budget_report
    source = model  # the graph the lowering rewrites: the original, or its refitted copy
    refitting = images is not None and refit.active
    if refitting:
        images = _whole_batches(images, model, log, quiet)
        with fitted_first(images, refit.refit_holdout, refit.refit_seed) as split:
            source = _refit(model, result, select, refit, split, log, quiet,
                            unmasked_constants(original, model) if budget.active else None,
                            skipped)
        base = dataclasses.replace(base, refit=refit, refit_images=len(images))
    distilling = refitting and refit.refit == "distill"
    if budget.active:
        from .budget.build import EXACT

        forms = {name: EXACT for name in kept}
        storage = lower_options.lowering != "dense"
        lowered = lower(result.graph, result.sites, result.plans, lower_options, forms, storage,
                        streams)
        optimized = export_model(result.graph, model, dataclasses.replace(
            base, compressed_layers=tuple(sorted(lowered)), compact_storage=storage,
            layer_forms={n: lowered[n].form.label for n in sorted(lowered)}))
        optimized = remove_blocks(optimized, skipped)  # the refit's student skipped them
    elif lower_options.lowering == "auto":
        optimized, lowered = _lower_auto(source, result, select, lower_options, base, quantize,
                                         images, quiet, distilling)
    else:
        lowered = lower(result.graph, result.sites, result.plans, lower_options)
        optimized = export_model(result.graph, model, dataclasses.replace(
            base, compressed_layers=tuple(sorted(lowered))))
    report = result.report
    if distilling and lowered:
        from .refit.distill import distill  # torch: on demand

        with fitted_first(images, refit.refit_holdout, refit.refit_seed) as split:
            optimized, report.extra["refit"]["distill"] = distill(
                optimized, original, *split, refit, log or _stderr, quiet)
    if (quantize is not None and quantize.active and not quantize.float_output
            and "int8" not in report.extra):
        from .quantize.apply import quantize_output  # onnxruntime.quantization: on demand

        optimized, report.extra["int8"] = quantize_output(optimized, quantize, images)
    check_model(optimized, output_name)
    report.extra["runtime_check"] = runtime_check(optimized, model, output_name)
    report.settings = settings_of(optimized).to_dict()
    for layer in report.layers:
        if layer.name in lowered:
            done = lowered[layer.name]
            form = (done.form.label if lower_options.lowering == "auto" or budget.active
                    else lower_options.lowering)
            if lower_options.lowering == "factored" and done.form.form == "dense":
                form = "dense (1x1 conv: never factored)"
            why = f" ({done.gather_reason})" if done.gather_reason else ""
            layer.lowering = f"{form}, input via {done.input_stage}{why}"
            layer.lowered_channels = len(done.keep)
    report.file_size_before = file_size
    report.file_size_after = optimized.ByteSize()  # the file's size once saved (< 2 GiB)
    report.extra["graph_counts"] = {"before": conv_counts(model), "after": conv_counts(optimized)}
    if reached is not None:
        reached["file_size"] = report.file_size_after / report.file_size_before
        report.extra["target"] = reached
    if not lowered:
        report.extra["note"] = "no Conv was compressed: the output is an unchanged copy"
    return Optimized(optimized, report)


def refit(compressed_path: str | os.PathLike, output_path: str | os.PathLike,
          teacher_path: str | os.PathLike, calibration: CalibrationOptions,
          options: RefitOptions | None = None, data: DataOptions | None = None,
          log=None, progress: ProgressOptions | None = None) -> ModelReport:
    """Refit a float model written earlier by :func:`optimize` from ``teacher_path`` (its
    original): the same analysis (recorded settings), the same layer forms (replayed),
    then the refit of :func:`optimize` with ``calibration``. The result does not depend
    on the compressed model's weights: fine-tuning done since is not kept."""
    options = options or RefitOptions()
    if not calibration.calibration:
        raise OptionError("--calibration", "refit needs calibration images")
    if not options.active:
        raise OptionError("--refit", "'none' leaves nothing to do")
    check_paths({"COMPRESSED": model_files(compressed_path), "TEACHER": model_files(teacher_path)},
                {"OUTPUT": output_path, "OUTPUT's weights file": f"{output_path}.data"})
    settings = settings_of(load_model(compressed_path), compressed_path)
    if settings is None or settings.lower is None:
        raise ModelError(f"{compressed_path}: carries no kse-onnx settings; was it written by "
                         "kse-onnx optimize?")
    if settings.quantize is not None and settings.quantize.active:
        raise ModelError(f"{compressed_path}: is an INT8 model; refit its float model "
                         "(optimize --float-output) or run optimize --calibration --quantize")
    try:
        kse, select = settings.analysis(METADATA_KEY)
    except SettingsError as exc:
        raise ModelError(f"{compressed_path}: kse-onnx settings in its metadata: {exc}") from None
    budget = settings.budget or BudgetOptions()
    lowering = dataclasses.replace(settings.lower, choices=str(compressed_path) if (
        settings.lower.lowering == "auto" or budget.active) else "")
    return optimize(teacher_path, output_path, kse, select, lowering, calibration=calibration,
                    refit=options, data=data, log=log, progress=progress, budget=budget)


def _whole_batches(images, model, log, quiet: bool):
    """``images`` cut to a multiple of the batch the model's input fixes, if it fixes
    one: the refit runs such a graph that many images at a time."""
    batch = fixed_batch(model)
    if not batch or not len(images) % batch:
        return images
    kept = len(images) - len(images) % batch
    if not kept:
        raise ModelError(f"the model's input fixes a batch of {batch} images: the refit "
                         f"needs at least that many calibration images, got {len(images)}")
    if not quiet:
        (log or _stderr)(f"refit: {kept} of {len(images)} calibration images, a multiple "
                         f"of the batch of {batch} the model's input fixes")
    return images[:kept]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _refit(model, result: Analysis, select: SelectOptions, refit: RefitOptions, split,
           log, quiet: bool = False, teacher_constants: dict | None = None,
           skipped_blocks=()) -> object:
    """Refit ``result``'s plans in place from ``split`` (images, fitted first; how many
    are held out at the end); returns the model to lower (the original with the
    refitted biases and classifier) and points ``result`` at its graph."""
    try:
        from .refit.model import refit_model  # torch: on demand
    except ModuleNotFoundError as exc:
        raise OptionError("--refit", f"the refit needs torch ({exc.name} is not installed): "
                          "pip install 'kse-onnx[finetune]', or pass --refit none") from exc

    images, held = split
    fitted = refit_model(model, result.plans, images, refit, log, quiet, teacher_constants,
                         held, skipped_blocks)
    result.graph = import_graph(fitted.model)
    result.sites = conv_sites(result.graph, select)
    result.report.extra["refit"] = fitted.to_dict()
    return fitted.model


def _lower_auto(model, result: Analysis, select: SelectOptions, lower_options: LowerOptions,
                base: RecordedSettings, quantize: QuantizeOptions | None, images,
                quiet: bool = False, float_build: bool = False):
    """The ``auto`` lowering: (optimized model, lowered layers); its report goes into
    ``result.report.extra`` ("auto", and "int8" when the INT8 builds were timed). With
    ``float_build`` the model is the float build of the chosen forms even when they were
    timed in INT8 (to be distilled, then quantized)."""
    def build(forms, compact_storage):
        graph = import_graph(model)
        done = lower(graph, conv_sites(graph, select), result.plans, lower_options, forms,
                     compact_storage)
        settings = dataclasses.replace(
            base, compressed_layers=tuple(sorted(done)), compact_storage=compact_storage,
            layer_forms={n: f.label for n, f in forms.items()})
        return export_model(graph, model, settings), done

    int8 = None
    if quantize is not None and quantize.active:  # time the INT8 builds instead
        from .quantize.apply import Int8Builds

        int8 = Int8Builds(model, quantize, images, build)
    auto = choose_forms(model, result.graph, result.sites, result.plans, lower_options,
                        int8 or build, int8.reference if int8 else None, quiet)
    result.report.extra["auto"] = auto.to_dict()
    if int8 is not None and (quantize.float_output or float_build):
        if quantize.float_output:
            result.report.extra["note"] = "float model; layer forms chosen for its INT8 build"
        return build({c.name: c.form for c in auto.choices}, True)
    if int8 is not None:
        result.report.extra["int8"] = int8.report[auto.compact]
    return auto.model, auto.lowered


def _targeted(model, kse: KSEOptions, select: SelectOptions, target: TargetOptions | None,
              file_size: int) -> tuple[KSEOptions, dict | None]:
    """``kse`` with G and T chosen for ``target`` (and what the choice reaches), or as is."""
    if target is None or not target.active:
        return kse, None
    graph = import_graph(model)
    fill_conv_shapes(graph, model)
    sites = conv_sites(graph, select)
    layers = [(s.name, s.weight, s.output_hw) for s in sites
              if s.weight is not None and s.weight.ndim == 4]
    eligible = {s.name for s in sites if s.reason is None}
    choice = choose_levels(layers, eligible, kse, target, file_size)
    return dataclasses.replace(kse, G=choice.G, T=choice.T), choice.to_dict()


def _check_paths(input_path, output_path, overwrite: bool) -> None:
    """OUTPUT (and its weights file) against the input model and its external data
    (:func:`kse_onnx.paths.check_paths`); equal to the input only with ``overwrite``."""
    allow = (("OUTPUT", "INPUT"), ("OUTPUT's weights file", "INPUT")) if overwrite else ()
    check_paths({"INPUT": model_files(input_path)},
                {"OUTPUT": output_path, "OUTPUT's weights file": f"{output_path}.data"}, allow)
