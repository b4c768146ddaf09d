import pytest


@pytest.fixture(autouse=True)
def quick_auto_timing(monkeypatch):
    """The ``auto`` lowering (the default) times candidate forms; in tests a short timed
    loop is enough, since what they pin is the choice logic and the exactness of every form."""
    from kse_onnx.lowering import auto

    monkeypatch.setattr(auto, "LAYER_BUDGET_S", 0.01)
    monkeypatch.setattr(auto, "MODEL_BUDGET_S", 0.05)

