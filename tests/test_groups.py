"""Channel groups (kse_onnx/graph/groups.py): what find_groups finds on small graphs,
the reason every "not a group" carries, the importance of a group, and that cutting a
chain group at its producer computes what the reader computed on the kept channels."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from graphs import GraphBuilder, branchy_net, photo_batch, residual_net
from kse_onnx.graph.core import import_graph
from kse_onnx.graph.export import export_model
from kse_onnx.graph.groups import chain_group, find_groups, residual_groups
from kse_onnx.graph.settings import RecordedSettings
from kse_onnx.graph.walk import default_opset
from kse_onnx.runtime.ort import session


def _by_reader(groups):
    return {r.name: g for g in groups for r in g.readers}


def _run(model, x):
    sess = session(model)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_residual_add_group():
    """residual_net: the stem's output, both Adds and the head form one residual group
    (3 producers: the stem and each block's last conv; 2 readers; the pooled Gemm);
    each block's inner conv has its own chain; the stem reads the graph input."""
    graph = import_graph(residual_net(16))
    groups = find_groups(graph)
    assert [g.kind for g in groups] == ["residual", "reader", "chain", "chain"]
    res = groups[0]
    assert res.n_classes == 16 and all(len(c) == 16 for c in res.channels.values())
    assert len(res.readers) == 2 and len(res.producers) == 3 and len(res.gemms) == 1
    assert sum(n.op == "Add" for n in res.ops) == 2
    assert [len(s) for s in res.spans()] == [16]
    stem = groups[1]
    assert stem.readers[0].name == "conv1" and not stem.producers
    assert stem.reason == "tensor 'x' is a graph input"
    for chain in groups[2:]:
        assert len(chain.producers) == 1 and [n.op for n in chain.ops] == [
            "BatchNormalization", "Relu"]
        assert chain.reason is None
    assert sorted(_by_reader(groups)) == ["conv1", "conv10", "conv18", "conv25", "conv3"]


def test_importance_sums_the_indicator_over_readers():
    graph = import_graph(residual_net(8))
    (res,) = residual_groups(graph)
    rng = np.random.default_rng(0)
    v = {r.name: rng.uniform(size=8) for r in res.readers}
    np.testing.assert_allclose(res.importance(v), sum(v.values()))
    chain = next(g for g in find_groups(graph) if g.kind == "chain")
    w = {chain.readers[0].name: rng.uniform(size=8)}
    np.testing.assert_array_equal(chain.importance(w), w[chain.readers[0].name])


def test_concat_is_no_group_with_its_reason():
    """branchy_net: the stem is read by two convs (a residual group without an Add);
    the conv after the Concat has no group to cut at: the reason names the Concat."""
    graph = import_graph(branchy_net(8))
    groups = find_groups(graph)
    shared = [g for g in groups if g.kind == "residual"]
    assert len(shared) == 1 and len(shared[0].readers) == 2
    assert [n.op for n in shared[0].ops] == ["Relu"]
    cat = next(n for n in graph.nodes if n.op == "Concat")
    reader = next(g for g in groups if g.readers[0].inputs[0] is cat.outputs[0])
    assert reader.kind == "reader" and not reader.producers
    assert f"node {cat.name!r} (Concat) is not channel-wise" in reader.reason
    assert f"no residual group: node {cat.name!r} (Concat)" in reader.reason
    # the Mul by a per-channel constant between two convs is a chain
    mul = next(n for n in graph.nodes if n.op == "Mul")
    assert any(g.kind == "chain" and mul in g.ops for g in groups)


def test_split_is_no_group_with_its_reason():
    b = GraphBuilder(3, 8)
    x = b.relu(b.conv(b.input.name, 3, 8))
    sizes = b.const(np.array([4, 4], np.int64))
    b.nodes.append(helper.make_node("Split", [x, sizes], ["lo", "hi"], name="split", axis=1))
    y = b.op("Add", [b.conv("lo", 4, 8), b.conv("hi", 4, 8)])
    graph = import_graph(b.model(b.head(y, 8)))
    groups = find_groups(graph)
    halves = [g for g in groups if g.readers[0].inputs[0].name in ("lo", "hi")]
    assert len(halves) == 2
    for group in halves:
        assert group.kind == "reader"
        assert "node 'split' (Split) is not channel-wise" in group.reason
        assert "no residual group: node 'split' (Split)" in group.reason
    # walks start at tensors a Conv reads: the Add of the halves feeds only the head
    assert residual_groups(graph) == []


def test_chain_cut_at_the_producer_is_exact():
    """Pruning a chain group's producer (and BatchNormalization on the way) and giving
    the reader only the kept columns computes what the reader computed with the other
    columns zero."""
    model = residual_net(8)
    x = photo_batch((2, 3, 8, 8))
    keep = np.array([0, 2, 3, 6])
    graph = import_graph(model)
    group = next(g for g in find_groups(graph) if g.kind == "chain")
    reader = group.readers[0]
    (rows,) = group.rows(keep).values()
    np.testing.assert_array_equal(rows, keep)
    reference = import_graph(model)
    ref_reader = next(n for n in reference.nodes if n.name == reader.name)
    w = ref_reader.inputs[1].values.copy()
    w[:, np.setdiff1d(np.arange(8), keep)] = 0
    ref_reader.inputs[1].values = w
    reader.inputs[1].values = np.ascontiguousarray(reader.inputs[1].values[:, keep])
    group.prune(keep)
    graph.cleanup().toposort()
    pruned = export_model(graph, model, RecordedSettings())
    assert onnx.numpy_helper.to_array(next(
        t for t in pruned.graph.initializer
        if t.name == f"{group.producers[0].name}_kse_in1")).shape[0] == 4
    expect = _run(export_model(reference, model, RecordedSettings()), x)
    np.testing.assert_allclose(_run(pruned, x), expect, rtol=1e-5, atol=1e-5)


def test_default_opset():
    model = residual_net(8)
    assert default_opset(model) == 17
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    assert default_opset(model) is None


def test_chain_group_of_a_conv_reading_a_shared_tensor():
    graph = import_graph(residual_net(8))
    conv = next(n for n in graph.nodes if n.name == "conv3")  # block 1 reads the stem
    group = chain_group(graph, conv)
    assert group.kind == "reader" and "is read by 2 nodes" in group.reason


def test_a_conv_whose_weight_is_a_graph_input_is_an_empty_reader_group():
    """A Conv whose weight the caller feeds: its group names its input, has no channel
    to cut (0 classes), and says why it is no chain."""
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 3, 8, 8])
    w = helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [8, 3, 3, 3])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 8, 6, 6])
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[3, 3])
    model = helper.make_model(helper.make_graph([conv], "g", [x, w], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    (group,) = find_groups(import_graph(model))
    assert group.kind == "reader" and group.n_classes == 0 and not group.producers
    assert group.reason == "tensor 'x' is a graph input"
