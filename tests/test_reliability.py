"""Untrusted and unusual models: every case with its expected outcome and exit code."""

from __future__ import annotations

import gzip

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphs import GraphBuilder, cast_model, conv_stack, residual_net
from kse_onnx.api import optimize
from kse_onnx.cli import main
from kse_onnx.graph import io
from kse_onnx.options import LowerOptions
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


# --- every reader of user files validates first (issue #30) -----------------------------

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A model (input 3x8x8), its dense KSE output and one bad data file of each kind."""
    folder = tmp_path_factory.mktemp("readers")
    model, optimized = folder / "m.onnx", folder / "o.onnx"
    onnx.save(residual_net(16), model)
    optimize(model, optimized, lower_options=LowerOptions("dense"))
    rng = np.random.default_rng(0)
    good = rng.random((4, 3, 8, 8)).astype(np.float32)
    bad = {"pickle": np.array([object()], dtype=object), "text": np.array(["a"]),
           "empty": good[:0], "nan": np.where(good > 0.5, np.nan, good),
           "channels": rng.random((4, 16, 8, 8)).astype(np.float32)}
    files = {}
    for kind, x in bad.items():
        files[kind] = folder / f"{kind}.npz"
        np.savez(files[kind], x=x)
    idx = bytes([0, 0, 8, 3, 0, 0, 0, 4, 0, 0, 0, 8, 0, 0, 0, 8]) + bytes(4 * 64)
    files["idx"] = folder / "cut-images-idx3-ubyte"
    files["idx"].write_bytes(idx[:-10])
    files["gz"] = folder / "cut-images-idx3-ubyte.gz"
    files["gz"].write_bytes(gzip.compress(idx)[:-8])
    return folder, model, optimized, files


READERS = {
    "eval": ["eval", "{m}", "--data", "{d}"],
    "verify": ["verify", "{m}", "{o}", "--inputs", "{d}"],
    "finetune": ["finetune", "{o}", "{out}", "--teacher", "{m}", "--data", "{d}"],
    "optimize": ["optimize", "{m}", "{out}", "--calibration", "{d}", "--lowering", "dense"],
    "refit": ["refit", "{o}", "{out}", "--teacher", "{m}", "--calibration", "{d}"],
    "int8": ["optimize", "{m}", "{out}", "--quantize", "int8-static", "--calibration", "{d}",
             "--refit", "none", "--lowering", "dense"],
}
BAD_DATA = {"pickle": "holds Python objects (a pickle)", "text": "expected numbers",
            "empty": "holds no", "nan": "NaN or infinite", "channels": "16",
            "idx": "IDX data holds", "gz": "truncated or corrupt gzip data"}


@pytest.mark.parametrize("command", sorted(READERS))
def test_every_reader_refuses_bad_data_in_one_line(models, capsys, command):
    """Each command that reads data refuses each kind of bad data file with a one-line
    error naming it (exit 1) and writes nothing; verify reads .npz only."""
    folder, model, optimized, files = models
    out = folder / "out.onnx"
    for kind, words in BAD_DATA.items():
        if command == "verify" and kind in ("idx", "gz"):
            words = "not an .npz archive"
        argv = [a.format(m=model, o=optimized, out=out, d=files[kind])
                for a in READERS[command]]
        code = main(argv)
        err = capsys.readouterr().err.strip()
        assert code == 1 and len(err.splitlines()) == 1, (kind, err)
        assert words in err and str(files[kind]) in err and "internal" not in err, (kind, err)
        assert not out.exists()


@pytest.mark.parametrize("argv, flag", [
    (["finetune", "{t}/c.onnx", "{t}/o.onnx", "--teacher", "{t}/m.onnx", "--data",
      "{t}/missing.npz", "--lr", "-1"], "--lr"),
    (["finetune", "{t}/c.onnx", "{t}/o.onnx", "--teacher", "{t}/m.onnx", "--data",
      "{t}/missing.npz", "--lr", "nan"], "--lr"),
    (["finetune", "{t}/c.onnx", "{t}/o.onnx", "--teacher", "{t}/m.onnx", "--data",
      "{t}/missing.npz", "--lr", "inf"], "--lr"),
    (["finetune", "{t}/c.onnx", "{t}/o.onnx", "--teacher", "{t}/m.onnx", "--data",
      "{t}/missing.npz", "--temperature", "inf"], "--temperature"),
    (["optimize", "{t}/m.onnx", "{t}/o.onnx", "--quantize", "int8-static"], "--calibration"),
    (["optimize", "{t}/m.onnx", "{t}/o.onnx", "--target-latency", "0.5", "--lowering",
      "factored"], "--lowering"),
    (["optimize", "{t}/m.onnx", "{t}/o.onnx", "--target-latency", "0.5", "--target-macs",
      "0.5"], "--target-latency"),
    (["eval", "{t}/m.onnx", "--data", "{t}/missing.npz", "--std", "-1"], "--std"),
    (["verify", "{t}/m.onnx", "{t}/o.onnx", "--rtol", "-1"], "--rtol"),
    (["bench", "{t}/m.onnx", "--repeats", "0"], "--repeats"),
])
def test_options_are_checked_before_any_file_is_read(tmp_path, capsys, argv, flag):
    """Every file here is missing: an option error (exit 2) must come first."""
    assert main([a.format(t=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert f"option {flag}" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("extra, flag, words", [
    (["--mean", "0.5", "--mean", "0.5"], "--mean", "2 values for the 3-channel images"),
    (["--crop", "20"], "--crop", "20 is larger than the 8x8 images"),
])
def test_preprocessing_that_does_not_fit_the_images_is_an_option_error(models, capsys, extra,
                                                                       flag, words):
    folder, model, _, _ = models
    data = folder / "good.npz"
    np.savez(data, x=np.zeros((2, 3, 8, 8), np.float32))
    assert main(["eval", str(model), "--data", str(data), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert f"option {flag}: {words}" in err and len(err.splitlines()) == 1


def _choices(folder, name, content):
    path = folder / name
    path.write_text(content)
    return path


@pytest.mark.parametrize("content, words", [
    ('{"settings": [1, 2]}', "field 'settings' is a list, expected a JSON object"),
    ('{"settings": {"layer_forms": {"conv3": 5}}}', "field 'settings.layer_forms' is"),
    ('{"settings": {"compact_storage": "yes"}}', "field 'settings.compact_storage' is"),
    ('{"settings": {"budget_layers": {"a": ["x"]}, "budget_streams": {}}}',
     "field 'settings.budget_layers'"),
    ("[1]", "a JSON report is an object, this one is a list"),
    ("{", "cannot read a JSON report"),
    ("[" * 100_000, "cannot read a JSON report (maximum recursion depth exceeded"),
])
@pytest.mark.parametrize("budget", [False, True])
def test_malformed_choices_are_one_line_errors(models, capsys, content, words, budget):
    folder, model, _, _ = models
    choices = _choices(folder, "choices.json", content)
    argv = ["optimize", str(model), str(folder / "c.onnx"), "--choices", str(choices)]
    assert main(argv + (["--target-latency", "0.9"] if budget else [])) == 2
    err = capsys.readouterr().err.strip()
    assert f"option --choices: {choices}: {words}" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("value, words", [
    ("[1]", "field 'kse_onnx' is a list"),
    ('{"G": "4"}', "field 'kse_onnx.G' (--G) is '4', expected an integer"),
    ('{"layer_forms": 3}', "field 'kse_onnx.layer_forms' is 3"),
    ('{"compressed_layers": [1]}', "field 'kse_onnx.compressed_layers' is [1]"),
    ("[" * 100_000, "are not valid JSON"),
])
def test_malformed_recorded_settings_are_one_line_errors(models, capsys, value, words):
    folder, model, optimized, _ = models
    bad = folder / "bad_settings.onnx"
    m = onnx.load(optimized)
    next(p for p in m.metadata_props if p.key == "kse_onnx").value = value
    onnx.save(m, bad)
    for argv, code in ((["verify", str(model), str(bad)], 1),
                       (["refit", str(bad), str(folder / "r.onnx"), "--teacher", str(model),
                         "--calibration", str(folder / "channels.npz")], 1),
                       (["optimize", str(model), str(folder / "c.onnx"), "--choices",
                         str(bad)], 2)):
        assert main(argv) == code
        err = capsys.readouterr().err.strip()
        assert f"{bad}: kse-onnx settings in its metadata" in err and words in err, err
        assert len(err.splitlines()) == 1


def test_bench_of_a_model_that_cannot_run_at_a_batch_fails(models, capsys):
    folder, model, _, _ = models
    fixed = folder / "batch1.onnx"
    m = onnx.load(model)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(m, fixed)
    assert main(["bench", str(model), str(fixed), "--batch", "1,8", "--repeats", "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert f"{fixed}: input 'x' has a fixed batch of 1; it cannot run at --batch 8" in err
    broken = folder / "broken.onnx"
    b = GraphBuilder(3, 8)
    y = b.op("Reshape", [b.input.name, b.const(np.array([1, 192], np.int64))])
    onnx.save(b.model(b.op("Gemm", [y, b.const(np.ones((10, 192), np.float32))], transB=1)),
              broken)
    assert main(["bench", str(broken), "--batch", "2", "--repeats", "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert "onnxruntime cannot run" in err and len(err.splitlines()) == 1
