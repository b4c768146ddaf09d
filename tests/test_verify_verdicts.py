"""What verify's verdict means when exactness alone cannot tell: a reference that is
itself non-finite (NaN or Inf weights), and an INT8 output (judged against its float
counterpart, failing on a collapse)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from graphs import photo_batch, residual_net
from kse_onnx.cli import main
from kse_onnx.runtime.checks import INT8_COLLAPSE_REL_ERROR, collapse
from kse_onnx.runtime.compare import Comparison, compare
from kse_onnx.verify import VerifyResult, verify
from optimizing import optimize_cli


def _with_weight(model: onnx.ModelProto, name: str, change) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    init = next(i for i in out.graph.initializer if i.name == name)
    values = numpy_helper.to_array(init).copy()
    change(values)
    init.CopyFrom(numpy_helper.from_array(values, name))
    return out


def _classifier_weight(model) -> str:
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    return gemm.input[1]


# ---- non-finite references


def test_same_non_finite_outputs_are_compared_where_finite(tmp_path, capsys):
    """A NaN in one row of the classifier: that logit is NaN in the original as in the
    optimized model (not the rewrite's fault); the other logits are checked, and the
    report says the original is non-finite too."""
    model = residual_net(16)
    model = _with_weight(model, _classifier_weight(model), lambda w: w.__setitem__(3, np.nan))
    src, dst = optimize_cli(tmp_path, model)
    capsys.readouterr()
    assert main(["verify", str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    assert "the original with W_hat is non-finite too (2 of 20 values" in out
    assert "the original is non-finite too" in out and "PASS" in out
    result = verify(src, dst)
    assert result.exactness[0].rel_error < 1e-5 and result.exactness[0].top1_agreement is None


def test_a_wholly_non_finite_original_is_a_failure_that_names_it(tmp_path, capsys):
    """An Inf bias in the stem (a first conv, left alone): NaN everywhere after the next
    conv. Nothing could be compared, so no PASS."""
    model = residual_net(16)
    model = _with_weight(model, "conv1.bias", lambda b: b.__setitem__(0, np.inf))
    src, dst = optimize_cli(tmp_path, model)
    capsys.readouterr()
    assert main(["verify", str(src), str(dst)]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("FAIL") and "the original is non-finite on these inputs" in last


@pytest.mark.parametrize("optimized, reference, words", [
    ([np.nan, 1.0], [0.0, 1.0], "of the optimized model has non-finite values where the "
                                "original's are finite"),
    ([0.0, 1.0], [np.inf, 1.0], "of the original has non-finite values where the optimized"),
    ([np.inf, 1.0], [np.nan, 1.0], "different non-finite values"),
    ([-np.inf, 1.0], [np.inf, 1.0], "different non-finite values"),
])
def test_non_finite_values_the_reference_lacks_fail(optimized, reference, words):
    c = compare("random", [np.array([optimized])], [np.array([reference])], "original")
    assert c.problem and words in c.problem
    assert "FAIL" in VerifyResult(1e-4, exactness=[c]).summary()


def test_same_non_finite_values_pass_with_a_note():
    a = np.array([[np.nan, 1.0, -np.inf, 2.0]])
    c = compare("random", [a], [a + np.array([[0, 1e-9, 0, 0]])], "original")
    assert c.problem is None and c.rel_error < 1e-8 and "2 of 4 values" in c.note


# ---- INT8 outputs


def test_collapse_threshold():
    assert INT8_COLLAPSE_REL_ERROR == 1.0
    assert collapse(0.02, 1.0, 10) is None
    assert "relative error" in collapse(1.0, 1.0, 10)
    assert "relative error" in collapse(float("nan"), None, None)
    assert "chance level" in collapse(0.02, 0.1, 10)
    assert collapse(0.5, 0.5, 10) is None and collapse(0.5, None, None) is None
    for rel, agree in ((1.5, 0.9), (0.1, 0.0)):
        c = Comparison("random", rel, 1.0, agree, classes=10, reference="original with W_hat")
        summary = VerifyResult(1e-4, int8=[c], quantized=True).summary()
        assert summary.splitlines()[-1].startswith("FAIL: random: INT8 output collapsed")


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("int8_verdict")
    src, dst, images = tmp / "in.onnx", tmp / "int8.onnx", tmp / "x.npz"
    onnx.save(residual_net(16, hw=8), src)
    np.savez(images, x=photo_batch((32, 3, 8, 8), seed=1))
    assert main(["optimize", str(src), str(dst), "--lowering", "compact", "--quantize",
                 "int8-static", "--calibration", str(images), "--refit", "none"]) == 0
    return src, dst


def test_int8_pass_reports_its_error_against_the_float_counterpart(int8_model, capsys):
    src, dst = int8_model
    capsys.readouterr()
    assert main(["verify", str(src), str(dst), "--batch", "8"]) == 0
    out = capsys.readouterr().out
    assert "INT8 error (optimized vs original with W_hat):" in out
    assert out.strip().splitlines()[-1].startswith(
        "PASS: INT8 output holds against the original with W_hat (random: relative error")
    assert verify(src, dst, batch=8).int8[0].rel_error < 0.2  # measured: 0.02 on photos


def test_collapsed_int8_output_fails(int8_model, tmp_path, capsys):
    """The INT8 model with its logits negated: every top-1 differs, relative error 2."""
    src, dst = int8_model
    model = onnx.load(dst)
    name = model.graph.output[0].name
    producer = next(n for n in model.graph.node if name in n.output)
    producer.output[list(producer.output).index(name)] = f"{name}_before"
    model.graph.node.append(helper.make_node("Neg", [f"{name}_before"], [name]))
    bad = tmp_path / "collapsed.onnx"
    onnx.save(model, bad)
    capsys.readouterr()
    assert main(["verify", str(src), str(bad), "--batch", "8"]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("FAIL: random: INT8 output collapsed against the original with "
                           "W_hat: relative error 1.9") and ">= 1" in last


def test_a_flattened_channel_is_a_collapse():
    """Pixel boxes beside [0, 1] scores in one output: the scores flattened to zero move
    the whole error by < 1 % but leave their channels at error 1, a collapse; a channel
    the reference leaves at zero is not judged."""
    rng = np.random.default_rng(0)
    ref = np.concatenate([rng.uniform(0, 640, (8, 4, 20)), rng.uniform(0, 0.06, (8, 4, 20))],
                         1).astype(np.float32)
    flat = ref.copy()
    flat[:, 4:] = 0
    c = compare("random", [flat], [ref], "original with W_hat")
    assert c.rel_error < 0.01 and c.worst_channel[0] == 0 and c.worst_channel[1] >= 4
    assert c.worst_channel[2] == pytest.approx(1.0)
    why = collapse(c.rel_error, c.top1_agreement, c.classes, c.worst_channel)
    assert why.startswith(f"channel {c.worst_channel[1]} of output 0 has relative error 1")
    summary = VerifyResult(1e-4, int8=[c], quantized=True).summary()
    assert summary.splitlines()[-1].startswith("FAIL: random: INT8 output collapsed")
    dead = ref.copy()
    dead[:, 4:] = 0  # the reference's own scores at zero: nothing to lose there
    near = dead.copy()
    near[:, 4:] = 1e-3
    c = compare("random", [near], [dead], "original")
    assert c.worst_channel[1] < 4 and collapse(c.rel_error, None, None, c.worst_channel) is None
    noisy = ref * 1.05
    c = compare("random", [noisy], [ref], "original")
    assert c.worst_channel[2] == pytest.approx(0.05, rel=1e-4)
    assert collapse(c.rel_error, None, None, c.worst_channel) is None
