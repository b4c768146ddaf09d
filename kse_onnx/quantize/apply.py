"""The ``--quantize`` step of ``optimize`` and ``finetune``: INT8 from calibration arrays,
which convs became integer kernels, recorded settings; and, for the ``auto`` lowering,
INT8 builds of each set of layer forms, timed against onnxruntime's INT8 of the original.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx

from ..errors import OptionError
from ..graph.export import record_settings, settings_of
from ..graph.settings import RecordedSettings
from ..options import QuantizeOptions
from .inspect import integer_convs
from .names import shorten_names
from .ptq import input_convs, quantize_int8, refuse_unbatched
from .shared import quantized_weight_names, share_int8_weights


def _static_inputs(options: QuantizeOptions, calibration: np.ndarray | None):
    """Calibration inputs for ``options``' mode: needed by int8-static only."""
    if options.quantize != "int8-static":
        return None
    if calibration is None:
        raise OptionError("--calibration", "int8-static needs calibration inputs")
    return calibration


def check_static_inputs(model: onnx.ModelProto, calibration: np.ndarray | None,
                        options: QuantizeOptions | None) -> None:
    """With ``options`` int8-static, its inputs checked before any work: calibration
    images, and a model input with a batch axis (the static quantizer is fed batches)."""
    if options is None or options.quantize != "int8-static":
        return
    if calibration is None:
        raise OptionError("--calibration", "int8-static needs calibration inputs")
    refuse_unbatched(model)


def finish(quantized: onnx.ModelProto, options: QuantizeOptions, settings: RecordedSettings,
           calibration, shared: list[str], kept: set[str] = frozenset(),
           reverted: set[str] = frozenset()) -> tuple[onnx.ModelProto, dict]:
    """Short names, recorded settings and the integer-kernel report of an INT8 model
    (``kept``: the Convs left in float on purpose; ``reverted``: the nodes the accuracy
    guard left in float, recorded as ``int8_float_nodes``)."""
    if options.short_names:
        shorten_names(quantized)
    kernels = integer_convs(quantized)
    record_settings(quantized, dataclasses.replace(
        settings, quantize=options,
        calibration_images=0 if calibration is None else len(calibration),
        int8_float_nodes=sorted(reverted) or None))
    report = {
        "mode": options.quantize,
        "calibration_inputs": 0 if calibration is None else len(calibration),
        "integer_convs": sum(k.integer for k in kernels),
        "convs": len(kernels),
        "shared_int8_weights": len(shared),
        "float_convs": {k.name: "kept in float (float_input_conv: it reads the model input)"
                        if k.name in kept else REVERTED if k.name in reverted else k.reason
                        for k in kernels if not k.integer},
    }
    if reverted:
        report["float_nodes"] = sorted(reverted)
    return quantized, report


REVERTED = "reverted to float by --max-drop (its INT8 error held the drop above D)"


def quantize_output(model: onnx.ModelProto, options: QuantizeOptions,
                    calibration: np.ndarray | None = None,
                    float_nodes: set[str] = frozenset()) -> tuple[onnx.ModelProto, dict]:
    """(INT8 model, report entry) for an optimized float ``model``; ``calibration``:
    the inputs int8-static calibrates on (loaded by :mod:`kse_onnx.calibration`);
    ``float_nodes``: nodes left in float besides ``options``' (int8-static)."""
    settings = settings_of(model) or RecordedSettings()
    calibration = _static_inputs(options, calibration)
    kept = kept_float(model, options)
    quantized, shared = quantize_int8(model, options.quantize, settings.compressed, calibration,
                                      float_convs=kept | set(float_nodes))
    return finish(quantized, options, settings, calibration, shared, kept,
                  set(float_nodes) - kept)


def kept_float(model: onnx.ModelProto, options: QuantizeOptions) -> set[str]:
    """The Convs ``options`` keep in float: with ``float_input_conv``, those reading the
    model input. (ResNet-56 on the CIFAR-10 JPEG copy: 84.24% all INT8, 85.04% with its
    first conv float, 85.16% in float; docs/int8.md.)"""
    return input_convs(model) if options.float_input_conv else set()


class Int8Builds:
    """INT8 versions of the ``auto`` lowering's float builds, for its whole-model check:
    ``build(forms, shared)`` quantizes the float model of ``forms`` once (cached) and
    stores KSE weights as int8 codebook + codes when ``shared``; ``reference()`` is
    onnxruntime's INT8 of the original, the speed to match."""

    def __init__(self, original: onnx.ModelProto, options: QuantizeOptions,
                 calibration: np.ndarray | None, build_float):
        self.original, self.options, self.build_float = original, options, build_float
        self.calibration = _static_inputs(options, calibration)
        self.cache: dict = {}
        self.report: dict = {}

    def reference(self) -> tuple[onnx.ModelProto, str]:
        plain, _ = quantize_int8(self.original, self.options.quantize, set(), self.calibration,
                                 share=False)
        return plain, f"onnxruntime's {self.options.quantize} of the original"

    def __call__(self, forms: dict, shared: bool):
        key = tuple(sorted((name, form.label) for name, form in forms.items()))
        if key not in self.cache:
            floating, lowered = self.build_float(forms, False)
            settings = settings_of(floating) or RecordedSettings()
            kept = kept_float(floating, self.options)
            quantized, _ = quantize_int8(floating, self.options.quantize, settings.compressed,
                                         self.calibration, share=False, float_convs=kept)
            self.cache[key] = (quantized, lowered, settings, kept)
        quantized, lowered, settings, kept = self.cache[key]
        model = onnx.ModelProto()
        model.CopyFrom(quantized)
        names = []
        if shared:
            names = share_int8_weights(model, quantized_weight_names(model,
                                                                     settings.compressed))
        model, self.report[shared] = finish(model, self.options,
                                            dataclasses.replace(settings,
                                                                compact_storage=shared),
                                            self.calibration, names, kept)
        return model, lowered
