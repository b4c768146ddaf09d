"""INT8 after KSE: onnxruntime's quantizer, sharing kept in 8 bits (exactly), integer
kernels where plain quantization gets them, names, reasons, CLI errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from graphs import conv_stack, photo_batch, residual_net
from kse_onnx.api import optimize
from kse_onnx.cli import main
from kse_onnx.graph.export import settings_of
from kse_onnx.quantize.inspect import integer_convs
from kse_onnx.quantize.names import shorten_names
from kse_onnx.quantize.ptq import expand_constants, quantize_int8
from kse_onnx.quantize.shared import channel_codebook, share_int8_weights
from kse_onnx.runtime.ort import session

HW = 16


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    """The original, its KSE model (compact) and photo calibration/test inputs."""
    tmp = tmp_path_factory.mktemp("int8")
    src, dst = tmp / "in.onnx", tmp / "kse.onnx"
    onnx.save(residual_net(32, hw=HW), src)
    main(["optimize", str(src), str(dst), "--lowering", "compact", "--G", "5", "--T", "1"])
    calibration = tmp / "calibration.npz"
    np.savez(calibration, x=photo_batch((64, 3, HW, HW), seed=1))
    return tmp, src, dst, calibration


def _outputs(model, x):
    sess = session(model)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_channel_codebook_rebuilds_the_weight_exactly():
    rng = np.random.default_rng(0)
    kernels = rng.integers(-128, 128, (5, 3, 3)).astype(np.int8)
    weight = kernels[rng.integers(0, 5, (40, 6))]  # (40, 6, 3, 3), 5 distinct kernels
    table, codes, offsets = channel_codebook(weight)
    assert codes.dtype == np.uint8 and offsets.shape == (1, 6)
    assert np.array_equal(table[codes.astype(np.int64) + offsets], weight)
    assert len(table) <= 6 * 5


def test_sharing_is_exact_and_keeps_integer_kernels(compressed):
    _, _, kse, calibration = compressed
    model = onnx.load(kse)
    convs = set(settings_of(model).compressed_layers)
    x = np.load(calibration)["x"]
    shared, names = quantize_int8(model, "int8-static", convs, x)
    assert names, "no KSE weight stored as int8 codebook + codes"
    plain = expand_constants(shared)  # the same model with every Gather folded back
    assert not any(n.op_type == "Gather" for n in plain.graph.node)
    for inputs in (x[:8], np.random.default_rng(2).standard_normal(x[:8].shape, np.float32)):
        assert np.array_equal(_outputs(shared, inputs), _outputs(plain, inputs))
    kernels, plain_kernels = integer_convs(shared), integer_convs(plain)
    assert [k.integer for k in kernels] == [k.integer for k in plain_kernels]
    assert sum(k.integer for k in kernels) == len(kernels)  # a plain CNN: every conv


def test_kse_weights_per_tensor_others_per_channel(compressed):
    _, _, kse, calibration = compressed
    model = onnx.load(kse)
    convs = set(settings_of(model).compressed_layers)
    quantized, _ = quantize_int8(model, "int8-static", convs, np.load(calibration)["x"])
    inits = {i.name: numpy_helper.to_array(i) for i in quantized.graph.initializer}
    producers = {o: n for n in quantized.graph.node for o in n.output}
    scales = {}
    for node in quantized.graph.node:
        if node.op_type == "Conv":
            dq = producers[node.input[1]]
            scales[node.name] = inits[dq.input[1]].size
    assert all(scales[name] == 1 for name in convs)
    assert any(size > 1 for name, size in scales.items() if name not in convs)


def test_optimize_int8_static_end_to_end(compressed, capsys):
    tmp, src, kse, calibration = compressed
    out = tmp / "int8.onnx"
    assert main(["optimize", str(src), str(out), "--G", "5", "--T", "1", "--quantize",
                 "int8-static", "--calibration", str(calibration), "--calibration-images",
                 "256", "--refit", "none", "--lowering", "compact"]) == 0
    # (compact, not auto: auto keeps the int8 codebooks only where they time no slower,
    # so its file size depends on the machine's load; test_auto_times_int8_builds_... has it)
    text = capsys.readouterr().out
    assert "int8-static:" in text and "convs run as integer kernels" in text
    assert out.stat().st_size < 0.5 * kse.stat().st_size  # float compact -> int8 shared
    settings = settings_of(onnx.load(out))
    assert settings.quantize.quantize == "int8-static" and settings.calibration_images == 64
    x = np.load(calibration)["x"][:16]
    want, got = _outputs(onnx.load(src), x), _outputs(onnx.load(out), x)
    kse_out = _outputs(onnx.load(kse), x)
    # int8 adds an error small next to KSE's own approximation
    assert np.linalg.norm(got - kse_out) < 0.5 * np.linalg.norm(want - kse_out) + 1e-3
    assert main(["verify", str(src), str(out)]) == 0
    assert "PASS: INT8 output holds against the original with W_hat" in capsys.readouterr().out


def test_int8_dynamic_runs_conv_integer(compressed):
    tmp, src, _, _ = compressed
    out = tmp / "dyn.onnx"
    report = optimize(src, out, quantize=_quantize("int8-dynamic"), overwrite=True)
    assert report.extra["int8"]["integer_convs"] == report.extra["int8"]["convs"]
    assert any(n.op_type == "ConvInteger" for n in onnx.load(out).graph.node)


def _quantize(mode, **kw):
    from kse_onnx.options import QuantizeOptions

    return QuantizeOptions(quantize=mode, **kw)


def _calibrated(path) -> dict:
    """INT8 calibration on ``path`` without the refit (tests/test_refit.py has that)."""
    from kse_onnx.options import CalibrationOptions, RefitOptions

    return {"calibration": CalibrationOptions(str(path)), "refit": RefitOptions("none")}


def test_static_without_calibration_is_a_usage_error(compressed, capsys):
    tmp, src, _, _ = compressed
    out = tmp / "nocal.onnx"
    assert main(["optimize", str(src), str(out), "--quantize", "int8-static"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--calibration" in err and len(err.splitlines()) == 1 and not out.exists()


def test_short_names_change_no_output():
    model = conv_stack((3, 16, 16), hw=8)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    before = _outputs(model, x)
    renamed = onnx.ModelProto()
    renamed.CopyFrom(model)
    shorten_names(renamed)
    onnx.checker.check_model(renamed, full_check=True)
    assert np.array_equal(_outputs(renamed, x), before)
    assert [i.name for i in renamed.graph.input] == [i.name for i in model.graph.input]
    assert all(len(i.name) <= 4 for i in renamed.graph.initializer)


def test_float_convs_get_a_reason():
    kernels = integer_convs(conv_stack((3, 16, 16), hw=8))
    assert kernels and not any(k.integer for k in kernels)
    assert all("not quantized" in k.reason for k in kernels)


def test_sharing_skips_weights_that_do_not_repeat():
    rng = np.random.default_rng(0)
    weight = rng.integers(-128, 128, (8, 4, 3, 3)).astype(np.int8)
    model = onnx.helper.make_model(onnx.helper.make_graph(
        [], "g", [], [onnx.helper.make_tensor_value_info("w", onnx.TensorProto.INT8, None)],
        [numpy_helper.from_array(weight, "w")]))
    assert share_int8_weights(model, {"w"}) == []


def test_auto_times_int8_builds_against_int8_of_the_original(compressed):
    tmp, src, _, calibration = compressed
    out = tmp / "auto_int8.onnx"
    report = optimize(src, out, quantize=_quantize("int8-static"), overwrite=True,
                      **_calibrated(calibration))
    assert "onnxruntime's int8-static of the original" in report.extra["auto"]["verdict"]
    int8 = report.extra["int8"]
    # every conv integer but the one reading the model input, kept float on purpose
    assert int8["integer_convs"] == int8["convs"] - 1
    assert list(int8["float_convs"].values()) == [
        "kept in float (float_input_conv: it reads the model input)"]
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(out).graph.node)


def test_int8_static_quantizes_the_input_conv_when_asked(compressed):
    """--no-float-input-conv: every conv integer, the input conv too."""
    tmp, src, kse, calibration = compressed
    out = tmp / "all_int8.onnx"
    options = _quantize("int8-static", float_input_conv=False)
    report = optimize(src, out, quantize=options, overwrite=True, **_calibrated(calibration))
    assert report.extra["int8"]["integer_convs"] == report.extra["int8"]["convs"]
    assert main(["optimize", str(src), str(tmp / "cli_all.onnx"), "--quantize",
                 "int8-static", "--calibration", str(calibration), "--no-float-input-conv",
                 "--lowering", "dense", "--quiet"]) == 0
    kernels = integer_convs(onnx.load(tmp / "cli_all.onnx"))
    assert all(k.integer for k in kernels), kernels


def test_float_output_keeps_forms_chosen_for_int8(compressed):
    from kse_onnx.verify import verify

    tmp, src, _, calibration = compressed
    out = tmp / "float_for_int8.onnx"
    report = optimize(src, out, quantize=_quantize("int8-static", float_output=True),
                      overwrite=True, **_calibrated(calibration))
    model = onnx.load(out)
    assert not any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    forms = settings_of(model).layer_forms
    assert forms == {name: entry["chosen"] for name, entry in
                     report.extra["auto"]["layers"].items()}
    assert verify(src, out, rtol=1e-5).exact
