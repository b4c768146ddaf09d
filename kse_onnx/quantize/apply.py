"""The ``--quantize`` step of ``optimize`` and ``finetune``: calibration data, INT8,
which convs became integer kernels, recorded settings."""

from __future__ import annotations

import onnx

from ..errors import OptionError
from ..graph.export import record_settings, settings_of
from ..options import DataOptions, QuantizeOptions, as_dict
from .inspect import integer_convs
from .names import shorten_names
from .ptq import quantize_int8


def quantize_output(model: onnx.ModelProto, options: QuantizeOptions,
                    data: DataOptions | None = None,
                    default_calibration: str | None = None) -> tuple[onnx.ModelProto, dict]:
    """(INT8 model, report entry) for an optimized float ``model``."""
    settings = settings_of(model) or {}
    calibration = None
    if options.quantize == "int8-static":
        source = options.calibration or default_calibration
        if not source:
            raise OptionError("--calibration", "int8-static needs calibration inputs")
        from ..finetune.data import load_data  # numpy readers only

        calibration = load_data(source, data or DataOptions())[0][:options.calibration_images]
    compressed = set(settings.get("compressed_layers", []))
    quantized, shared = quantize_int8(model, options.quantize, compressed, calibration)
    if options.short_names:
        shorten_names(quantized)
    kernels = integer_convs(quantized)
    record_settings(quantized, {**settings, **as_dict(options)})
    report = {
        "mode": options.quantize,
        "calibration_inputs": 0 if calibration is None else len(calibration),
        "integer_convs": sum(k.integer for k in kernels),
        "convs": len(kernels),
        "shared_int8_weights": len(shared),
        "float_convs": {k.name: k.reason for k in kernels if not k.integer},
    }
    return quantized, report
