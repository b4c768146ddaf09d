"""Wrong answers with exit 0: node identity, generated names, the graph input list.

The independent reference of the name tests: renaming a model's nodes and tensors must not
change what ``optimize`` computes, so each renamed model's output is run against the
output for the same model with plain unique names."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper

from graphs import branchy_net, residual_net
from kse_onnx.api import optimize
from kse_onnx.cli import main
from kse_onnx.errors import ModelError
from kse_onnx.graph.inputs import check_same_inputs
from kse_onnx.graph.io import load_model
from kse_onnx.options import LowerOptions
from kse_onnx.verify import verify
from optimizing import optimize_graph

# names an optimize run generates, or that our renaming would pick, among plain ones
NAMES = ["", "a", "conv3", "conv5", "conv3_kse_weight", "conv5_kse_keep", "conv5_kse_kept",
         "conv3_kse_codebook", "Conv_0", "Conv_0_1", "u1_conv3_kse_weight", "relu4",
         "conv7_kse_level1_kernels", "conv7_kse_select", "x_1", "w9"]

GENERATED = ["weight", "keep", "kept", "gather", "codebook", "codes", "codes64", "in1",
             "in2", "level1_kernels", "level2_out", "select", "fused", "whole_weight"]


def _run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _renamed(model, node_names, tensor_names):
    """``model`` with nodes renamed (duplicates and empty allowed) and internal tensors
    (initializers and node outputs other than the graph's) renamed one to one."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    keep = {v.name for v in (*graph.input, *graph.output)}
    internal = [i.name for i in graph.initializer] + [o for n in graph.node for o in n.output
                                                        if o not in keep]
    mapping = dict(zip(internal, tensor_names, strict=False))
    used = set(mapping.values()) | keep
    for i, name in enumerate(internal[len(mapping):]):
        while f"t{i}" in used:
            i += 1000
        mapping[name] = f"t{i}"
        used.add(mapping[name])
    for init in graph.initializer:
        init.name = mapping.get(init.name, init.name)
    for node, name in zip(graph.node, node_names, strict=False):
        node.name = name
    for node in graph.node:
        node.input[:] = [mapping.get(t, t) for t in node.input]
        node.output[:] = [mapping.get(t, t) for t in node.output]
    onnx.checker.check_model(out, full_check=True)
    return out


def _draw_names(data, model) -> tuple[list[str], list[str]]:
    """New node names (duplicates and empty allowed) and tensor names for ``model``."""
    node_names = [data.draw(st.one_of(st.just(n.name), st.sampled_from(NAMES)))
                  for n in model.graph.node]
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"] + ["Conv_1"]
    generated = [f"{c}_kse_{s}" for c in convs for s in GENERATED]
    tensor_names = data.draw(st.lists(st.sampled_from(NAMES[1:] + generated), unique=True,
                                      min_size=20, max_size=40))
    return node_names, tensor_names


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), lowering=st.sampled_from(["dense", "compact", "factored"]))
def test_names_never_change_the_answer(tmp_path_factory, data, lowering):
    tmp_path = tmp_path_factory.mktemp("names")
    model = branchy_net(24)
    node_names, tensor_names = _draw_names(data, model)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    plain = optimize_graph(tmp_path, model, None, lowering, src="plain.onnx",
                           dst="plain_out.onnx").dst
    dst = optimize_graph(tmp_path, _renamed(model, node_names, tensor_names), None, lowering,
                         src="renamed.onnx", dst="renamed_out.onnx").dst
    np.testing.assert_allclose(_run(dst, x), _run(plain, x), rtol=1e-5, atol=1e-5)
    out = load_model(dst)
    assert [v.name for v in out.graph.input] == [v.name for v in model.graph.input]


