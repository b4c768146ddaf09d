"""From the edited graphsurgeon graph back to a checked ModelProto."""

from __future__ import annotations

import json

import onnx
import onnx_graphsurgeon as gs

from ..errors import ModelError
from .inputs import restore_graph_inputs
from .names import unique_tensor_names

METADATA_KEY = "kse_onnx"


def export_model(graph: gs.Graph, original: onnx.ModelProto, settings: dict) -> onnx.ModelProto:
    """ModelProto of ``graph`` with ``original``'s model-level fields and our settings."""
    graph_io = {t.name for t in graph.inputs} | {t.name for t in graph.outputs}
    for tensor in graph.tensors().values():
        # inferred shapes of inner tensors are stale where channels were removed
        if isinstance(tensor, gs.Variable) and tensor.name not in graph_io:
            tensor.shape = None
    unique_tensor_names(graph)
    model = gs.export_onnx(graph, do_type_check=True)
    restore_graph_inputs(model, original)
    model.ir_version = original.ir_version
    del model.opset_import[:]
    model.opset_import.extend(original.opset_import)
    for field in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(model, field, getattr(original, field))
    del model.graph.value_info[:]
    del model.metadata_props[:]
    model.metadata_props.extend(original.metadata_props)
    record_settings(model, settings)
    return model


def check_model(model: onnx.ModelProto, where) -> None:
    """onnx.checker (full) and strict shape inference, or a ModelError naming ``where``."""
    try:
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{where}: optimized model fails the ONNX checker: {first}") from None


def settings_of(model: onnx.ModelProto) -> dict | None:
    """The settings kse-onnx recorded in an optimized model, or None."""
    for entry in model.metadata_props:
        if entry.key == METADATA_KEY:
            return json.loads(entry.value)
    return None


def record_settings(model: onnx.ModelProto, settings: dict) -> None:
    """Replace the settings kse-onnx records in ``model``'s metadata."""
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(settings, sort_keys=True)
