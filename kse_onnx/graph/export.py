"""From the edited graphsurgeon graph back to a checked ModelProto."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs

from ..errors import ModelError, OptionError, first_line
from ..paths import regular_file
from .core import quiet_graphsurgeon
from .inputs import check_same_inputs, restore_graph_inputs
from .io import load_model  # reads untrusted files safely
from .names import unique_tensor_names
from .settings import RecordedSettings, SettingsError

METADATA_KEY = "kse_onnx"


def export_model(graph: gs.Graph, original: onnx.ModelProto,
                 settings: RecordedSettings) -> onnx.ModelProto:
    """ModelProto of ``graph`` with ``original``'s model-level fields and our settings."""
    graph_io = {t.name for t in graph.inputs} | {t.name for t in graph.outputs}
    for tensor in graph.tensors().values():
        # inferred shapes of inner tensors are stale where channels were removed
        if isinstance(tensor, gs.Variable) and tensor.name not in graph_io:
            tensor.shape = None
    unique_tensor_names(graph)
    with quiet_graphsurgeon():
        model = gs.export_onnx(graph, do_type_check=True)
    restore_graph_inputs(model, original)
    check_same_inputs(model, original)
    copy_model_fields(model, original)
    del model.graph.value_info[:]
    record_settings(model, settings)
    return model


MODEL_FIELDS = ("ir_version", "producer_name", "producer_version", "domain", "model_version",
                "doc_string")


def copy_model_fields(model: onnx.ModelProto, original: onnx.ModelProto) -> onnx.ModelProto:
    """Give ``model``, a rewrite of ``original``, its model-level fields: IR version,
    opsets, producer, domain, model version, doc string and metadata; returns ``model``."""
    for name in MODEL_FIELDS:
        setattr(model, name, getattr(original, name))
    del model.opset_import[:]
    model.opset_import.extend(original.opset_import)
    del model.metadata_props[:]
    model.metadata_props.extend(original.metadata_props)
    return model


def check_model(model: onnx.ModelProto, where) -> None:
    """onnx.checker (full) and strict shape inference, or a ModelError naming ``where``."""
    try:
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:
        raise ModelError(f"{where}: optimized model fails the ONNX checker: "
                         f"{first_line(exc)}") from exc


def settings_of(model: onnx.ModelProto, where="model") -> RecordedSettings | None:
    """The settings kse-onnx recorded in an optimized model, or None; recorded settings
    that are not valid JSON or cannot be believed (:mod:`.settings`) are a one-line
    error naming ``where`` and the field."""
    for entry in model.metadata_props:
        if entry.key == METADATA_KEY:
            try:
                raw = json.loads(entry.value)
            except (ValueError, RecursionError):  # RecursionError: nested too deep
                raise ModelError(f"{where}: kse-onnx settings in its metadata are not valid "
                                 "JSON") from None
            try:
                return RecordedSettings.from_dict(raw, METADATA_KEY)
            except SettingsError as exc:
                raise ModelError(f"{where}: kse-onnx settings in its metadata: {exc}") from None
    return None


def recorded_settings(path: str) -> RecordedSettings:
    """The kse-onnx settings recorded by an earlier run, in its model or its JSON report
    (``--choices``); a file that is neither, or whose settings cannot be believed, is a
    one-line option error naming the file and the field."""
    source = Path(path)
    if source.suffix != ".json":
        try:
            return settings_of(load_model(source), source) or RecordedSettings()
        except ModelError as exc:
            raise OptionError("--choices", str(exc)) from None
    try:
        report = json.loads(regular_file(source, "a JSON report").read_text())
    except (OSError, ValueError, RecursionError, ModelError) as exc:
        raise OptionError("--choices", f"{path}: cannot read a JSON report "
                                       f"({first_line(exc)})") from None
    if not isinstance(report, dict):
        raise OptionError("--choices", f"{path}: a JSON report is an object, this one is a "
                                       f"{type(report).__name__}")
    try:
        return RecordedSettings.from_dict(report.get("settings", {}))
    except SettingsError as exc:
        raise OptionError("--choices", f"{path}: {exc}") from None


def record_settings(model: onnx.ModelProto, settings: RecordedSettings) -> None:
    """Replace the settings kse-onnx records in ``model``'s metadata."""
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(settings.to_dict(), sort_keys=True)
