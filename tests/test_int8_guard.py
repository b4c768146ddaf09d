"""INT8 under the accuracy guard: the per-slice drop sees class scores flattened beside
pixel coordinates, the probes rank the nodes that flatten them, and ``--quantize
int8-static --max-drop D`` leaves those nodes float until the drop is within D."""

from __future__ import annotations

import math

import numpy as np
import pytest

from graphs import conv_stack, photo_batch, pixel_score_detector
from kse_onnx.api import optimize, optimize_model, save
from kse_onnx.errors import ModelError
from kse_onnx.graph.export import settings_of
from kse_onnx.graph.settings import RecordedSettings
from kse_onnx.guard.int8 import rank_nodes
from kse_onnx.guard.measure import drop, measure, outputs
from kse_onnx.options import (
    CalibrationOptions,
    GuardOptions,
    LowerOptions,
    ProgressOptions,
    QuantizeOptions,
    SelectOptions,
)
from kse_onnx.quantize.probe import QdqIndex
from kse_onnx.quantize.ptq import expand_constants, quantize_int8
from kse_onnx.verify import verify

STATIC = QuantizeOptions(quantize="int8-static")
QUIET = ProgressOptions(quiet=True)
COMPACT = LowerOptions(lowering="compact")
NO_KSE = SelectOptions(skip=("*",))


@pytest.fixture(scope="module")
def detector():
    return pixel_score_detector()


@pytest.fixture(scope="module")
def images():
    return photo_batch((160, 3, 8, 8))


def test_slice_error_sees_flattened_scores():
    """Pixels 0..640 and scores near 0.03 in one output: scores set to zero move the
    whole relative error by < 1 % and the per-slice one to 50 % (4 of 8 channels)."""
    rng = np.random.default_rng(0)
    ref = np.concatenate([rng.uniform(0, 640, (16, 4, 20)), rng.uniform(0, 0.06, (16, 4, 20))],
                         1).astype(np.float32)
    flat = ref.copy()
    flat[:, 4:] = 0
    measured = drop([ref], [flat])
    assert measured.rel_error < 0.001
    assert measured.slice_error == pytest.approx(0.5)
    assert measured.points == pytest.approx(50.0) and measured.error == pytest.approx(0.5)
    same = drop([ref], [ref])
    assert same.points == 0 and same.slice_error == 0


def test_slice_error_zero_channel_and_non_finite():
    """An all-zero reference channel is measured against a floor (no division by zero);
    a NaN output is an infinite drop."""
    ref = np.ones((4, 3, 5), np.float32)
    ref[:, 1] = 0
    got = ref.copy()
    got[:, 1] = 1e-3
    assert math.isfinite(drop([ref], [got]).points)
    got[0, 0, 0] = np.nan
    nan = drop([ref], [got])
    assert nan.points == math.inf and nan.error == math.inf


def test_logit_drop_unchanged():
    """Logits keep the top-1 agreement; their error is the whole relative error."""
    ref = np.eye(10, dtype=np.float32)
    measured = drop([ref], [ref * 1.1])
    assert measured.measure == "top-1 agreement" and measured.points == 0
    assert measured.error == pytest.approx(0.1)


def test_onnxruntime_static_int8_flattens_the_scores(detector, images):
    """The default static INT8 (one uint8 range for the Concat of pixels and scores)
    flattens every score to 0; the whole relative error stays below 1 %."""
    q, _ = quantize_int8(detector, "int8-static", set(), images[:128], share=False)
    ref, got = outputs(detector, images[128:]), outputs(q, images[128:])
    assert (ref[0][:, 4:] > 0.25).sum() > 20
    assert np.all(got[0][:, 4:] == 0)
    measured = drop(ref, got)
    assert measured.rel_error < 0.01 and measured.points > 40


def test_probe_bypasses_exactly(detector, images):
    """Rounding next to no node is the float model; next to every node, the QDQ model."""
    q, _ = quantize_int8(detector, "int8-static", set(), images[:128], share=False)
    index = QdqIndex.of(q, expand_constants(detector))
    x = images[128:]
    ref, qdq = outputs(detector, x)[0], outputs(q, x)[0]
    none = outputs(index.alone(set()), x)[0]
    assert np.abs(none - ref).max() <= 1e-6 * np.abs(ref).max()
    assert np.array_equal(outputs(index.alone(set(index.nodes())), x)[0], qdq)


def test_probe_puts_back_absorbed_relu(images):
    """The quantizer folds a Relu into the rounding after it: bypassed, it is put back."""
    model = conv_stack(widths=(3, 8, 8))
    q, _ = quantize_int8(model, "int8-static", set(), images[:64], share=False)
    index = QdqIndex.of(q, expand_constants(model))
    assert index.absorbed
    ref, none = outputs(model, images[64:96])[0], outputs(index.alone(set()), images[64:96])[0]
    assert np.abs(none - ref).max() <= 1e-4 * np.abs(ref).max()


