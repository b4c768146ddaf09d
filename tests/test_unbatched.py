"""Models whose input takes one image without a batch axis (torchvision's detectors):
the refit feeds the calibration images one at a time, the drop is measured image by
image, and what cannot be done so is refused in one line (docs/refit.md, "Models whose
input has no batch axis")."""

from __future__ import annotations

import math
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from graphs import photo_batch, unbatched_detector
from kse_onnx.api import optimize
from kse_onnx.cli import main
from kse_onnx.errors import ModelError, OptionError
from kse_onnx.guard.frontier import before_data_dependent
from kse_onnx.guard.measure import BEFORE, PerImage, drop, measure
from kse_onnx.options import (
    BudgetOptions,
    CalibrationOptions,
    KSEOptions,
    LowerOptions,
    QuantizeOptions,
    RefitOptions,
)
from kse_onnx.verify import verify

pytest.importorskip("torch")

HW = 16


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """(folder, the unbatched detector, its batched twin, calibration images .npz)."""
    tmp = tmp_path_factory.mktemp("unbatched")
    one, twin = tmp / "one.onnx", tmp / "twin.onnx"
    onnx.save(unbatched_detector(HW), one)
    onnx.save(unbatched_detector(HW, batched=True), twin)
    calibration = tmp / "images.npz"
    np.savez(calibration, x=photo_batch((24, 3, HW, HW), seed=3))
    return tmp, one, twin, calibration


def _refit(src, out, calibration, mode="act", **extra):
    return optimize(src, out, KSEOptions(G=4), lower_options=LowerOptions("compact"),
                    calibration=CalibrationOptions(str(calibration)),
                    refit=RefitOptions(mode), log=lambda line: None, **extra)


