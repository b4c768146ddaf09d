"""The settings recorded in a model's metadata: one typed, versioned dataclass
(kse_onnx.graph.settings.RecordedSettings) that every reader gets, written back byte for
byte, with old layouts read and unknown ones refused in one line."""

from __future__ import annotations

import json

import onnx
import pytest

from graphs import residual_net
from kse_onnx.cli import main
from kse_onnx.graph.export import METADATA_KEY, record_settings, recorded_settings, settings_of
from kse_onnx.graph.settings import LAYOUT, RecordedSettings, SettingsError
from kse_onnx.options import (
    BudgetOptions,
    KSEOptions,
    LowerOptions,
    QuantizeOptions,
    RefitOptions,
    SelectOptions,
)

EVERY_GROUP = RecordedSettings(
    KSEOptions(G=5, T=1, alpha=0.5), SelectOptions(skip=("head*",)), "0.1.0",
    LowerOptions("auto", align=4), RefitOptions("act", refit_rounds=3), 96,
    BudgetOptions(0.7), {"conv1": [0, 2, 3]}, {"add0": [1, 4]},
    QuantizeOptions("int8-static"), 64, ("conv1", "conv2"), True,
    {"conv1": "dense", "conv2": "compact"})


@pytest.fixture(scope="module")
def optimized(tmp_path_factory):
    folder = tmp_path_factory.mktemp("settings")
    src, dst = folder / "m.onnx", folder / "o.onnx"
    onnx.save(residual_net(16), src)
    assert main(["optimize", str(src), str(dst), "--lowering", "dense", "--quiet"]) == 0
    return src, dst


def _entry(model: onnx.ModelProto):
    return next(p for p in model.metadata_props if p.key == METADATA_KEY)


def _with_settings(folder, optimized_path, text: str, name: str):
    model = onnx.load(optimized_path)
    _entry(model).value = text
    path = folder / name
    onnx.save(model, path)
    return path


def test_a_written_model_reads_back_as_the_dataclass_and_writes_the_same_bytes(optimized):
    model = onnx.load(optimized[1])
    settings = settings_of(model)
    assert isinstance(settings, RecordedSettings)
    assert settings.kse == KSEOptions() and settings.select == SelectOptions()
    assert settings.lower.lowering == "dense" and settings.refit is None
    assert settings.compressed_layers and settings.budget is None and settings.quantize is None
    before = _entry(model).value
    record_settings(model, settings)
    assert _entry(model).value == before


def test_every_group_round_trips_through_the_metadata():
    model = residual_net(16)
    record_settings(model, EVERY_GROUP)
    text = _entry(model).value
    assert "choices" not in json.loads(text)  # replays read the layer forms instead
    back = settings_of(model)
    assert back == EVERY_GROUP
    record_settings(model, back)
    assert _entry(model).value == text
    assert back.compressed == {"conv1", "conv2"} and back.refit.refit == "act"


def test_not_refitted_is_recorded_as_refit_none():
    recorded = RecordedSettings(KSEOptions(), SelectOptions(), "0.1.0", LowerOptions("dense"))
    raw = recorded.to_dict()
    assert raw["refit"] == "none" and "refit_rounds" not in raw
    assert RecordedSettings.from_dict(raw) == recorded


def test_a_report_reads_back_like_the_model(optimized, tmp_path):
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"settings": settings_of(onnx.load(optimized[1])).to_dict()}))
    assert recorded_settings(str(report)) == recorded_settings(str(optimized[1]))


def test_settings_without_a_layout_version_are_read_as_layout_1(optimized, tmp_path, capsys):
    """What kse-onnx 0.1 writes carries no ``settings_version``: still read, and
    ``verify`` passes; an explicit version 1 reads the same."""
    src, dst = optimized
    raw = json.loads(_entry(onnx.load(dst)).value)
    assert "settings_version" not in raw
    explicit = RecordedSettings.from_dict({**raw, "settings_version": LAYOUT})
    assert explicit == RecordedSettings.from_dict(raw)
    unversioned = {k: v for k, v in raw.items() if k != "kse_onnx_version"}
    path = _with_settings(tmp_path, dst, json.dumps(unversioned), "old.onnx")
    assert main(["verify", str(src), str(path)]) == 0
    assert "PASS" in capsys.readouterr().out


@pytest.mark.parametrize("update, words", [
    ({"settings_version": 99}, "'kse_onnx.settings_version' is 99: a layout this kse-onnx "
                               "does not read"),
    ({"settings_version": "garbage"}, "'kse_onnx.settings_version' is 'garbage', expected"),
    ({"G": 10**6}, "field 'kse_onnx': option --G: must be an integer <= 32"),
    ({"refit": "ls"}, "field 'kse_onnx' lacks 'refit_rounds'"),
])
def test_unknown_layouts_and_values_are_one_line_errors(optimized, tmp_path, capsys, update,
                                                        words):
    src, dst = optimized
    raw = json.loads(_entry(onnx.load(dst)).value)
    path = _with_settings(tmp_path, dst, json.dumps({**raw, **update}), "bad.onnx")
    assert main(["verify", str(src), str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert f"{path}: kse-onnx settings in its metadata: " in err and words in err, err
    assert len(err.splitlines()) == 1


def test_a_group_missing_a_field_names_it():
    raw = RecordedSettings(KSEOptions(), SelectOptions()).to_dict()
    del raw["alpha"]
    with pytest.raises(SettingsError, match="field 'settings' lacks 'alpha'"):
        RecordedSettings.from_dict(raw)
    with pytest.raises(SettingsError, match="lacks 'G'"):
        RecordedSettings().analysis()


def test_a_later_field_is_written_only_when_set_and_read_when_absent():
    """``layer_gt`` (per-layer G/T, added within layout 1): absent from the JSON of a
    model that does not use it (its bytes stay) and read as the default; when set it
    round-trips, and a crafted value is refused naming the field."""
    plain = EVERY_GROUP.to_dict()
    assert "layer_gt" not in plain
    assert RecordedSettings.from_dict(plain).select.layer_gt == ()
    select = SelectOptions(skip=("head*",), layer_gt=("conv[1]=3,0",))
    per_layer = RecordedSettings(EVERY_GROUP.kse, select)
    raw = per_layer.to_dict()
    assert raw["layer_gt"] == ["conv[1]=3,0"]
    assert RecordedSettings.from_dict(raw).select == select
    for bad in (["conv1=0,0"], ["conv1"], "conv1=3,0"):
        with pytest.raises(SettingsError, match="layer.gt"):
            RecordedSettings.from_dict({**raw, "layer_gt": bad})
