"""Loading untrusted files and writing outputs safely."""

from __future__ import annotations

import os

import onnx
import pytest
from onnx import external_data_helper

from graphs import residual_net
from kse_onnx.api import optimize
from kse_onnx.errors import ModelError
from kse_onnx.graph.io import load_model, save_model


def _save_external(model, folder, location="weights.bin"):
    path = folder / "model.onnx"
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    return path


def _set_location(path, location):
    model = onnx.load(path, load_external_data=False)
    for tensor in external_data_helper._get_all_tensors(model):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, path)


def test_external_data_model_optimizes(tmp_path):
    src = _save_external(residual_net(32), tmp_path)
    out = tmp_path / "out" / "o.onnx"
    out.parent.mkdir()
    optimize(src, out)
    assert load_model(out).graph.node


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd"])
def test_external_data_outside_folder_refused(tmp_path, location):
    inner = tmp_path / "inner"
    inner.mkdir()
    src = _save_external(residual_net(16), inner)
    (tmp_path / "outside.bin").write_bytes((inner / "weights.bin").read_bytes())
    _set_location(src, location)
    with pytest.raises(ModelError, match="outside the model's folder"):
        load_model(src)


def test_symlink_leaving_folder_refused(tmp_path):
    inner = tmp_path / "inner"
    inner.mkdir()
    src = _save_external(residual_net(16), inner)
    os.replace(inner / "weights.bin", tmp_path / "real.bin")
    os.symlink(tmp_path / "real.bin", inner / "weights.bin")
    with pytest.raises(ModelError, match="outside the model's folder"):
        load_model(src)


def test_missing_and_short_external_data(tmp_path):
    src = _save_external(residual_net(16), tmp_path)
    data = (tmp_path / "weights.bin").read_bytes()
    (tmp_path / "weights.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="shorter than declared"):
        load_model(src)
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(ModelError, match="missing"):
        load_model(src)


def test_low_opset_refused(tmp_path):
    model = residual_net(16)
    model.opset_import[0].version = 9
    path = tmp_path / "old.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelError, match="opset 9"):
        load_model(path)


def test_truncated_model_refused(tmp_path):
    path = tmp_path / "t.onnx"
    data = residual_net(16).SerializeToString()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelError, match=str(path)):
        load_model(path)


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    model = residual_net(16)
    target = tmp_path / "o.onnx"

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", boom)
    with pytest.raises(RuntimeError):
        save_model(model, target)
    assert list(tmp_path.iterdir()) == []
