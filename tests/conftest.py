import tempfile

import pytest


@pytest.fixture(autouse=True)
def quick_auto_timing(monkeypatch):
    """The ``auto`` lowering (the default) times candidate forms; in tests a short timed
    loop is enough, since what they pin is the choice logic and the exactness of every form."""
    from kse_onnx.lowering import auto

    monkeypatch.setattr(auto, "LAYER_BUDGET_S", 0.01)
    monkeypatch.setattr(auto, "MODEL_BUDGET_S", 0.05)



@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """tempfile's folder pointed at an empty one, to see what is left there."""
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder
