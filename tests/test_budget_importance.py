"""``--budget-importance sensitivity``: each span's cost measured on the calibration
images (one forward pass with the span cut by one step), checked against the original
with the same channels zeroed, the rescaled masses, and the option end to end."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from test_budget import macs_as_time, padded_resnet  # noqa: F401 (a fixture)

from graphs import photo_batch
from kse_onnx.api import optimize
from kse_onnx.budget import importance
from kse_onnx.budget.build import timing_model
from kse_onnx.budget.run import model_cuts
from kse_onnx.budget.search import keeps
from kse_onnx.cli import main
from kse_onnx.errors import OptionError
from kse_onnx.graph.groups import masked_model
from kse_onnx.options import (
    BudgetOptions,
    CalibrationOptions,
    KSEOptions,
    LowerOptions,
    RefitOptions,
    SelectOptions,
)
from kse_onnx.verify import verify

STEP = 4


def _probe(model):
    cuts = model_cuts(model, KSEOptions(G=4), SelectOptions())

    def build(counts):
        return timing_model(model, SelectOptions(), LowerOptions("compact"),
                            *keeps(cuts, counts)).SerializeToString()

    return cuts, build


def _zeroed(model, cuts, name):
    """The original with span ``name``'s first step removed by zeroing: a stream's classes
    masked (every producer's filter and bias 0), a layer's input columns set to 0."""
    counts = {s.name: s.size for s in cuts.spans}
    span = next(s for s in cuts.spans if s.name == name)
    counts[name] = span.size - STEP
    layers, streams = keeps(cuts, counts)
    if span.group is not None:
        return masked_model(model, streams)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    node = next(n for n in out.graph.node if n.name == name)
    init = next(i for i in out.graph.initializer if i.name == node.input[1])
    w = onnx.numpy_helper.to_array(init).copy()
    w[:, np.setdiff1d(np.arange(w.shape[1]), layers[name])] = 0
    init.CopyFrom(onnx.numpy_helper.from_array(w, init.name))
    return out


def test_sensitivity_is_the_output_error_of_one_step():
    """Each span's error equals that of the original with the same ids zeroed (a stream
    masked through its Pad and classifier, a layer's input columns), computed apart."""
    model = padded_resnet(width=16, hw=8)
    x = photo_batch((40, 3, 8, 8), seed=2)
    cuts, build = _probe(model)
    errors = importance.sensitivities(cuts, model, x, STEP, build, quiet=True)
    assert set(errors) == {s.name for s in cuts.spans}
    reference = importance.model_outputs(model, x, 1)
    for span in cuts.spans:
        expect = importance.relative_error(
            reference, importance.model_outputs(_zeroed(model, cuts, span.name), x, 1))
        assert np.isfinite(expect) and expect > 0
        assert errors[span.name] == pytest.approx(expect, rel=1e-4), span.name


def test_rescaled_masses_keep_the_order_and_weigh_the_error():
    model = padded_resnet(width=16, hw=8)
    cuts, _ = _probe(model)
    errors = {s.name: 0.1 * (i + 1) for i, s in enumerate(cuts.spans)}
    errors[cuts.spans[0].name] = float("inf")  # a probe that gave inf: capped
    scaled = importance.rescaled(cuts, errors, STEP)
    for before, after in zip(cuts.spans, scaled.spans, strict=True):
        assert np.array_equal(before.ids, after.ids)
        assert np.all(np.diff(after.mass) >= 0) and np.all(after.mass > 0)
        assert after.mass[:STEP].sum() == pytest.approx(min(errors[before.name],
                                                            importance.MAX_ERROR))
    assert importance.relative_error(np.ones(3), np.array([1.0, np.nan, 1.0])) == np.inf


def test_sensitivity_budget_end_to_end(tmp_path, macs_as_time):  # noqa: F811
    """The option runs the probes, records them, meets R, verifies exact after the refit,
    and replays byte for byte without calibration images."""
    src, out, again = tmp_path / "m.onnx", tmp_path / "b.onnx", tmp_path / "again.onnx"
    onnx.save(padded_resnet(width=16, hw=8), src)
    images = tmp_path / "cal.npz"
    np.savez(images, x=photo_batch((32, 3, 8, 8), seed=1))
    budget = BudgetOptions(0.6, budget_importance="sensitivity")
    report = optimize(src, out, KSEOptions(G=4), lower_options=LowerOptions("compact"),
                      budget=budget, calibration=CalibrationOptions(str(images)),
                      refit=RefitOptions("none"))
    found = report.extra["budget"]
    assert found["importance"] == "sensitivity"
    assert set(found["sensitivity"]) == set(found["kept_counts"])
    assert all(v >= 0 for v in found["sensitivity"].values())
    assert min(max(r["ratio"].values()) for r in found["measured"]) <= 0.6
    assert verify(src, out).exact
    # not recorded (the kept channels are): a budget model written before the option
    # existed reads and replays the same
    assert "budget_importance" not in report.settings and report.settings["budget_layers"]
    optimize(src, again, KSEOptions(G=4), budget=budget, refit=RefitOptions("none"),
             calibration=CalibrationOptions(str(images)),
             lower_options=LowerOptions("compact", choices=str(out)))
    assert again.read_bytes() == out.read_bytes()


def test_sensitivity_needs_calibration(tmp_path, capsys):
    src, out = tmp_path / "m.onnx", tmp_path / "b.onnx"
    onnx.save(padded_resnet(width=16, hw=8), src)
    with pytest.raises(OptionError, match="--budget-importance"):
        optimize(src, out, budget=BudgetOptions(0.6, budget_importance="sensitivity"),
                 lower_options=LowerOptions("compact"))
    code = main(["optimize", str(src), str(out), "--target-latency", "0.6",
                 "--budget-importance", "sensitivity"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--budget-importance" in err and len(err.splitlines()) == 1
    assert not out.exists()
    with pytest.raises(OptionError, match="--budget-importance"):
        BudgetOptions(0.6, budget_importance="magnitude")
