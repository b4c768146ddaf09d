"""Shapes of real exports, each reproduced by a small graph: torchvision's detectors
(unbatched input, preprocessing in the graph) and refitted MobileNetV2 (a compressed
Conv that is also the pruned producer of the next compressed Conv)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphs import GraphBuilder, photo_batch
from kse_onnx import verify as verify_module
from kse_onnx.api import optimize, score
from kse_onnx.cli import main
from kse_onnx.options import CalibrationOptions, KSEOptions, LowerOptions, RefitOptions
from kse_onnx.verify import verify


def detector_stem(hw: int = 12) -> onnx.ModelProto:
    """torchvision's SSDlite320 in small: an unbatched 3xHxW image normalised (Sub, Div),
    given a batch axis (Unsqueeze), resized to sizes computed in the graph (Resize),
    unbatched (Gather), padded (Pad) and batched again (Unsqueeze, Concat); then the
    stem conv 3->16, a conv 16->16 and a head that splits its output on the batch axis
    (a Split by constant sizes, which a wrong batch size in the graph breaks)."""
    b = GraphBuilder(3, hw)
    b.input = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, hw, hw])
    chw = (3, 1, 1)
    x = b.op("Sub", ["x", b.const(np.full(chw, 0.45, np.float32))])
    x = b.op("Div", [x, b.const(np.full(chw, 0.25, np.float32))])
    x = b.op("Unsqueeze", [x, b.const(np.array([0], np.int64))])
    head = b.op("Slice", [b.op("Shape", [x]), b.const(np.array([0], np.int64)),
                          b.const(np.array([2], np.int64))])
    sizes = b.op("Concat", [head, b.const(np.array([2 * hw, 2 * hw], np.int64))], axis=0)
    x = b.op("Resize", [x, "", "", sizes], mode="linear")
    x = b.op("Gather", [x, b.const(np.array(0, np.int64))], axis=0)
    x = b.op("Pad", [x, b.const(np.array([0, 0, 0, 0, 2, 2], np.int64))])
    x = b.op("Unsqueeze", [x, b.const(np.array([0], np.int64))])
    x = b.op("Concat", [x], axis=0)
    x = b.relu(b.conv(x, 3, 16))
    x = b.relu(b.conv(x, 16, 16))
    logits = b.head(x, 16)
    out = b.op("Split", [logits, b.const(np.array([1], np.int64))], axis=0)
    return b.model(out, opset=13, shape=(1, 10))


def test_first_conv_behind_a_detectors_preprocessing_is_left_alone(tmp_path):
    src = tmp_path / "stem.onnx"
    onnx.save(detector_stem(), src)
    report = score(src)
    assert report.layers[0].reason.startswith("first conv")  # keeps all three colours
    assert report.layers[1].status == "compressed"


def test_learned_features_are_no_preprocessing(tmp_path):
    """A conv reading input and learned features mixed is no first conv."""
    b = GraphBuilder(3, 8)
    features = b.conv(b.input.name, 3, 3, k=1)
    x = b.relu(b.conv(b.op("Add", [b.input.name, features]), 3, 16))
    x = b.relu(b.conv(x, 16, 16))
    src = tmp_path / "mixed.onnx"
    onnx.save(b.model(b.head(x, 16)), src)
    reasons = [layer.reason or "" for layer in score(src).layers]
    assert reasons[0].startswith("first conv") and not reasons[1].startswith("first conv")


@pytest.mark.parametrize("lowering", ["dense", "compact"])
def test_unbatched_input_verifies(tmp_path, lowering):
    """The reference model verify builds loads and runs for an input without a batch axis
    (its first axis, 3 colours, is no batch)."""
    src, dst = tmp_path / "stem.onnx", tmp_path / "stem_kse.onnx"
    onnx.save(detector_stem(), src)
    optimize(src, dst, lower_options=LowerOptions(lowering))
    result = verify(src, dst)
    assert result.exact and result.exactness[0].rel_error <= 1e-4, result.summary()


def test_unbatched_input_is_refitted_and_verifies(tmp_path):
    """--calibration on the same export: the images, given batched, are fed one at a time
    through its preprocessing (a Resize to sizes read from a Shape of one image, Gather,
    Pad, Unsqueeze, a Concat and a Split on the batch axis of 1); the refit lowers the
    compressed conv's error and the output verifies (issue #30, SSDlite320)."""
    src, dst = tmp_path / "stem.onnx", tmp_path / "stem_refit.onnx"
    onnx.save(detector_stem(), src)
    images = tmp_path / "images.npz"
    np.savez(images, x=photo_batch((20, 3, 12, 12), seed=2))
    report = optimize(src, dst, lower_options=LowerOptions("compact"),
                      calibration=CalibrationOptions(str(images)), refit=RefitOptions("act"),
                      log=lambda line: None)
    layer, = report.extra["refit"]["layers"]
    assert layer["error_after"] < layer["error_before"]
    assert report.extra["accuracy"]["images"] == 20
    result = verify(src, dst)
    assert result.exact and result.exactness[0].rel_error <= 1e-4, result.summary()


