"""Every lowering on small graphs built in code: checker, structure, exactness."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from graphs import biases_as_constant_nodes, branchy_net, conv_stack, photo_batch, residual_net
from kse_onnx.graph.export import settings_of
from kse_onnx.options import KSEOptions, LowerOptions
from kse_onnx.runtime.ort import session
from kse_onnx.verify import reference_model
from optimizing import optimize_graph

# float32 rewrite exactness: reordered sums of the same products, nothing more
RTOL = 1e-5
LOWERINGS = ("dense", "compact", "factored")
G5T1 = KSEOptions(G=5, T=1)
MODELS = {
    "stack": lambda: conv_stack((3, 16, 32, 32)),
    "residual": lambda: residual_net(32),
    "branchy": lambda: branchy_net(24),
    "wide": lambda: residual_net(136, hw=4),  # factored's Gather+ReduceSum fusion
    "opset11": lambda: conv_stack((3, 16, 24), opset=11),
    "opset13": lambda: branchy_net(16, opset=13),
}


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("lowering", LOWERINGS)
@pytest.mark.parametrize("align", [1, 8])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_rewrite_is_exact(tmp_path, name, lowering, align):
    model = MODELS[name]()
    _, dst, report = optimize_graph(tmp_path, model, G5T1, LowerOptions(lowering, align=align))
    assert any(layer.status == "compressed" for layer in report.layers)
    _assert_exact(model, dst)


def _assert_exact(model, dst):
    """The optimized model at ``dst`` computes the original with W_hat, on random inputs
    and on photographs."""
    out = onnx.load(dst)
    onnx.checker.check_model(out, full_check=True)
    ref = session(reference_model(model, settings_of(out)))
    opt = session(out)
    shape = [3, *[d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]]
    for x in (np.random.default_rng(1).standard_normal(shape).astype(np.float32),
              photo_batch(shape)):
        got, want = opt.run(None, {"x": x})[0], ref.run(None, {"x": x})[0]
        assert _rel(got, want) < RTOL, dst


def test_factored_wide_layer_with_constant_node_bias(tmp_path):
    """From 128 filters the factored form fuses with Gather + ReduceSum and adds the bias
    itself; a bias made by a Constant node (not an initializer) works the same."""
    model = biases_as_constant_nodes(residual_net(136, hw=4))
    _, dst, report = optimize_graph(tmp_path, model, G5T1, "factored")
    assert sum(layer.status == "compressed" for layer in report.layers) >= 2
    ops = {n.op_type for n in onnx.load(dst).graph.node}
    assert "ReduceSum" in ops
    biases = [n for n in onnx.load(dst).graph.node if n.name.endswith("_kse_bias")]
    assert biases and all(n.op_type == "Add" for n in biases)
    _assert_exact(model, dst)


def test_interface_unchanged_and_batch_dynamic(tmp_path):
    model = residual_net(32)
    _, dst, _ = optimize_graph(tmp_path, model, None, LowerOptions("dense", align=1))
    out = onnx.load(dst)
    assert out.graph.input == model.graph.input
    assert out.graph.output == model.graph.output
    assert out.opset_import == model.opset_import
    sess = session(out)
    for batch in (1, 5):
        x = np.zeros((batch, 3, 8, 8), np.float32)
        assert sess.run(None, {"x": x})[0].shape == (batch, 10)


def _ops(model):
    return [n.op_type for n in model.graph.node]


def test_dense_prunes_producer_and_gathers_shared_inputs(tmp_path):
    _, dst, report = optimize_graph(tmp_path, residual_net(32), G5T1,
                                    LowerOptions("dense", align=1))
    out = onnx.load(dst)
    stages = {layer.name: layer.lowering for layer in report.layers if layer.lowering}
    # block input feeds the residual Add too: Gather; conv after bn-relu: producer pruned
    assert "input via gather" in stages["conv3"]
    assert "is read by 2 nodes" in stages["conv3"]  # why it is no chain (graph/groups.py)
    assert "input via producer" in stages["conv10"]
    weights = {i.name: i for i in out.graph.initializer}
    conv3 = next(n for n in out.graph.node if n.name == "conv3")
    conv10 = next(n for n in out.graph.node if n.name == "conv10")
    kept10 = weights[conv10.input[1]].dims[1]
    assert weights[conv3.input[1]].dims[0] == kept10 < 32  # producer lost the same channels
    assert _ops(out).count("Gather") == 2


def test_alignment_rounds_kept_channels_up(tmp_path):
    _, _, report = optimize_graph(tmp_path, residual_net(32), G5T1, "dense")
    compressed = [layer for layer in report.layers if layer.status == "compressed"]
    assert compressed
    assert all(layer.lowered_channels % 8 == 0 or layer.lowered_channels == 32
               for layer in compressed), [layer.lowered_channels for layer in compressed]
    assert all(layer.lowered_channels >= layer.kept_channels for layer in compressed)


def test_prune_producers_off_uses_gathers(tmp_path):
    _, dst, report = optimize_graph(
        tmp_path, residual_net(32), G5T1, LowerOptions("dense", align=1, prune_producers=False))
    lowered = [layer for layer in report.layers if layer.lowering]
    assert lowered and all(layer.status == "compressed" for layer in lowered)
    assert all("producer" not in layer.lowering for layer in lowered)
    gathers = [layer for layer in lowered if layer.lowering.endswith("input via gather")]
    assert gathers and all(layer.lowered_channels < layer.shape[1] for layer in gathers)
    model = onnx.load(dst)
    assert sum(n.op_type == "Gather" and n.name.endswith("_kse_gather")
               for n in model.graph.node) == len(gathers)


def test_compact_is_smaller_and_codes_are_narrow(tmp_path):
    model = residual_net(64)
    _, dense_path, _ = optimize_graph(tmp_path, model, G5T1, "dense")
    _, compact_path, _ = optimize_graph(tmp_path, model, G5T1, "compact")
    assert compact_path.stat().st_size < 0.8 * dense_path.stat().st_size
    compact = onnx.load(compact_path)
    codes = [i for i in compact.graph.initializer if i.name.endswith("_kse_codes")]
    assert codes and all(i.data_type in (onnx.TensorProto.UINT8, onnx.TensorProto.UINT16)
                         for i in codes)


def test_factored_uses_grouped_convs(tmp_path):
    _, dst, _ = optimize_graph(tmp_path, residual_net(32), G5T1, "factored")
    groups = [a.i for n in onnx.load(dst).graph.node if n.op_type == "Conv"
              for a in n.attribute if a.name == "group"]
    assert any(g > 1 for g in groups)


def test_depthwise_and_first_conv_left_alone_with_reason(tmp_path):
    _, _, report = optimize_graph(tmp_path, branchy_net(24))
    reasons = {layer.name: layer.reason for layer in report.layers}
    assert reasons["conv1"] == "first conv (reads a graph input)"
    assert any("depthwise" in (r or "") for r in reasons.values())
    assert any(layer.name.startswith("conv") and layer.status == "compressed"
               and layer.kept_channels < layer.shape[1] for layer in report.layers)


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_output_is_byte_identical_across_runs(tmp_path, lowering):
    model = branchy_net(24)
    _, first, _ = optimize_graph(tmp_path, model, None, lowering)
    data = first.read_bytes()
    _, second, _ = optimize_graph(tmp_path, model, None, lowering)
    assert second.read_bytes() == data


def test_metadata_records_settings(tmp_path):
    _, dst, _ = optimize_graph(tmp_path, conv_stack(), G5T1, "compact")
    settings = settings_of(onnx.load(dst))
    assert settings.kse.G == 5 and settings.kse.T == 1 and settings.lower.lowering == "compact"
    assert settings.kse_onnx_version