def test_rank_puts_the_concat_first(detector, images):
    ranked = rank_nodes(detector, STATIC, images[:128], images[128:],
                        outputs(detector, images[128:]))
    top = {name for name, _ in ranked[:2]}
    assert "concat23" in top or "reshape25" in top, ranked
    assert ranked[0][1] > 10 * ranked[-1][1]


def test_max_drop_reverts_the_worst_nodes(detector, images, tmp_path):
    """int8-static within D = 5 (every conv skipped by KSE, to test the INT8 step
    quickly): the nodes flattening the scores are left float, the written model's drop
    (held-out images, against the original) is within D and recorded with the float
    nodes, measured on the images kept back to confirm; the scores survive."""
    built = optimize_model(detector, calibration=images, quantize=STATIC, lower_options=COMPACT,
                           select=NO_KSE, guard=GuardOptions(max_drop=5.0), progress=QUIET)
    info = built.report.extra["int8"]
    guard = info["max_drop"]
    assert info["float_nodes"] and guard["tried"][0]["drop"]["points"] > 40
    assert guard["drop"]["points"] <= 5.0 and guard["measured_on"].endswith("held-out "
                                                                            "calibration images")
    assert guard["confirmed_on"] == "40 held-out calibration images kept back to confirm the choice"
    assert built.report.extra["accuracy"]["points"] == guard["drop"]["points"]
    assert f"--max-drop: {len(info['float_nodes'])} node(s) left float" in built.report.table()
    recorded = settings_of(built.model)
    assert recorded.int8_float_nodes == info["float_nodes"]
    assert RecordedSettings.from_dict(recorded.to_dict()) == recorded
    held = images[-40:]  # half of the held-out half: kept back to confirm, seen by no choice
    again = measure(detector, built.model, held, source="held-out")
    assert again.points == pytest.approx(guard["drop"]["points"])
    got, ref = outputs(built.model, held)[0], outputs(detector, held)[0]
    assert (got[:, 4:] > 0.25).sum() >= 0.8 * (ref[:, 4:] > 0.25).sum()
    src, out = tmp_path / "d.onnx", tmp_path / "int8.onnx"
    src.write_bytes(detector.SerializeToString())
    save(built, out)
    checked = verify(src, out, batch=8)
    assert checked.quantized and not checked.problems, checked.summary()


def test_max_drop_none_holds_writes_nothing(detector, images, tmp_path):
    """No INT8 model within D: one line naming the best drop reached; no file."""
    src, out = tmp_path / "d.onnx", tmp_path / "out.onnx"
    src.write_bytes(detector.SerializeToString())
    np.savez(tmp_path / "cal.npz", x=images)
    with pytest.raises(ModelError) as err:
        optimize(src, out, quantize=STATIC, lower_options=COMPACT, progress=QUIET, select=NO_KSE,
                 calibration=CalibrationOptions(calibration=str(tmp_path / "cal.npz")),
                 guard=GuardOptions(max_drop=0.001))
    text = str(err.value)
    assert "\n" not in text and "best drop reached" in text and "nothing written" in text
    assert not out.exists()


def test_strict_catches_the_collapse_without_max_drop(detector, images):
    """Without --max-drop the written INT8 model's error uses the same per-slice measure:
    a warning, and under --strict an error."""
    built = optimize_model(detector, calibration=images, quantize=STATIC, lower_options=COMPACT,
                           select=NO_KSE, progress=QUIET)
    accuracy = built.report.extra["accuracy"]
    assert accuracy["over_threshold"] and accuracy["slice_error"] > 0.4
    assert any("--warn-error" in w for w in built.report.extra["warnings"])
    with pytest.raises(ModelError, match="--strict"):
        optimize_model(detector, calibration=images, quantize=STATIC, lower_options=COMPACT,
                       select=NO_KSE, progress=QUIET, guard=GuardOptions(strict=True))


def test_verify_fails_the_flattened_scores(detector, images, tmp_path):
    """verify judges an INT8 output channel by channel too: our static INT8 of the
    detector without the guard (scores flattened) fails it, naming a score channel."""
    built = optimize_model(detector, calibration=images, quantize=STATIC, lower_options=COMPACT,
                           select=NO_KSE, progress=QUIET)
    assert np.all(outputs(built.model, images[:16])[0][:, 4:] == 0)
    src, out = tmp_path / "d.onnx", tmp_path / "int8.onnx"
    src.write_bytes(detector.SerializeToString())
    save(built, out)
    checked = verify(src, out, batch=8)
    assert checked.quantized
    assert any("INT8 output collapsed" in p and "channel" in p for p in checked.problems), \
        checked.summary()
