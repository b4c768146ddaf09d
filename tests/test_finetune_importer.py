"""ONNX -> torch import: outputs equal onnxruntime's, export writes values back into the
same graph, and training keeps the KSE structure (shared kernels, pruned channels)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from graphs import branchy_net, photo_batch, residual_net  # noqa: E402
from kse_onnx.errors import ModelError  # noqa: E402
from kse_onnx.finetune.importer import import_model  # noqa: E402
from kse_onnx.options import KSEOptions, LowerOptions  # noqa: E402
from kse_onnx.runtime.ort import session  # noqa: E402
from optimizing import optimize_graph  # noqa: E402

LOWERINGS = ["dense", "compact", "factored", "auto"]
G5T1 = KSEOptions(G=5, T=1)


@pytest.mark.parametrize("lowering", LOWERINGS)
@pytest.mark.parametrize("make", [residual_net, branchy_net])
def test_round_trip_is_exact(tmp_path, lowering, make):
    dst = optimize_graph(tmp_path, make(), G5T1, LowerOptions(lowering, align=1)).dst
    model = onnx.load(dst)
    module = import_model(model)
    x = photo_batch((2, 3, 8, 8))
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    want = session(model).run(None, {"x": x})[0]
    assert np.abs(got - want).max() < 1e-5
    exported = module.export()
    assert exported.SerializeToString() == model.SerializeToString()


def _conv_weights(model):
    values = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type == "Conv" and node.input[1] in values:
            out[node.name] = values[node.input[1]]
    return out


def _distinct_per_channel(w: np.ndarray) -> list[int]:
    return [len(np.unique(w[:, c].reshape(w.shape[0], -1), axis=0)) for c in range(w.shape[1])]


@pytest.mark.parametrize("lowering", ["dense", "compact"])
def test_training_keeps_sharing_and_pruning(tmp_path, lowering):
    dst = optimize_graph(tmp_path, residual_net(32), G5T1, LowerOptions(lowering, align=8)).dst
    model = onnx.load(dst)
    module = import_model(model)
    assert len(module.shared) > 0
    before = {k: m().detach().numpy().copy() for k, m in module.shared.items()}
    opt = torch.optim.SGD(module.parameters(), lr=0.05, momentum=0.9)
    x = torch.from_numpy(photo_batch((8, 3, 8, 8)))
    target = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(0))
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(module(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for key, shared in module.shared.items():
        w0, w1 = before[key], shared().detach().numpy()
        assert not np.array_equal(w0, w1)  # it trained
        zero0 = np.abs(w0).reshape(len(w0), -1).sum(1) == 0 if shared.codes is None else \
            np.abs(w0).sum(axis=(0, 2, 3)) == 0
        zero1 = np.abs(w1).reshape(len(w1), -1).sum(1) == 0 if shared.codes is None else \
            np.abs(w1).sum(axis=(0, 2, 3)) == 0
        assert np.array_equal(zero0, zero1)  # pruned / alignment kernels stay zero
        if shared.codes is not None:  # each channel still has at most its q kernels
            assert all(a <= b for a, b in zip(_distinct_per_channel(w1),
                                              _distinct_per_channel(w0), strict=True))
    trained = module.export()
    onnx.checker.check_model(trained, full_check=True)
    assert [n.op_type for n in trained.graph.node] == [n.op_type for n in model.graph.node]


def test_unsupported_operator_named(tmp_path):
    model = residual_net(16)
    model.graph.node[1].op_type = "Celu"
    with pytest.raises(ModelError, match="Celu"):
        import_model(model)


def test_import_reads_paths_through_the_safe_loader(tmp_path):
    from kse_onnx.errors import ModelError

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00" * 16)
    with pytest.raises(ModelError, match="not an ONNX model"):
        import_model(bad)
