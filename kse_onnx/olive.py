"""KSE as an Olive pass (``pip install 'kse-onnx[olive]'``; docs/pipelines.md).

``KSECompression`` takes every option of ``kse-onnx optimize`` under the same names
(``G``, ``T``, ``lowering``, ``refit``, ``max_drop``, ...) and Olive's ``data_config`` for
the calibration images; it runs :func:`kse_onnx.api.optimize_model` and hands Olive the
compressed model, so a workflow can chain it with onnxruntime quantization. Olive finds
a pass outside its own package through a package config: :func:`write_package_config`
writes Olive's default one with this pass added, for ``olive run --package-config``.

Nothing else in kse_onnx imports this module; it imports Olive at import time.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from olive.data.config import DataConfig
from olive.model import ONNXModelHandler
from olive.model.utils import resolve_onnx_path
from olive.package_config import OlivePackageConfig
from olive.passes import Pass
from olive.passes.onnx.common import get_external_data_config, model_proto_to_olive_model
from olive.passes.pass_config import PassConfigParam

from .api import optimize_model
from .options import OPTIMIZE_OPTIONS, CalibrationOptions

PASS_TYPE = "KSECompression"
OPTION_CLASSES = (*OPTIMIZE_OPTIONS.values(), CalibrationOptions)


def _param(f) -> PassConfigParam:
    kind = list if isinstance(f.default, tuple) else type(f.default)
    default = list(f.default) if isinstance(f.default, tuple) else f.default
    return PassConfigParam(type_=kind, default_value=default, description=f.metadata["help"])


class KSECompression(Pass):
    """KSE compression (kse-onnx optimize) with calibration from Olive's data_config."""

    @classmethod
    def _default_config(cls, accelerator_spec) -> dict[str, PassConfigParam]:
        params = {f.name: _param(f) for c in OPTION_CLASSES for f in dataclasses.fields(c)}
        params["data_config"] = PassConfigParam(
            type_=DataConfig | dict, description="calibration images (unlabeled): "
            "their first calibration_images samples refit the compressed layers; without "
            "it (nor 'calibration', a path) the model is compressed without a refit")
        params.update(get_external_data_config())
        return params

    def _run_for_config(self, model: ONNXModelHandler, config, output_model_path: str
                        ) -> ONNXModelHandler:
        values = config.model_dump() if hasattr(config, "model_dump") else dict(config)
        def built(c):
            return c(**{f.name: tuple(values[f.name]) if isinstance(f.default, tuple)
                        else values[f.name] for f in dataclasses.fields(c)})

        options = {keyword: built(c) for keyword, c in OPTIMIZE_OPTIONS.items()}
        calibration = built(CalibrationOptions)
        images = calibration.calibration_images
        if values.get("data_config"):
            calibration = _batches(values["data_config"])
        result = optimize_model(model.model_path, calibration=calibration,
                                calibration_images=images, **options)
        output_model_path = resolve_onnx_path(output_model_path, Path(model.model_path).name)
        Path(output_model_path).with_suffix(".kse.json").write_text(
            json.dumps(result.report.to_dict(), indent=2, sort_keys=True) + "\n")
        return model_proto_to_olive_model(result.model, output_model_path, config)


def _batches(data_config):
    """Olive's dataloader as the arrays (or input dicts) kse_onnx takes: each batch's
    inputs, labels dropped, torch tensors as numpy."""
    import numpy as np

    config = data_config if isinstance(data_config, DataConfig) else \
        DataConfig.model_validate(data_config)
    for batch in config.to_data_container().create_dataloader():
        inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
        if isinstance(inputs, dict):
            yield {k: np.asarray(v.numpy() if hasattr(v, "numpy") else v)
                   for k, v in inputs.items()}
        else:
            yield np.asarray(inputs.numpy() if hasattr(inputs, "numpy") else inputs)


def write_package_config(path) -> Path:
    """Olive's default package config with ``KSECompression`` added (for
    ``olive run --package-config PATH``)."""
    default = Path(OlivePackageConfig.get_default_config_path())
    config = json.loads(default.read_text())
    config["passes"][PASS_TYPE] = {
        "module_path": f"{__name__}.{KSECompression.__name__}",
        "supported_providers": ["*"], "supported_accelerators": ["*"],
        "supported_precisions": ["*"], "supported_algorithms": [],
        "supported_quantization_encodings": [], "extra_dependencies": []}
    path = Path(path)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path