def test_a_reference_that_cannot_load_is_blamed_on_kse_onnx(tmp_path, capsys, monkeypatch):
    src, dst = tmp_path / "stem.onnx", tmp_path / "stem_kse.onnx"
    onnx.save(detector_stem(), src)
    optimize(src, dst, lower_options=LowerOptions("dense"))
    build = verify_module.reference_model

    def broken(*args, **kwargs):
        model = build(*args, **kwargs)
        model.graph.node[0].input[0] = "no_such_tensor"
        return model

    monkeypatch.setattr(verify_module, "reference_model", broken)
    assert main(["verify", str(src), str(dst)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "kse-onnx's reference model" in err
    assert "kse-onnx bug" in err and f"although {src} loads" in err


def pruned_producer_chain() -> onnx.ModelProto:
    """stem, then conv A 16->36, conv B 36->36 and conv C 36->24: six input channels of B
    and of C are near zero, so KSE prunes them and A and B, producers of compressed
    Convs, keep 32 of their 36 filters (align 8), as MobileNetV2's 1x1 convs keep 304
    of 320."""
    b = GraphBuilder(3, 8)
    x = b.relu(b.conv(b.input.name, 3, 16))
    for c_in, c_out in ((16, 36), (36, 36), (36, 24)):
        x = b.relu(b.conv(x, c_in, c_out))
    for init in b.inits:
        if init.name in ("conv5.weight", "conv7.weight"):
            w = numpy_helper.to_array(init).copy()
            w[:, :6] *= 0.01
            init.CopyFrom(numpy_helper.from_array(w, init.name))
    return b.model(b.head(x, 24))


@pytest.mark.parametrize("lowering", ["dense", "compact", "factored"])
def test_refitted_pruned_producer_verifies(tmp_path, lowering):
    pytest.importorskip("torch")
    src, dst, images = tmp_path / "chain.onnx", tmp_path / "chain_kse.onnx", tmp_path / "x.npz"
    onnx.save(pruned_producer_chain(), src)
    np.savez(images, x=photo_batch((32, 3, 8, 8), seed=3))
    optimize(src, dst, KSEOptions(G=4), lower_options=LowerOptions(lowering),
             calibration=CalibrationOptions(str(images)),
             refit=RefitOptions("ls", refit_steps=20, refit_batch=16), log=lambda line: None)
    out = onnx.load(dst)
    weights = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    conv3 = next((n for n in out.graph.node if n.name == "conv3"), None)
    if lowering == "dense":  # conv3 itself is compressed and lost 4 filters
        assert weights[conv3.input[1]].shape == (32, 16, 3, 3)
    result = verify(src, dst)
    assert result.exact, result.summary()
    if lowering == "dense":  # and a broken kernel in the pruned producer is caught
        broken = weights[conv3.input[1]].copy()
        broken[0] += 1.0  # filter 0 no longer shares its kernels
        init = next(i for i in out.graph.initializer if i.name == conv3.input[1])
        init.CopyFrom(numpy_helper.from_array(broken, init.name))
        onnx.save(out, dst)
        assert not verify(src, dst).exact