@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), lowering=st.sampled_from(["dense", "compact", "factored"]))
def test_renamed_models_verify_exact(tmp_path_factory, data, lowering):
    """``verify`` on renamed models whose non-empty node names are unique (onnxruntime
    refuses to load an original with two nodes of one name)."""
    tmp_path = tmp_path_factory.mktemp("names")
    model = branchy_net(24)
    drawn, tensor_names = _draw_names(data, model)
    node_names = [n if n not in drawn[:i] else "" for i, n in enumerate(drawn)]
    src, dst, _ = optimize_graph(tmp_path, _renamed(model, node_names, tensor_names), None,
                                 lowering, src="renamed.onnx", dst="renamed_out.onnx")
    assert verify(src, dst).exact


def test_two_convs_with_one_name_keep_their_own_plans(tmp_path):
    model = residual_net(16)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    for conv in convs[1:]:
        conv.name = "block"
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    plain = optimize_graph(tmp_path, residual_net(16), src="plain.onnx", dst="plain_out.onnx").dst
    dst = optimize_graph(tmp_path, model, src="dup.onnx", dst="dup_out.onnx").dst
    np.testing.assert_allclose(_run(dst, x), _run(plain, x), rtol=1e-5, atol=1e-5)
    names = [n.name for n in onnx.load(dst).graph.node if n.op_type == "Conv"]
    assert len(set(names)) == len(names)  # onnxruntime runs the output (not the input)


def _with_weight_inputs(model, ir_version, which):
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.ir_version = ir_version
    for init in out.graph.initializer:
        if which(init.name):
            out.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type,
                                                                 list(init.dims)))
    onnx.checker.check_model(out, full_check=True)
    return out


def test_overridable_weight_inputs_are_kept_and_not_rewritten(tmp_path):
    model = _with_weight_inputs(residual_net(16), 8, lambda name: name == "conv3.weight")
    src, dst, _ = optimize_graph(tmp_path, model)
    out = load_model(dst)
    assert [v.name for v in out.graph.input] == [v.name for v in model.graph.input]
    assert "conv3.weight" in {i.name for i in out.graph.initializer}
    report = optimize(src, tmp_path / "again.onnx", lower_options=LowerOptions("dense"))
    layer = next(r for r in report.layers if r.name == "conv3")
    assert layer.status == "skipped" and "graph input" in layer.reason
    # a caller's override reaches the conv in the output as in the input
    w = np.zeros((16, 16, 3, 3), np.float32)
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    runs = []
    for path in (src, dst):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        runs.append(sess.run(None, {"x": x, "conv3.weight": w})[0])
    plain = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    assert not np.allclose(runs[0], plain.run(None, {"x": x})[0])  # the override matters
    assert verify(src, dst).exact


@pytest.mark.parametrize("lowering", ["dense", "compact", "factored"])
def test_ir3_model_listing_its_weights_as_inputs_is_refused(tmp_path, capsys, lowering):
    """IR 3 lists every weight as a graph input; a compressed model cannot keep that
    list, so optimize refuses it in one line saying why, and writes nothing."""
    model = _with_weight_inputs(residual_net(16), 3, lambda name: True)
    src, dst = tmp_path / "ir3.onnx", tmp_path / "ir3_out.onnx"
    onnx.save(model, src)
    before = src.read_bytes()
    assert main(["optimize", str(src), str(dst), "--lowering", lowering]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(src) in err and "IR version 3" in err
    assert "conv1.weight" in err and "change the model's graph inputs" in err
    assert not dst.exists() and src.read_bytes() == before


def test_a_rewrite_that_changes_the_graph_inputs_is_refused():
    """The check every written model passes: same input names, order, default shapes."""
    original = _with_weight_inputs(residual_net(16), 8, lambda name: name == "conv3.weight")
    check_same_inputs(original, original)
    changed = onnx.ModelProto()
    changed.CopyFrom(original)
    changed.graph.input[1].name = "conv3_kse_in1"
    with pytest.raises(ModelError, match="conv3"):
        check_same_inputs(changed, original)
    changed.CopyFrom(original)
    next(i for i in changed.graph.initializer if i.name == "conv3.weight").dims[0] = 8
    with pytest.raises(ModelError, match="graph inputs"):
        check_same_inputs(changed, original)