def _heads(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    """The unbatched detector's box and score heads (the tensors before its NMS) over
    the images ``x``, run one image at a time and joined along the batch axis."""
    from kse_onnx.finetune.losses import with_outputs

    reshapes = [n for n in model.graph.node if n.op_type == "Reshape"]
    sigmoid = next(n for n in model.graph.node if n.op_type == "Sigmoid")
    tapped = with_outputs(model, [reshapes[0].input[0], sigmoid.output[0]])
    sess = ort.InferenceSession(tapped.SerializeToString(), providers=["CPUExecutionProvider"])
    runs = [sess.run(None, {"image": image})[2:] for image in x]
    return [np.concatenate(parts) for parts in zip(*runs, strict=True)]


def test_an_unbatched_detector_is_refitted_one_image_at_a_time(detector):
    """Input [3, H, W] -> Sub, Div, Unsqueeze, Gather, Unsqueeze -> convs -> NMS (outputs
    of a length that differs per image; NonMaxSuppression is not in the refit's op
    table, so the walk must stop before it). The refit fits the same layers as on the
    batched twin of the same weights and gives the same heads; the output verifies, and
    the drop is measured on every image."""
    tmp, one, twin, calibration = detector
    x = np.load(calibration)["x"]
    lengths = {len(o[0]) for o in
               (ort.InferenceSession(str(one), providers=["CPUExecutionProvider"]).run(
                   None, {"image": image}) for image in x)}
    assert len(lengths) > 1  # the outputs' length does depend on the image
    report = _refit(one, tmp / "one_refit.onnx", calibration)
    twin_report = _refit(twin, tmp / "twin_refit.onnx", calibration)
    layers, twin_layers = report.extra["refit"]["layers"], twin_report.extra["refit"]["layers"]
    assert len(layers) == len(twin_layers) == 2
    for a, b in zip(layers, twin_layers, strict=True):
        assert a["error_after"] < a["error_before"]
        assert a["error_after"] == pytest.approx(b["error_after"], rel=1e-3)
        assert a["held_error_after"] == pytest.approx(b["held_error_after"], rel=1e-3)
    heads = _heads(onnx.load(tmp / "one_refit.onnx"), x)
    twin_sess = ort.InferenceSession(str(tmp / "twin_refit.onnx"),
                                     providers=["CPUExecutionProvider"])
    for got, want in zip(heads, twin_sess.run(None, {"x": x}), strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())
    accuracy, twin_accuracy = report.extra["accuracy"], twin_report.extra["accuracy"]
    assert accuracy["images"] == len(x) and accuracy["measure"] == "relative error"
    # measured on the heads (before the NMS, each read twice), as the twin's outputs are
    assert accuracy["compared"] == BEFORE and accuracy["mismatched"] == 0
    assert accuracy["rel_error"] == pytest.approx(twin_accuracy["rel_error"], rel=1e-3)
    assert 0 < accuracy["rel_error"] < 1
    result = verify(one, tmp / "one_refit.onnx")
    assert result.exact
    gate = ["verify", str(one), str(tmp / "one_refit.onnx"), "--inputs", str(calibration)]
    points = 100 * accuracy["rel_error"]
    assert main([*gate, "--max-drop", f"{points + 0.1:.2f}"]) == 0
    assert main([*gate, "--max-drop", f"{points - 0.1:.2f}"]) == 1


def test_the_drop_of_outputs_of_another_shape_is_measured_never_passed():
    """Per image: outputs of the same shapes add their squared error; outputs of another
    shape add all of both (that image's relative error is at least 1); non-finite is
    an infinite drop."""
    ref = PerImage([[np.ones((2, 4), np.float32)], [np.ones((3, 4), np.float32)]])
    same = drop(ref, PerImage([[np.ones((2, 4), np.float32)], [np.ones((3, 4), np.float32)]]))
    assert same.points == 0 and same.mismatched == 0
    other = drop(ref, PerImage([[np.ones((2, 4), np.float32)], [np.ones((1, 4), np.float32)]]))
    assert other.mismatched == 1 and other.images == 2
    assert other.rel_error == pytest.approx(math.sqrt((12 + 4) / (8 + 12)))
    assert "another shape on 1 of 2 images" in other.line()
    fewer = drop(ref, PerImage([[np.ones((2, 4), np.float32)], []]))  # a tensor missing
    assert fewer.mismatched == 1 and fewer.rel_error == pytest.approx(math.sqrt(12 / 20))
    nan = drop(ref, PerImage([[np.full((2, 4), np.nan, np.float32)],
                              [np.ones((3, 4), np.float32)]]))
    assert nan.points == math.inf
    assert "mismatched" not in drop([np.ones((2, 3))], [np.ones((2, 3))]).to_dict()


def test_measure_runs_an_unbatched_model_per_image_before_its_nms(detector):
    """The tensors compared are those the post-processing reads (the NMS's boxes and
    scores, and the two the Gathers of its picks read); a model without such nodes is
    compared on its outputs."""
    _, one, twin, calibration = detector
    model = onnx.load(one)
    nodes = {o: n for n in model.graph.node for o in n.output}
    found = before_data_dependent(model)
    assert sorted(nodes[t].op_type for t in found) == ["Reshape", "Reshape", "Squeeze",
                                                       "Transpose"]
    assert found == sorted(found)  # by name: the same list from a reordered rewrite
    assert before_data_dependent(onnx.load(twin)) == []
    x = np.load(calibration)["x"][:5]
    same = measure(model, model, x)
    assert same.points == 0 and same.images == 5 and same.mismatched == 0
    assert same.compared == BEFORE and BEFORE in same.line()


@pytest.mark.parametrize("mode, words", [
    ("distill", "distill needs a model whose input has a batch axis"),
    ("block", "block needs a model whose batch is not fixed (its input takes one image "
              "without a batch axis)"),
])
def test_what_needs_batches_is_refused_in_one_line(detector, mode, words):
    tmp, one, _, calibration = detector
    with pytest.raises(OptionError, match=re.escape(words)) as info:
        _refit(one, tmp / f"{mode}.onnx", calibration, mode)
    assert "\n" not in str(info.value) and not (tmp / f"{mode}.onnx").exists()


def test_int8_static_is_refused_before_any_work(detector):
    tmp, one, _, calibration = detector
    with pytest.raises(ModelError, match="int8-static: the model's input takes one image "
                                         "without a batch axis") as info:
        _refit(one, tmp / "int8.onnx", calibration, quantize=QuantizeOptions("int8-static"))
    assert "\n" not in str(info.value)


def test_sensitivity_budget_is_refused_in_one_line(detector):
    """``--budget-importance sensitivity`` compares each probe's outputs with the
    original's value by value: refused, where it used to fail in onnxruntime on the rank
    of the input (the indicator budget takes such a model)."""
    tmp, one, _, calibration = detector
    out = tmp / "sensitivity.onnx"
    with pytest.raises(OptionError, match=re.escape("--budget-importance: sensitivity "
                                                    "needs a model whose input has a batch "
                                                    "axis")) as info:
        optimize(one, out, KSEOptions(G=4), lower_options=LowerOptions("compact"),
                 calibration=CalibrationOptions(str(calibration)),
                 budget=BudgetOptions(target_latency=0.9, budget_importance="sensitivity"),
                 log=lambda line: None)
    assert "\n" not in str(info.value) and not out.exists()
