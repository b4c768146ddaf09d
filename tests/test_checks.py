"""Checks that must be able to fail, labels, factored corner cases, the first-conv rule."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from graphs import GraphBuilder, cast_model, conv_stack, residual_net
from kse_onnx.api import optimize, score
from kse_onnx.cli import build_parser, main
from kse_onnx.graph.export import METADATA_KEY
from kse_onnx.options import KSEOptions, LowerOptions
from kse_onnx.runtime import ort as kse_ort
from kse_onnx.verify import VerifyResult, compare, verify
from optimizing import optimize_cli, saved

# ---- labels: integer-valued, shape (n,), one per image, one of the model's classes

LABELS = st.one_of(
    st.builds(lambda n: np.zeros((n, 1), np.int64), st.integers(1, 12)),  # (n, 1)
    st.builds(lambda f: np.full(12, f), st.floats(0.1, 8.9).filter(lambda f: f != int(f))),
    st.builds(lambda n: np.zeros(n, np.int64), st.integers(0, 11)),  # too few
    st.builds(lambda n: np.zeros(n, np.int64), st.integers(13, 30)),  # too many
    st.builds(lambda v: np.full(12, v, np.int64), st.integers(10, 10**6)),  # not a class
    st.builds(lambda v: np.full(12, v, np.int64), st.integers(-10**6, -1)),
    st.just(np.full(12, np.nan)),
    st.just(np.array(["a"] * 12)),
)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(labels=LABELS)
def test_bad_labels_are_refused_by_eval(tmp_path_factory, capsys, labels):
    tmp_path = tmp_path_factory.mktemp("labels")
    model = saved(tmp_path, residual_net(16))  # 10 classes
    np.savez(tmp_path / "d.npz", x=np.zeros((12, 3, 8, 8), np.float32), y=labels)
    assert main(["eval", str(model), "--data", str(tmp_path / "d.npz")]) == 1
    err = capsys.readouterr().err.strip()
    assert "label" in err and len(err.splitlines()) == 1 and "internal" not in err


def test_whole_float_labels_are_accepted(tmp_path, capsys):
    model = saved(tmp_path, residual_net(16))
    np.savez(tmp_path / "d.npz", x=np.zeros((12, 3, 8, 8), np.float32),
             y=np.arange(12, dtype=np.float32) % 10)
    assert main(["eval", str(model), "--data", str(tmp_path / "d.npz")]) == 0
    assert "top-1" in capsys.readouterr().out


def test_finetune_refuses_more_labels_than_images_before_training(tmp_path, capsys):
    model = saved(tmp_path, residual_net(16))
    np.savez(tmp_path / "d.npz", x=np.zeros((64, 3, 8, 8), np.float32),
             y=np.zeros(80, np.int64))
    out = tmp_path / "t.onnx"
    assert main(["finetune", str(model), str(out), "--teacher", str(model), "--data",
                 str(tmp_path / "d.npz")]) == 1
    assert "80 labels for 64 images" in capsys.readouterr().err and not out.exists()


# ---- verify: fails on non-finite outputs, trusts no metadata for what it checks


def test_verify_fails_when_outputs_are_nan(tmp_path, capsys):
    model = residual_net(16)
    bias = model.graph.initializer[-1]  # the head's bias
    bias.CopyFrom(numpy_helper.from_array(np.full(10, np.nan, np.float32), bias.name))
    src, dst = optimize_cli(tmp_path, model)
    assert main(["verify", str(src), str(dst)]) == 1
    assert "non-finite" in capsys.readouterr().out


def _tamper(dst, settings_update=None, scale_weight=False):
    model = onnx.load(dst)
    if scale_weight:
        init = next(i for i in model.graph.initializer if i.name.endswith("_kse_weight"))
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))
    if settings_update is not None:
        entry = next(p for p in model.metadata_props if p.key == METADATA_KEY)
        entry.value = json.dumps({**json.loads(entry.value), **settings_update})
    onnx.save(model, dst)


def test_metadata_claiming_int8_does_not_skip_exactness(tmp_path, capsys):
    src, dst = optimize_cli(tmp_path, residual_net(16))
    _tamper(dst, {"quantize": "int8-static", "float_output": False, "float_input_conv": True,
                  "short_names": True}, scale_weight=True)
    assert main(["verify", str(src), str(dst)]) == 1
    assert "FAIL" in capsys.readouterr().out


@pytest.mark.parametrize("update, words", [
    ({"kmeans_restarts": 10**9}, "kmeans-restarts"),
    ({"kmeans_max_iter": 10**12}, "kmeans-max-iter"),
    ({"G": 10**6}, "--G"),
    ({"skip": ["*" * 100_000]}, "glob"),
    ({"alpha": "1"}, "alpha"),
    ({"G": None}, "--G"),
])
def test_verify_bounds_settings_read_from_metadata(tmp_path, capsys, update, words):
    src, dst = optimize_cli(tmp_path, residual_net(16))
    _tamper(dst, update)
    assert main(["verify", str(src), str(dst)]) == 1
    err = capsys.readouterr().err.strip()
    assert words in err and str(dst) in err and len(err.splitlines()) == 1


def test_quantized_result_can_fail():
    bad = compare("random", [np.zeros((2, 5))], [np.zeros((2, 4))])
    assert bad.problem and "shape" in bad.problem
    nan = compare("random", [np.full((2, 4), np.nan)], [np.zeros((2, 4))])
    assert nan.problem and "non-finite" in nan.problem
    for c in (bad, nan):
        result = VerifyResult(1e-4, approximation=[c], quantized=True)
        assert not result.exact and "FAIL" in result.summary()


def test_verify_tolerance_follows_weight_dtype_and_is_documented(tmp_path):
    model = cast_model(residual_net(32), TensorProto.FLOAT16)
    src, dst = saved(tmp_path, model), tmp_path / "o.onnx"
    optimize(src, dst, lower_options=LowerOptions("factored"))
    result = verify(src, dst)
    assert result.rtol == 1e-2 and result.exact
    verify_help = build_parser()._subparsers._group_actions[0].choices["verify"].format_help()
    assert "1e-2 float16" in verify_help


def test_huge_declared_input_is_a_clear_error(tmp_path, capsys):
    src, dst = optimize_cli(tmp_path, residual_net(16))
    for path in (src, dst):
        model = onnx.load(path)
        dims = model.graph.input[0].type.tensor_type.shape.dim
        dims[2].dim_value = dims[3].dim_value = 200_000
        model.graph.ClearField("value_info")
        onnx.save(model, path)
    assert main(["verify", str(src), str(dst)]) == 1
    err = capsys.readouterr().err
    assert "give real inputs with --inputs" in err and "internal" not in err


def test_random_inputs_use_a_real_spatial_size(tmp_path):
    sess = kse_ort.session(residual_net(16))  # input (batch, 3, 8, 8): fixed sizes kept
    assert kse_ort.random_inputs(sess, 2)["x"].shape == (2, 3, 8, 8)
    model = residual_net(16)
    for d, name in zip(model.graph.input[0].type.tensor_type.shape.dim[2:], "hw",
                       strict=True):
        d.dim_param = name
    sess = kse_ort.session(model)
    assert kse_ort.random_inputs(sess, 2)["x"].shape == (2, 3, 32, 32)


def test_verify_inputs_on_a_batch_1_model_run_one_at_a_time(tmp_path, capsys):
    model = residual_net(16)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 1
    src, dst = optimize_cli(tmp_path, model)
    np.savez(tmp_path / "in.npz", x=np.random.default_rng(0).standard_normal(
        (5, 3, 8, 8)).astype(np.float32))
    assert main(["verify", str(src), str(dst), "--inputs", str(tmp_path / "in.npz")]) == 0


def test_optimize_never_writes_what_onnxruntime_cannot_run(tmp_path, capsys):
    b = GraphBuilder(3, 8)
    x = b.relu(b.conv(b.input.name, 3, 16))
    w = b.const(np.random.default_rng(0).standard_normal((16, 8, 3, 3)).astype(np.float32))
    y = b.op("Conv", [x, w], kernel_shape=[3, 3], pads=[1, 1, 1, 1])  # 8 of 16 channels
    src, dst = saved(tmp_path, b.model(b.head(y, 16))), tmp_path / "o.onnx"
    assert main(["optimize", str(src), str(dst), "--lowering", "dense"]) == 1
    err = capsys.readouterr().err
    assert "onnxruntime" in err and str(dst) in err and not dst.exists()


# ---- options


@pytest.mark.parametrize("args, flag", [(["--G", "1000000"], "--G"), (["--T", "99"], "--T"),
                                        (["--alpha", "inf"], "--alpha"),
                                        (["--alpha", "nan"], "--alpha")])
def test_unbounded_options_are_usage_errors(tmp_path, capsys, args, flag):
    src = saved(tmp_path, residual_net(16))
    assert main(["score", str(src), *args]) == 2
    assert flag in capsys.readouterr().err


# ---- factored


def _bias_model(via: str, n: int = 128):
    """stem conv, then a 3x3 conv with n filters whose bias comes from a Constant node or
    through an Identity, and whose weight comes through an Identity."""
    b = GraphBuilder(3, 8)
    x = b.relu(b.conv(b.input.name, 3, 16))
    rng = np.random.default_rng(3)
    w = b.op("Identity", [b.const((rng.standard_normal((n, 16, 3, 3)) * 0.2)
                                  .astype(np.float32))])
    bias = rng.standard_normal(n).astype(np.float32)
    if via == "constant":
        b.nodes.append(helper.make_node("Constant", [], ["cb"], name="cb",
                                        value=numpy_helper.from_array(bias)))
        bias_name = "cb"
    else:
        bias_name = b.op("Identity", [b.const(bias)])
    y = b.op("Conv", [x, w, bias_name], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    return b.model(b.head(b.relu(y), n))


@pytest.mark.parametrize("via", ["constant", "identity"])
def test_factored_bias_through_constant_or_identity(tmp_path, via):
    src, dst = saved(tmp_path, _bias_model(via)), tmp_path / "o.onnx"
    report = optimize(src, dst, lower_options=LowerOptions("factored"))
    assert [layer.status for layer in report.layers][1] == "compressed"  # weight via Identity
    assert any(n.op_type == "ReduceSum" for n in onnx.load(dst).graph.node)  # gather-sum form
    assert verify(src, dst).exact


def test_factored_1x1_conv_is_written_dense(tmp_path):
    b = GraphBuilder(3, 8)
    x = b.relu(b.conv(b.input.name, 3, 32))
    y = b.relu(b.conv(x, 32, 32, k=1))
    src, dst = saved(tmp_path, b.model(b.head(y, 32))), tmp_path / "o.onnx"
    report = optimize(src, dst, lower_options=LowerOptions("factored"))
    layer = report.layers[1]
    assert layer.status == "compressed" and layer.lowering.startswith("dense")
    assert not any(a.name == "group" and a.i > 1 for n in onnx.load(dst).graph.node
                   for a in n.attribute)
    assert verify(src, dst).exact


def test_factored_prune_only_keeps_the_output_shape(tmp_path):
    b = GraphBuilder(3, 8)
    x = b.relu(b.conv(b.input.name, 3, 16))
    y = b.conv(x, 16, 16)
    out = helper.make_tensor_value_info(y, TensorProto.FLOAT, ["batch", 16, 8, 8])
    graph = helper.make_graph(b.nodes, "g", [b.input], [out], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    src, dst = saved(tmp_path, model), tmp_path / "o.onnx"
    optimize(src, dst, KSEOptions(G=2), lower_options=LowerOptions("factored"))
    assert onnx.load(dst).graph.output[0] == model.graph.output[0]
    assert verify(src, dst).exact


def test_int8_static_on_opset_11_runs(tmp_path):
    src = saved(tmp_path, conv_stack((3, 16, 32, 32), opset=11))
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(0).standard_normal(
        (8, 3, 8, 8)).astype(np.float32))
    dst = tmp_path / "o.onnx"
    assert main(["optimize", str(src), str(dst), "--lowering", "dense", "--quantize",
                 "int8-static", "--calibration", str(tmp_path / "c.npz")]) == 0
    kse_ort.session(onnx.load(dst))  # onnxruntime loads it (optimize checked a run too)
    assert main(["verify", str(src), str(dst)]) == 0


def test_unreadable_images_are_reported(tmp_path, capsys):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / cls / "1.png")
    (tmp_path / "imgs" / "b" / "notes.txt").write_text("not an image: skipped")
    (tmp_path / "imgs" / "b" / "2.png").write_text("a broken image")
    model = saved(tmp_path, residual_net(16))
    assert main(["eval", str(model), "--data", str(tmp_path / "imgs")]) == 1
    err = capsys.readouterr().err
    assert "1 file(s)" in err and "2.png" in err


# ---- the first conv behind in-graph preprocessing


@pytest.mark.parametrize("steps", [("Sub", "Div"), ("Resize",), ("Cast", "Transpose", "Pad"),
                                   ("Mul", "Add", "Identity")])
def test_first_conv_behind_preprocessing_is_left_alone(tmp_path, steps):
    b = GraphBuilder(3, 8)
    x = b.input.name
    for step in steps:
        if step in ("Sub", "Div", "Mul", "Add"):
            x = b.op(step, [x, b.const(np.full((1, 3, 1, 1), 0.5, np.float32))])
        elif step == "Resize":
            x = b.op("Resize", [x, "", b.const(np.array([1, 1, 2, 2], np.float32))],
                     mode="linear")
        elif step == "Cast":
            x = b.op("Cast", [x], to=TensorProto.FLOAT)
        elif step == "Transpose":
            x = b.op("Transpose", [x], perm=[0, 1, 3, 2])
        elif step == "Pad":
            x = b.op("Pad", [x, b.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))])
        else:
            x = b.op(step, [x])
    x = b.relu(b.conv(x, 3, 16))
    x = b.relu(b.conv(x, 16, 16))
    report = score(saved(tmp_path, b.model(b.head(x, 16))))
    assert report.layers[0].reason.startswith("first conv")
    assert report.layers[1].status == "compressed"


def test_shapes_lost_by_inference_come_from_onnxruntime(tmp_path):
    b = GraphBuilder(3, 8)
    b.input.type.tensor_type.shape.dim[0].dim_value = 1  # sizes declared but the batch
    b.input.type.tensor_type.shape.dim[0].dim_param = "batch"
    x = b.relu(b.conv(b.input.name, 3, 16))
    shuffled = b.op("Reshape", [x, b.op("Shape", [x])])  # computed shape: inference loses it
    x = b.relu(b.conv(shuffled, 16, 16))
    src = saved(tmp_path, b.model(b.head(x, 16)))
    inferred = onnx.shape_inference.infer_shapes(onnx.load(src))
    lost = {v.name: v for v in inferred.graph.value_info}[shuffled]
    assert not all(d.HasField("dim_value") for d in lost.type.tensor_type.shape.dim[1:])
    report = score(src)
    assert [layer.output_hw for layer in report.layers] == [64, 64]
    assert report.totals()["macs_before"] is not None
