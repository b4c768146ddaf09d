"""Untrusted and unusual models: every case with its expected outcome and exit code."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphs import GraphBuilder, cast_model, conv_stack, residual_net
from kse_onnx.api import optimize
from kse_onnx.cli import main
from kse_onnx.graph import io
from kse_onnx.verify import verify


def _run(tmp_path, model, *args):
    src, dst = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    return main(["optimize", str(src), str(dst), *args]), src, dst


def test_checker_failure_is_a_model_error(tmp_path, capsys):
    model = residual_net(16)
    model.graph.node[2].input[0] = "no_such_tensor"
    code, src, dst = _run(tmp_path, model)
    err = capsys.readouterr().err
    assert code == 1 and "fails onnx.checker" in err and str(src) in err and not dst.exists()


def test_declared_size_beyond_data_is_refused_before_allocating(tmp_path, capsys):
    model = residual_net(16)
    weight = model.graph.initializer[0]
    weight.dims[0] = 10**9  # claims gigabytes, holds kilobytes
    code, _, dst = _run(tmp_path, model)
    assert code == 1 and "declares" in capsys.readouterr().err and not dst.exists()


def _non_constant_weight_model(dequantize: bool):
    b = GraphBuilder(3, 8)
    x = b.relu(b.conv(b.input.name, 3, 16))
    w = (b.rng.standard_normal((16, 16, 3, 3)) * 0.1).astype(np.float32)
    if dequantize:
        q = b.const((w * 100).round().clip(-127, 127).astype(np.int8))
        w_name = b.op("DequantizeLinear", [q, b.const(np.float32(0.01)),
                                           b.const(np.int8(0))])
    else:
        w_name = b.op("Mul", [b.const(w), b.const(np.float32(1.0))])  # computed
    y = b.op("Conv", [x, w_name], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    return b.model(b.head(y, 16))


@pytest.mark.parametrize("dequantize, reason", [
    (False, "weight is not a constant"),
    (True, "quantized conv (weight from DequantizeLinear)"),
])
def test_non_constant_weights_skipped_with_reason(tmp_path, dequantize, reason):
    src, dst = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(_non_constant_weight_model(dequantize), src)
    report = optimize(src, dst)
    assert any((layer.reason or "").startswith(reason) for layer in report.layers)
    assert dst.exists()


def test_qlinearconv_listed_as_skipped(tmp_path):
    b = GraphBuilder(3, 8)
    x = b.op("QuantizeLinear", [b.input.name, b.const(np.float32(0.1)), b.const(np.uint8(128))])
    w = b.const(np.ones((8, 3, 3, 3), np.uint8))
    y = b.op("QLinearConv", [x, b.const(np.float32(0.1)), b.const(np.uint8(128)), w,
                             b.const(np.float32(0.1)), b.const(np.uint8(0)),
                             b.const(np.float32(0.2)), b.const(np.uint8(0))],
             kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    out = b.op("DequantizeLinear", [y, b.const(np.float32(0.2)), b.const(np.uint8(0))])
    model = b.model(b.head(out, 8))
    src, dst = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    report = optimize(src, dst)
    assert report.layers[0].reason == "quantized conv: not supported"


def test_float16_model_optimizes_and_verifies(tmp_path):
    model = cast_model(residual_net(32), TensorProto.FLOAT16)
    src, dst = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    optimize(src, dst)
    codes = {TensorProto.UINT8, TensorProto.UINT16, TensorProto.INT64}  # compact codes, indices
    types = {i.data_type for i in onnx.load(dst).graph.initializer}
    assert types - codes == {TensorProto.FLOAT16}
    assert verify(src, dst, rtol=1e-2).exact


def test_float64_model_keeps_dtype(tmp_path):
    model = cast_model(residual_net(32), TensorProto.DOUBLE)
    src, dst = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    report = optimize(src, dst)
    assert any(layer.status == "compressed" for layer in report.layers)
    assert "not timed" in report.extra["auto"]["verdict"]  # onnxruntime CPU has no fp64 Conv
    types = {i.data_type for i in onnx.load(dst).graph.initializer}
    assert types - {TensorProto.UINT8, TensorProto.UINT16} == {TensorProto.DOUBLE}


def test_bfloat16_model_keeps_dtype(tmp_path):
    model = cast_model(conv_stack((3, 16, 16)), TensorProto.BFLOAT16)
    model.opset_import[0].version, model.ir_version = 22, 10  # bfloat16 Conv: opset 22
    src, dst = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    report = optimize(src, dst)
    assert report.layers[1].status == "compressed"
    floats = {i.data_type for i in onnx.load(dst).graph.initializer} - {TensorProto.UINT8}
    assert floats == {TensorProto.BFLOAT16}


def test_verify_bad_batch_is_usage_error(tmp_path, capsys):
    src = tmp_path / "in.onnx"
    onnx.save(residual_net(16), src)
    assert main(["verify", str(src), str(src), "--batch", "0"]) == 2
    assert "--batch" in capsys.readouterr().err


def test_verify_refuses_models_not_written_by_us(tmp_path, capsys):
    src = tmp_path / "in.onnx"
    onnx.save(residual_net(16), src)
    assert main(["verify", str(src), str(src)]) == 1
    assert "no kse-onnx settings" in capsys.readouterr().err


def test_large_models_get_external_data(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "_PROTOBUF_LIMIT", 10_000)  # stand-in for 2 GiB
    src, dst = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(residual_net(32), src)
    optimize(src, dst)
    assert (tmp_path / "out.onnx.data").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx", "out.onnx", "out.onnx.data"]
    model = io.load_model(dst)
    assert all(not i.external_data for i in model.graph.initializer)
    assert verify(src, dst).exact


def test_constant_node_weight_is_compressed(tmp_path):
    b = GraphBuilder(3, 8)
    x = b.relu(b.conv(b.input.name, 3, 16))
    w = (b.rng.standard_normal((16, 16, 3, 3)) * 0.1).astype(np.float32)
    b.nodes.append(helper.make_node("Constant", [], ["cw"], name="cw",
                                    value=numpy_helper.from_array(w)))
    y = b.op("Conv", [x, "cw"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    src, dst = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(b.model(b.head(y, 16)), src)
    report = optimize(src, dst)
    assert report.layers[1].status == "compressed"
    assert verify(src, dst).exact


@pytest.mark.parametrize("argv, code, words", [
    (["bench", "{m}", "--provider", "cuda"], 1, "not available"),
    (["bench", "{m}", "--provider", "tpu"], 2, "--provider"),
    (["bench", "{m}", "--batch", "0"], 2, "--batch"),
    (["bench", "{m}", "--batch", "x"], 2, "--batch"),
    (["eval", "{m}", "--data", "{tmp}/missing.npz"], 1, "no such data"),
    (["eval", "{m}", "--data", "{m}"], 1, "unknown data format"),
    (["finetune", "{m}", "{tmp}/o.onnx", "--teacher", "{m}", "--data", "{tmp}/x.npz"], 1,
     "no such data"),
    (["finetune", "{m}", "{tmp}/o.onnx", "--teacher", "{m}", "--data", "{m}", "--lr", "-1"], 2,
     "--lr"),
    (["finetune", "{m}", "{tmp}/o.onnx", "--teacher", "{m}", "--data", "{m}",
      "--std", "0"], 2, "--std"),
])
def test_other_commands_fail_in_one_line(tmp_path, capsys, argv, code, words):
    model = tmp_path / "m.onnx"
    onnx.save(residual_net(16), model)
    argv = [a.format(m=model, tmp=tmp_path) for a in argv]
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o.onnx").exists()
