"""Target-driven settings: --target-macs / --target-size choose G and T."""

from __future__ import annotations

import onnx
import pytest

from graphs import residual_net
from kse_onnx.cli import main
from kse_onnx.options import TargetOptions
from optimizing import optimize_graph


@pytest.fixture()
def src(tmp_path):
    path = tmp_path / "in.onnx"
    onnx.save(residual_net(32, hw=16), path)
    return path


def test_target_macs_is_met_and_reported_exactly(src, tmp_path):
    report = optimize_graph(tmp_path, src, None, "compact",
                            target=TargetOptions(target_macs=0.6)).report
    target, totals = report.extra["target"], report.totals()
    reached = totals["macs_factored"] / totals["macs_before"]
    assert reached <= 0.6
    assert reached == pytest.approx(target["macs"], rel=1e-12)  # predicted == planned
    assert (report.settings["G"], report.settings["T"]) == (target["G"], target["T"])
    assert "target: multiply-adds <= 0.6" in report.table()


def test_looser_target_removes_less_indicator_mass(src, tmp_path):
    reports = [optimize_graph(tmp_path, src, None, "compact", dst=f"out_{t}.onnx",
                              target=TargetOptions(target_macs=t)).report
               for t in (0.4, 0.6, 0.9)]
    masses = [report.extra["target"]["removed_mass"] for report in reports]
    assert masses[0] >= masses[1] >= masses[2] and masses[0] > masses[2]


def test_target_size_prediction_matches_the_file(src, tmp_path):
    report = optimize_graph(tmp_path, src, None, "compact",
                            target=TargetOptions(target_size=0.5)).report
    target = report.extra["target"]
    assert target["predicted_file_size"] <= 0.5
    # the prediction ignores alignment channels and protobuf overhead: a few percent
    assert target["file_size"] == pytest.approx(target["predicted_file_size"], abs=0.05)


@pytest.mark.parametrize("argv, words", [
    (["--target-macs", "0.01"], "cannot be reached"),
    (["--target-macs", "1.5"], "--target-macs"),
    (["--target-size", "-0.2"], "--target-size"),
])
def test_bad_or_unreachable_target_is_a_usage_error(src, tmp_path, capsys, argv, words):
    dst = tmp_path / "out.onnx"
    assert main(["optimize", str(src), str(dst), "--lowering", "dense", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1 and not dst.exists()
