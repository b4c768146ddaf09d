"""The small helpers every rewrite shares: model-level fields copied onto a rewritten
model, one-line exception summaries, the Conv op-type sets."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from graphs import GraphBuilder, conv_stack
from kse_onnx.analysis.model import analyse
from kse_onnx.errors import first_line
from kse_onnx.graph.export import MODEL_FIELDS, copy_model_fields, export_model
from kse_onnx.graph.optypes import CONVS
from kse_onnx.graph.settings import RecordedSettings
from kse_onnx.options import KSEOptions, SelectOptions
from kse_onnx.quantize.ptq import expand_constants
from kse_onnx.verify import reference_model


def _dressed_model() -> onnx.ModelProto:
    model = conv_stack()
    model.ir_version = 7  # not the default of the onnx installed
    model.producer_name, model.producer_version = "maker", "1.2"
    model.domain, model.model_version, model.doc_string = "org.example", 3, "a model"
    entry = model.metadata_props.add()
    entry.key, entry.value = "owner", "tests"
    return model


def _fields(model) -> dict:
    return {**{name: getattr(model, name) for name in MODEL_FIELDS},
            "opsets": [(o.domain, o.version) for o in model.opset_import],
            "metadata": {p.key: p.value for p in model.metadata_props if p.key != "kse_onnx"}}


def test_every_rewrite_keeps_the_model_fields():
    original = _dressed_model()
    assert original.ir_version != onnx.IR_VERSION
    result = analyse(original, KSEOptions(), SelectOptions())
    settings = RecordedSettings(KSEOptions(), SelectOptions())
    rewrites = {
        "export_model": export_model(result.graph, original, settings),
        "reference_model": reference_model(original, settings),
        "expand_constants": expand_constants(original),
        "copy_model_fields": copy_model_fields(onnx.ModelProto(), original),
    }
    for name, model in rewrites.items():
        assert _fields(model) == _fields(original), name


@pytest.mark.parametrize("exc, line", [
    (ValueError("first\nsecond"), "first"), (ValueError("  \n"), "ValueError"),
    (RuntimeError(), "RuntimeError"), (OSError("  padded  \nmore"), "padded"),
])
def test_first_line(exc, line):
    assert first_line(exc) == line


@pytest.mark.parametrize("op", ["QLinearConv", "ConvInteger"])
def test_integer_convs_are_listed_and_left_alone(op):
    """Each integer conv kernel (onnxruntime's QLinearConv, ConvInteger) is a Conv site of
    the report, skipped with its reason; the float Conv beside it is compressed."""
    b = GraphBuilder(3, 8)
    x = b.conv(b.input.name, 3, 16)
    q = b.op("QuantizeLinear", [x, b.const(np.float32(0.1)), b.const(np.uint8(128))])
    w = b.const(np.ones((16, 16, 3, 3), np.uint8))
    if op == "QLinearConv":
        y = b.op(op, [q, b.const(np.float32(0.1)), b.const(np.uint8(128)), w,
                      b.const(np.float32(0.1)), b.const(np.uint8(0)),
                      b.const(np.float32(0.2)), b.const(np.uint8(0))],
                 kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        y = b.op("DequantizeLinear", [y, b.const(np.float32(0.2)), b.const(np.uint8(0))])
    else:
        y = b.op("Cast", [b.op(op, [q, w], kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
                 to=onnx.TensorProto.FLOAT)
    y = b.conv(y, 16, 32)
    report = analyse(b.model(b.head(y, 32)), KSEOptions(), SelectOptions()).report
    kinds = {layer.name: (layer.status, layer.reason) for layer in report.layers}
    assert [k for k, (_, reason) in kinds.items()
            if reason == "quantized conv: not supported"] == [
        n.name for n in b.nodes if n.op_type == op]
    assert sum(status == "compressed" for status, _ in kinds.values()) == 1
    assert len(kinds) == sum(n.op_type in CONVS for n in b.nodes) == 3


def test_graphsurgeon_log_level_untouched():
    """kse_onnx silences graphsurgeon only while it runs (bfloat16 warnings), and leaves
    the level the user set."""
    import subprocess
    import sys

    code = ("from onnx_graphsurgeon.logger import G_LOGGER as L; before = L.severity; "
            "import kse_onnx.api, kse_onnx.graph.core as s; assert L.severity == before; "
            "from tools.graphs import conv_stack; "
            "s.import_graph(conv_stack()); assert L.severity == before; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    assert out.stdout.strip() == "ok", out.stderr


def test_shape_inference_failure_is_a_note(monkeypatch):
    def fail(model, *args, **kwargs):
        raise RuntimeError("inference broke\nsecond line")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", fail)
    report = analyse(conv_stack(), KSEOptions(), SelectOptions()).report
    # the sizes then come from one onnxruntime run (kse_onnx/graph/runtime_shapes.py)
    assert report.extra["notes"][0] == "shape inference failed (inference broke)"
    assert report.extra["notes"][1].startswith("conv shapes of ")
    assert all(layer.output_hw for layer in report.layers if layer.shape)
    assert "note: shape inference failed" in report.table()


def test_no_note_when_shape_inference_works():
    assert "notes" not in analyse(conv_stack(), KSEOptions(), SelectOptions()).report.extra


def test_missing_shared_file_fails_in_ci_and_skips_elsewhere(monkeypatch):
    from shared_data import REQUIRE_SHARED, shared_file

    monkeypatch.setenv(REQUIRE_SHARED, "1")
    with pytest.raises(pytest.fail.Exception, match="requires it"):
        shared_file("no/such/file.pth")
    monkeypatch.delenv(REQUIRE_SHARED)
    with pytest.raises(pytest.skip.Exception, match="is missing"):
        shared_file("no/such/file.pth")
