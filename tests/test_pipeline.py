"""The pipeline API (model in, model and report out; calibration as arrays or iterables),
the CLI as a thin layer over it, the error every optimize reports, --strict, --max-drop
and the verify --max-drop gate."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import kse_onnx
from graphs import folded_resnet, photo_batch
from kse_onnx.calibration import as_images
from kse_onnx.cli import main
from kse_onnx.errors import ModelError, OptionError
from kse_onnx.guard.measure import drop, outputs
from kse_onnx.options import GuardOptions, LowerOptions, RefitOptions
from kse_onnx.report import accuracy_lines

pytest.importorskip("torch")  # the refit
COMPACT = ["--lowering", "compact", "--quiet"]


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    src = tmp / "resnet.onnx"
    onnx.save(folded_resnet(width=8, hw=8), src)
    x = photo_batch((64, 3, 8, 8), seed=3)
    calibration = tmp / "calibration.npz"
    np.savez(calibration, x=x)
    return tmp, src, calibration, x


def test_api_bytes_equal_the_cli_bytes(resnet, tmp_path):
    _, src, calibration, x = resnet
    cli_out = tmp_path / "cli.onnx"
    assert main(["optimize", str(src), str(cli_out), "--calibration", str(calibration),
                 "--refit", "ls", *COMPACT]) == 0
    options = dict(lower_options=LowerOptions("compact"), refit=RefitOptions("ls"))
    for calibration_form in (x, ({"x": x[i:i + 16]} for i in range(0, 64, 16))):
        result = kse_onnx.optimize(onnx.load(src), calibration=calibration_form, **options)
        assert isinstance(result.model, onnx.ModelProto)
        api_out = tmp_path / "api.onnx"
        written = kse_onnx.save(result, api_out)
        assert api_out.read_bytes() == cli_out.read_bytes()
        assert written == result.report.file_size_after == api_out.stat().st_size
    model, report = result  # unpacks like a tuple
    assert report.to_dict()["schema_version"] == kse_onnx.REPORT_SCHEMA_VERSION
    assert report.extra["accuracy"]["source"].startswith("calibration images")


def test_calibration_forms_give_the_same_images(resnet):
    _, _, calibration, x = resnet
    from_path = as_images(str(calibration), count=50)
    assert np.array_equal(from_path, x[:50])
    assert np.array_equal(as_images(iter([x[:30], x[30:]]), count=50), x[:50])
    assert np.array_equal(as_images([{"x": x, "other": x}], input_name="x"), x)
    with pytest.raises(OptionError, match="no array for the model's input"):
        as_images([{"a": x, "b": x}], input_name="x")
    with pytest.raises(OptionError, match="NaN"):
        as_images(np.full((2, 3, 8, 8), np.nan))
    with pytest.raises(OptionError, match="expected a path"):
        as_images(3.5)


def test_only_the_loader_reads_image_files():
    """The refit, the budget, the quantizer and fine-tuning receive arrays (calibration
    images; fine-tuning's training images and labels): from the loader and the file
    reader behind it they import only a type and the label check, never a reader."""
    package = Path(kse_onnx.__file__).parent
    readers = {"kse_onnx.data", "kse_onnx.calibration"}
    allowed = {"TrainingData", "check_labels"}  # a NamedTuple; labels against classes
    taken = {}
    for unit in ("refit", "budget", "quantize", "finetune"):
        for path in sorted((package / unit).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom):
                    module = node.module or ""
                    if node.level:
                        base = f"kse_onnx.{unit}" if node.level == 1 else "kse_onnx"
                        module = f"{base}.{module}".rstrip(".")
                    names = {a.name for a in node.names}
                    if module == "kse_onnx":
                        assert not names & {"data", "calibration"}, path
                    if module in readers:
                        taken[path.name] = taken.get(path.name, set()) | names
    assert set().union(*taken.values()) <= allowed, taken
    assert taken.get("train.py") == allowed  # the check can see what it looks for


def test_a_model_proto_is_checked_like_a_file(resnet):
    _, src, _, _ = resnet
    model = onnx.load(src)
    model.opset_import[0].version = 9
    with pytest.raises(ModelError, match="opset 9"):
        kse_onnx.optimize(model)


def test_optimize_without_calibration_says_so(resnet, tmp_path, capsys):
    _, src, _, _ = resnet
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(src), str(out), *COMPACT]) == 0
    text = capsys.readouterr().out
    assert "measured against the original: drop" in text and "on 32 random inputs" in text
    assert "warning: pass unlabeled images with --calibration" in text


def test_strict_exits_1_and_writes_nothing(resnet, tmp_path, capsys):
    _, src, _, _ = resnet
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(src), str(out), *COMPACT, "--warn-error", "0.0001",
                 "--strict"]) == 1
    err = capsys.readouterr().err
    assert "--strict" in err and "nothing written" in err and len(err.splitlines()) == 1
    assert not out.exists()
    assert main(["optimize", str(src), str(out), *COMPACT, "--warn-error", "0.0001"]) == 0
    assert "warning: the compressed model's outputs differ" in capsys.readouterr().out


@pytest.mark.parametrize("flags, message", [
    (["--max-drop", "-1"], "--max-drop"), (["--max-drop", "101"], "--max-drop"),
    (["--max-drop", "nan"], "--max-drop"), (["--max-drop", "inf"], "--max-drop"),
    (["--validation", "v.npz"], "needs --max-drop"), (["--holdout", "1"], "--holdout"),
    (["--input-shape", "3,x"], "--input-shape"), (["--max-drop", "1"], "needs --calibration"),
])
def test_bad_guard_options_are_one_line_errors(resnet, tmp_path, capsys, flags, message):
    _, src, _, _ = resnet
    out = tmp_path / "out.onnx"
    code = main(["optimize", str(src), str(out), *COMPACT, *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_non_number_is_refused_by_the_parser(resnet, tmp_path, capsys):
    _, src, _, _ = resnet
    with pytest.raises(SystemExit) as exc:
        main(["optimize", str(src), str(tmp_path / "out.onnx"), "--max-drop", "abc"])
    assert exc.value.code == 2
    assert "--max-drop: invalid float value" in capsys.readouterr().err.splitlines()[-1]


def test_bad_validation_file_is_a_one_line_error(resnet, tmp_path, capsys):
    _, src, calibration, x = resnet
    out = tmp_path / "out.onnx"
    unlabeled = tmp_path / "unlabeled.npz"
    np.savez(unlabeled, x=x)
    for validation, message in ((tmp_path / "missing.npz", "missing.npz"),
                                (unlabeled, "holds no labels")):
        code = main(["optimize", str(src), str(out), *COMPACT, "--calibration",
                     str(calibration), "--max-drop", "1", "--validation", str(validation)])
        err = capsys.readouterr().err
        assert code in (1, 2) and message in err and len(err.strip().splitlines()) == 1
        assert not out.exists()


def test_max_drop_holds_on_the_held_out_images(resnet):
    _, src, _, _ = resnet
    original = onnx.load(src)
    x = photo_batch((256, 3, 8, 8), seed=3)
    guard = GuardOptions(max_drop=25.0, holdout=0.5)  # out of reach with every layer compressed
    result = kse_onnx.optimize(original, calibration=x, guard=guard,
                               lower_options=LowerOptions("compact"), refit=RefitOptions("none"))
    accuracy = result.report.extra["accuracy"]
    # the reported drop is the one on the last 64 images, which neither the refit (the
    # first 128) nor the choice (images 128-191) saw
    assert accuracy["source"].endswith("kept back to confirm the choice")
    assert accuracy["images"] == 64
    again = drop(outputs(original, x[192:]), outputs(result.model, x[192:]))
    assert again.points == pytest.approx(accuracy["points"]) and again.points <= 25.0
    search = result.report.extra["max_drop_search"]
    assert search["refit_images"] == 128 and search["chosen"]["drop"]["points"] <= 25.0
    assert search["chosen"]["drop"]["images"] == 64 and search["confirmations"] >= 1
    assert search["chosen"]["confirmed_drop"]["points"] == accuracy["points"]
    chose = drop(outputs(original, x[128:192]), outputs(result.model, x[128:192]))
    assert chose.points == pytest.approx(search["chosen"]["drop"]["points"])
    assert len(search["tried"]) > 1 and search["tried"][0]["drop"]["points"] > 25.0
    chosen = search["chosen"]
    left_whole, gentler = chosen["layers_left_whole"], chosen["layer_gt"]
    assert left_whole and gentler  # a layer at a gentler G/T, not only whole ones
    settings = result.report.settings
    assert len(settings["skip"]) == len(left_whole)
    assert len(settings["layer_gt"]) == len(gentler)
    layers = {layer.name: layer for layer in result.report.layers}
    assert all(layers[name].status == "skipped" for name in left_whole)
    for name, (g, _) in gentler.items():  # the layer's own G: its count of levels
        assert layers[name].status == "compressed"
        assert len(layers[name].channels_per_level) == g
    lines = accuracy_lines(result.report.extra)
    assert f"{len(gentler)} layer(s) at their own G/T" in lines[0]
    assert "confirmed on 64 held-out calibration images kept back" in lines[1]
    # the smallest file among the candidates that held the drop
    held = [t["file_size"] for t in search["tried"] if t["drop"]["points"] <= 25.0]
    assert result.report.file_size_after == min(held)


def test_max_drop_out_of_reach_writes_nothing(resnet, tmp_path, capsys, monkeypatch):
    from kse_onnx.guard import layerwise

    _, src, calibration, _ = resnet
    monkeypatch.setattr(layerwise, "LADDER", ((5, 1),))
    out = tmp_path / "out.onnx"
    code = main(["optimize", str(src), str(out), *COMPACT, "--calibration", str(calibration),
                 "--refit", "none", "--max-drop", "0.001", "--holdout", "0.5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and not out.exists()
    assert "no setting holds the drop" in err[-1] and "best drop reached was" in err[-1]


def test_verify_max_drop_gate(resnet, tmp_path, capsys):
    _, src, calibration, _ = resnet
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(src), str(out), *COMPACT]) == 0
    capsys.readouterr()
    assert main(["verify", str(src), str(out), "--max-drop", "100", "--inputs",
                 str(calibration)]) == 0
    assert "PASS: drop" in capsys.readouterr().out
    assert main(["verify", str(src), str(out), "--max-drop", "0.001", "--inputs",
                 str(calibration)]) == 1
    assert "FAIL: drop" in capsys.readouterr().out
    assert main(["verify", str(src), str(out), "--max-drop", "1"]) == 2
    assert "needs --inputs" in capsys.readouterr().err


def test_macs_of_symbolic_sizes_come_from_the_calibration_images(resnet, tmp_path, capsys):
    tmp, _, _, x = resnet
    model = folded_resnet(width=8, hw=8)
    for dim, name in zip(model.graph.input[0].type.tensor_type.shape.dim[2:], "hw",
                         strict=True):
        dim.dim_param = name
    result = kse_onnx.optimize(model, lower_options=LowerOptions("compact"), calibration=x,
                               refit=RefitOptions("none"))
    assert result.report.totals()["macs_before"] is not None
    assert result.report.extra["graph_counts"]["after"]["macs"] is not None
    plain = kse_onnx.optimize(model, lower_options=LowerOptions("compact"))
    assert plain.report.totals()["macs_before"] is None  # no size known: not counted
    shaped = kse_onnx.optimize(model, lower_options=LowerOptions("compact"),
                               guard=GuardOptions(input_shape="3,8,8"))
    assert shaped.report.totals() == result.report.totals()
    assert "?" not in shaped.report.table().split("conv multiply-adds")[1].splitlines()[0]
    path = tmp / "symbolic.onnx"
    onnx.save(model, path)
    assert main(["optimize", str(path), str(tmp_path / "o.onnx"), *COMPACT,
                 "--input-shape", "3,8,8"]) == 0
    json.dumps(shaped.report.to_dict())


def test_the_pipelines_page_commands_run(tmp_path, monkeypatch, capsys):
    """docs/pipelines.md's command lines, run in a folder with the demo model and random
    images: optimize writes, verify's gate prints its verdict and exits 0 or 1 by it."""
    import shlex
    import shutil
    from pathlib import Path

    from test_docs import ROOT, blocks, command_lines

    (tmp_path / "models").mkdir()
    shutil.copy(ROOT / "models/small_cnn.onnx", tmp_path / "models/small_cnn.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calibration.npz", x=rng.random((128, 1, 28, 28), dtype=np.float32))
    np.savez(tmp_path / "held_out.npz", x=rng.random((32, 1, 28, 28), dtype=np.float32))
    monkeypatch.chdir(tmp_path)
    lines = [line for _, block in blocks(Path(ROOT / "docs/pipelines.md").read_text(), "sh")
             for line in command_lines(block)]
    assert [shlex.split(line)[1] for line in lines] == ["optimize", "verify"]
    for line in lines:
        args = shlex.split(line)[1:]
        code = main(args + (["--refit", "none"] if args[0] == "optimize" else []))
        out, err = capsys.readouterr()
        if args[0] == "optimize":
            assert code == 0 and "max-drop search" in err and (tmp_path / "small_kse.onnx").exists()
        else:
            verdict = out.strip().splitlines()[-1]
            assert verdict.startswith("PASS: drop" if code == 0 else "FAIL: drop")


@pytest.mark.slow
def test_the_olive_workflow_runs_end_to_end(tmp_path):
    """``python -m tools.scripts.olive_workflow`` with the real olive-ai: KSE then
    onnxruntime's static INT8 on the Fashion-MNIST ResNet-20 (minutes)."""
    import subprocess
    import sys

    from test_docs import ROOT

    pytest.importorskip("olive")
    from kse_onnx.data import FASHION_MNIST

    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("needs dataset-fashion-mnist")
    done = subprocess.run([sys.executable, "-m", "tools.scripts.olive_workflow", "--images",
                           "128", "--work", str(tmp_path)], capture_output=True, text=True,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("olive output"))
    assert "QuantizeLinear" in line and "test accuracy 0.9" in line
    assert list((tmp_path / "cache").rglob("*.kse.json"))
