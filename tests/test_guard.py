"""The searches of the accuracy guard: the chosen model confirmed on images no choice
saw (the winner's curse), and ``--minimize latency``, the fastest model within the drop.
Latency budgets time multiply-adds (test_budget's ``macs_as_time``): deterministic."""

from __future__ import annotations

import json
import types

import numpy as np
import onnx
import pytest
from test_budget import macs_as_time, padded_resnet  # noqa: F401 (a fixture)

from graphs import folded_resnet, photo_batch
from kse_onnx.cli import main
from kse_onnx.errors import ModelError, OptionError
from kse_onnx.graph.export import METADATA_KEY
from kse_onnx.guard.confirm import LOOKS, MIN_PART, confirmed, cut
from kse_onnx.guard.measure import drop, outputs

pytest.importorskip("torch")  # the refit


def flipped(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose last Gemm answers the opposite: its weight and bias negated."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    gemm = [n for n in copy.graph.node if n.op_type == "Gemm"][-1]
    for tensor in copy.graph.initializer:
        if tensor.name in gemm.input[1:]:
            tensor.CopyFrom(onnx.numpy_helper.from_array(
                -onnx.numpy_helper.to_array(tensor), tensor.name))
    return copy


def test_the_chosen_model_is_confirmed_on_images_kept_back():
    """The first candidate whose drop on the confirmation images holds D is returned
    with that drop; past the candidates (or LOOKS of them) one error line."""
    original = folded_resnet(width=8, hw=8)
    x = photo_batch((64, 3, 8, 8), seed=3)
    parts = cut(x, None, 0.5, "held-out calibration images")
    assert len(parts.select_x) == 32 and np.array_equal(parts.confirm_x, x[32:])
    models = {"bad": flipped(original), "good": original}
    assert drop(outputs(original, x[32:]), outputs(models["bad"], x[32:])).points > 50
    lines = []

    def build(name):
        return types.SimpleNamespace(model=models[name])

    built, name, measured, looks = confirmed(original, ["bad", "good"], build, parts, 1.0,
                                             lines.append, str)
    assert (name, looks, measured.points, measured.images) == ("good", 2, 0.0, 32)
    assert measured.source == "held-out calibration images kept back to confirm the choice"
    assert len(lines) == 2 and lines[0].startswith("max-drop confirmation: bad: drop")
    with pytest.raises(ModelError) as failed:
        confirmed(original, ["bad"] * (LOOKS + 1) + ["good"], build, parts, 1.0,
                  lines.append, str)
    message = str(failed.value)
    assert f"the {LOOKS} best candidate(s) held the drop" in message
    assert "nothing written" in message and "\n" not in message
    with pytest.raises(OptionError, match="--confirm"):
        cut(x[:2 * MIN_PART - 1], None, 0.5, "held-out calibration images")


@pytest.mark.usefixtures("macs_as_time")
def test_fastest_model_within_a_max_drop(tmp_path, capsys, monkeypatch):
    """``--max-drop D --minimize latency``: a bisection on R, one progress line per step;
    the lowest R that held on the selection images is confirmed on the images kept back
    and written with R, its measured ratio and the confirmed drop; when no R holds, one
    error line names the best pair, and nothing is written."""
    from kse_onnx.guard import fastest

    src, out = tmp_path / "m.onnx", tmp_path / "b.onnx"
    onnx.save(padded_resnet(width=16, hw=8), src)
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, x=photo_batch((64, 3, 8, 8), seed=3))
    args = ["optimize", str(src), str(out), "--lowering", "compact", "--minimize", "latency",
            "--calibration", str(calibration), "--refit", "none", "--holdout", "0.5"]
    assert main([*args, "--max-drop", "100", "--report", str(tmp_path / "r.json")]) == 0
    steps = [line for line in capsys.readouterr().err.splitlines()
             if line.startswith("fastest-within-drop search: R=")]
    assert len(steps) == fastest.STEPS
    report = json.loads((tmp_path / "r.json").read_text())
    search, accuracy = report["max_drop_search"], report["accuracy"]
    assert search["minimize"] == "latency" and len(search["tried"]) == fastest.STEPS
    built = [t for t in search["tried"] if t["drop"] is not None]
    chosen = search["chosen"]
    assert built and chosen["R"] == min(t["R"] for t in built)  # D = 100 holds everywhere
    assert [t["R"] for t in search["tried"][:2]] == [0.6, 0.4]  # bisection down from 0.6
    assert chosen["ratio"] is not None and chosen["ratio"] <= chosen["R"]
    assert report["budget"]["target_latency"] == chosen["R"]
    assert accuracy["images"] == 16 and accuracy["source"].endswith("confirm the choice")
    assert accuracy["points"] == chosen["confirmed_drop"]["points"]
    out.unlink()
    monkeypatch.setattr(fastest, "STEPS", 1)  # R = 0.6 only
    first = search["tried"][0]["drop"]["points"]
    assert main([*args, "--quiet", "--max-drop", f"{first / 2:g}"]) == 1
    err = capsys.readouterr().err.strip()
    assert "no R in [0.2, 1) holds the drop" in err and "best pair reached is R = 0.6" in err
    assert len(err.splitlines()) == 1 and not out.exists()
    for extra, flag in ((["--target-latency", "0.5"], "--minimize"),
                        (["--lowering", "factored"], "--lowering")):
        assert main([*args, "--quiet", "--max-drop", "1", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert flag in err and len(err.splitlines()) == 1 and not out.exists()


def test_per_layer_settings_are_recorded_and_replayed(tmp_path, capsys):
    """``--layer-gt GLOB=G,T`` (what --max-drop records): the layer gets its own G and T,
    the model records the entries, ``verify`` rebuilds the same plans from them (and
    fails without them) and ``refit`` replays them; a model without them records no key."""
    src, out, again = tmp_path / "m.onnx", tmp_path / "o.onnx", tmp_path / "r.onnx"
    onnx.save(folded_resnet(width=8, hw=8), src)
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, x=photo_batch((32, 3, 8, 8), seed=3))
    common = ["--lowering", "compact", "--calibration", str(calibration), "--quiet"]
    assert main(["optimize", str(src), str(out), *common, "--refit", "none", "--G", "5",
                 "--T", "1", "--layer-gt", "conv[1]0=3,0", "--report",
                 str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    layers = {layer["name"]: layer for layer in report["layers"]}
    assert report["settings"]["layer_gt"] == ["conv[1]0=3,0"]
    assert len(layers["conv10"]["channels_per_level"]) == 3
    assert all(len(layer["channels_per_level"]) == 5 for name, layer in layers.items()
               if name != "conv10" and layer["status"] == "compressed")
    assert main(["verify", str(src), str(out)]) == 0
    tampered = onnx.load(out)  # the same model without its per-layer setting: fails
    entry = next(p for p in tampered.metadata_props if p.key == METADATA_KEY)
    recorded = json.loads(entry.value)
    del recorded["layer_gt"]
    entry.value = json.dumps(recorded)
    onnx.save(tampered, tmp_path / "t.onnx")
    capsys.readouterr()
    assert main(["verify", str(src), str(tmp_path / "t.onnx")]) == 1
    assert main(["refit", str(out), str(again), "--teacher", str(src), "--calibration",
                 str(calibration), "--refit", "ls", "--quiet"]) == 0
    assert main(["verify", str(src), str(again)]) == 0
    plain = tmp_path / "plain.onnx"
    assert main(["optimize", str(src), str(plain), *common, "--refit", "none", "--report",
                 str(tmp_path / "p.json")]) == 0
    assert "layer_gt" not in json.loads((tmp_path / "p.json").read_text())["settings"]


@pytest.mark.parametrize("entry", ["conv10", "conv10=3", "=3,0", "conv10=0,0", "conv10=3,x",
                                   "conv10=3,99"])
def test_a_bad_layer_setting_is_a_one_line_error(tmp_path, capsys, entry):
    src = tmp_path / "m.onnx"
    onnx.save(folded_resnet(width=8, hw=8), src)
    code = main(["optimize", str(src), str(tmp_path / "o.onnx"), "--lowering", "compact",
                 "--quiet", "--layer-gt", entry])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--layer-gt" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o.onnx").exists()
