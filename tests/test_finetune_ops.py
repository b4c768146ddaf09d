"""Importer operators against onnxruntime, one small graph per case: Resize in every
coordinate and nearest mode, pools and convs with auto_pad and ceil_mode, ConvTranspose,
and the element-wise/shape operators of detector and segmenter exports; settings that
cannot be matched are refused at import, all of them in one error."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")

from kse_onnx.errors import ModelError  # noqa: E402
from kse_onnx.finetune.importer import import_model  # noqa: E402
from kse_onnx.onnx_torch.resize import COORDINATE_MODES, NEAREST_MODES  # noqa: E402
from kse_onnx.runtime.ort import session  # noqa: E402

FLOAT, INT64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
_NP = {FLOAT: np.float32, INT64: np.int64, BOOL: np.bool_}


def _model(nodes, inputs, inits=None, outputs=None, opset=17):
    """Graph of ``nodes``; ``inputs`` name -> array (graph inputs), ``inits`` name -> array
    (initializers), ``outputs`` name -> element type (FLOAT unless said)."""
    outputs = outputs or {nodes[-1].output[0]: FLOAT}
    graph = helper.make_graph(
        nodes, "ops",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for k, v in inputs.items()],
        [helper.make_tensor_value_info(k, t, None) for k, t in outputs.items()],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _same(model, inputs, rtol=1e-5):
    """The importer's outputs equal onnxruntime's (relative max error, exact for ints)."""
    want = session(model).run(None, inputs)
    module = import_model(model)
    with torch.no_grad():
        got = module(*[torch.from_numpy(v) for v in inputs.values()])
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        g = g.numpy()
        assert g.shape == w.shape, (g.shape, w.shape)
        if w.dtype.kind in "biu" or not w.size:
            assert np.array_equal(g, w)
        else:
            assert np.isfinite(w).all() and np.isfinite(g).all()
            scale = max(float(np.abs(w).max()), 1e-6) if w.size else 1.0
            assert float(np.abs(g - w).max()) <= rtol * scale, float(np.abs(g - w).max())


def _x(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------- Resize

IN_SHAPES = [(1, 2, 5, 7), (1, 1, 11, 3), (1, 1, 2, 10), (1, 1, 1, 6)]
SCALES = [0.3, 0.5, 0.6, 0.7, 0.75, 1.0, 1.25, 1.5, 1.7, 2.0, 2.5, 3.0, 3.3]


def _resize_graph(mode, coord, nearest, shape, opset=13):
    """One graph: many Resize nodes (by sizes and by scales) of one (mode, coord)."""
    x = _x(*shape)
    nodes, inits, outputs = [], {}, {}
    attrs = {"mode": mode, "coordinate_transformation_mode": coord}
    if mode == "nearest":
        attrs["nearest_mode"] = nearest
    for i, (h, w) in enumerate(itertools.product(range(1, 12), [1, 2, 4, 7, 8, 14, 16, 23])):
        inits[f"sizes{i}"] = np.array([*shape[:2], h, w], np.int64)
        nodes.append(helper.make_node("Resize", ["x", "", "", f"sizes{i}"], [f"s{i}"],
                                      name=f"s{i}", **attrs))
        outputs[f"s{i}"] = FLOAT
    for i, (sh, sw) in enumerate(itertools.product(SCALES, SCALES)):
        inits[f"scales{i}"] = np.array([1, 1, sh, sw], np.float32)
        nodes.append(helper.make_node("Resize", ["x", "", f"scales{i}"], [f"f{i}"],
                                      name=f"f{i}", **attrs))
        outputs[f"f{i}"] = FLOAT
    return _model(nodes, {"x": x}, inits, outputs, opset), {"x": x}


@pytest.mark.parametrize("coord", COORDINATE_MODES)
@pytest.mark.parametrize("nearest", NEAREST_MODES)
def test_resize_nearest_every_mode(coord, nearest):
    for shape in IN_SHAPES:
        _same(*_resize_graph("nearest", coord, nearest, shape))


@pytest.mark.parametrize("coord", COORDINATE_MODES)
def test_resize_linear_every_mode(coord):
    for shape in IN_SHAPES:
        _same(*_resize_graph("linear", coord, None, shape))


def test_resize_10_and_upsample():
    x = _x(1, 2, 3, 5)
    scales = {"sc": np.array([1, 1, 2.0, 1.5], np.float32)}
    for mode in ("nearest", "linear"):
        _same(_model([helper.make_node("Resize", ["x", "sc"], ["y"], mode=mode)],
                     {"x": x}, scales, opset=10), {"x": x})
        _same(_model([helper.make_node("Upsample", ["x", "sc"], ["y"], mode=mode)],
                     {"x": x}, scales, opset=9), {"x": x})


def test_resize_with_axes():
    x = _x(1, 2, 4, 6)
    model = _model([helper.make_node("Resize", ["x", "", "", "sz"], ["y"], axes=[3, 2],
                                     mode="linear")], {"x": x},
                   {"sz": np.array([9, 5], np.int64)}, opset=18)
    _same(model, {"x": x})


# ---------------------------------------------------------------- Conv, pools

@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv_auto_pad(auto_pad, stride):
    x, w = _x(1, 3, 7, 8), _x(4, 3, 2, 3, seed=1)
    model = _model([helper.make_node("Conv", ["x", "w"], ["y"], auto_pad=auto_pad,
                                     strides=[stride, stride])], {"x": x}, {"w": w})
    _same(model, {"x": x})


POOLS = [dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
         dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
         dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
         dict(kernel_shape=[3, 2], strides=[2, 1], pads=[0, 1, 2, 0], ceil_mode=1),
         dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
         dict(kernel_shape=[2, 3], strides=[2, 2], auto_pad="SAME_LOWER"),
         dict(kernel_shape=[5, 5], strides=[1, 1], pads=[2, 2, 2, 2])]


@pytest.mark.parametrize("attrs", POOLS)
@pytest.mark.parametrize("op", ["MaxPool", "AveragePool", "AveragePool+"])
def test_pools(op, attrs):
    x = _x(1, 2, 5, 7)
    if op == "AveragePool+":
        op, attrs = "AveragePool", {**attrs, "count_include_pad": 1}
    _same(_model([helper.make_node(op, ["x"], ["y"], **attrs)], {"x": x}), {"x": x})


def test_max_pool_dilated_1d():
    x = _x(2, 3, 11)
    model = _model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3],
                                     dilations=[2], pads=[1, 2])], {"x": x})
    _same(model, {"x": x})


@pytest.mark.parametrize("attrs", [
    dict(strides=[2, 2]), dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
    dict(strides=[2, 3], pads=[0, 1, 2, 0], output_padding=[1, 0]),
    dict(strides=[2, 2], dilations=[2, 1], group=2), dict(auto_pad="VALID")])
def test_conv_transpose(attrs):
    x, w, b = _x(1, 4, 5, 6), _x(4, 3, 3, 3, seed=1), _x(3 * attrs.get("group", 1), seed=2)
    model = _model([helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **attrs)],
                   {"x": x}, {"w": w, "b": b})
    _same(model, {"x": x})


# ---------------------------------------------------------------- other operators

def _one(op, inputs, inits=None, out=FLOAT, opset=17, n_out=1, **attrs):
    outs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op, list(inputs) + list(inits or {}), outs, name=op, **attrs)
    model = _model([node], inputs, inits, dict.fromkeys(outs, out), opset)
    _same(model, inputs)


def test_elementwise():
    x, y = _x(2, 3, 4), _x(2, 3, 4, seed=1)
    for op in ("Sqrt", "Log"):
        _one(op, {"x": np.abs(x) + 0.1})
    for op in ("Exp", "Erf", "Softplus", "Neg", "Abs", "Floor", "Ceil", "Sign", "Sigmoid",
               "Softsign", "Reciprocal", "Tanh", "Round"):
        _one(op, {"x": x * 3})
    _one("Mish", {"x": x}, opset=18)
    _one("Gelu", {"x": x}, opset=20)
    _one("Gelu", {"x": x}, opset=20, approximate="tanh")
    _one("Elu", {"x": x}, alpha=0.7)
    _one("Selu", {"x": x})
    _one("PRelu", {"x": x}, {"slope": np.array([[0.1], [0.2], [0.3]], np.float32)})
    _one("Pow", {"x": np.abs(x) + 0.1}, {"e": np.array(1.7, np.float32)})
    _one("Pow", {"x": x}, {"e": np.array(2, np.int64)})
    for op in ("Min", "Max", "Sum", "Mean"):
        _one(op, {"x": x, "y": y}, {"z": np.array([0.5], np.float32)})
    for op in ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"):
        _one(op, {"x": x, "y": y}, out=BOOL)
    _one("Where", {"c": x > 0, "x": x, "y": y})
    _one("Div", {"a": np.array([7, -7, 9], np.int64), "b": np.array([2, 2, -4], np.int64)},
         out=INT64)
    _one("Mod", {"a": np.array([7, -7, 9], np.int64), "b": np.array([3, 3, -4], np.int64)},
         out=INT64)
    _one("Mod", {"a": x, "b": y + 3}, fmod=1)


def test_shape_operators():
    x = _x(2, 6, 4, 4)
    _one("Split", {"x": x}, {"s": np.array([2, 4], np.int64)}, n_out=2, axis=1)
    _one("Split", {"x": x}, n_out=3, axis=1, opset=13)
    _one("Split", {"x": x}, n_out=3, axis=2, opset=18, num_outputs=3)  # 2, 2, 0? no: 2,1,1
    _one("Split", {"x": x}, n_out=2, axis=1, opset=11, split=[1, 5])
    _one("Expand", {"x": _x(3, 1, 2)}, {"s": np.array([2, 1, 4, 1], np.int64)})
    _one("Tile", {"x": _x(2, 3)}, {"r": np.array([2, 3], np.int64)})
    _one("Einsum", {"a": _x(2, 3, 4), "b": _x(2, 4, 5)}, equation="bij, bjk -> bik")
    _one("DepthToSpace", {"x": x[:, :4]}, blocksize=2)
    _one("DepthToSpace", {"x": x[:, :4]}, blocksize=2, mode="CRD")
    _one("SpaceToDepth", {"x": x}, blocksize=2)
    _one("Range", {"a": np.array(1, np.int64), "b": np.array(9, np.int64),
                   "c": np.array(3, np.int64)}, out=INT64)
    _one("CumSum", {"x": x}, {"ax": np.array(2, np.int64)}, exclusive=1, reverse=1)
    _one("ArgMax", {"x": x}, out=INT64, axis=1, keepdims=0, select_last_index=1)
    _one("Shape", {"x": x}, out=INT64, opset=15, start=1, end=-1)
    _one("ConstantOfShape", {"s": np.array([2, 3], np.int64)}, out=INT64,
         value=numpy_helper.from_array(np.array([5], np.int64)))
    _one("Pad", {"x": x}, {"p": np.array([1, 2, 0, 3], np.int64),
                           "v": np.array(0.5, np.float32), "ax": np.array([1, 3], np.int64)},
         opset=18)
    _one("Pad", {"x": x}, {"p": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)}, mode="reflect")
    _one("Pad", {"x": x}, {"p": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)}, mode="edge")
    for op in ("ReduceMax", "ReduceMean", "ReduceL2", "ReduceLogSumExp", "ReduceProd"):
        _one(op, {"x": x}, {"ax": np.array([1, -1], np.int64)}, opset=18, keepdims=0)
    _one("ScatterND", {"x": x}, {"i": np.array([[1, 2], [0, -1]], np.int64),
                                  "u": _x(2, 4, 4, seed=3)})
    _one("ScatterND", {"x": x}, {"i": np.array([[1], [1], [0]], np.int64),
                                  "u": _x(3, 6, 4, 4, seed=3)}, opset=18, reduction="add")
    _one("ScatterElements", {"x": x}, {"i": np.array([[[[0, 5, -1, 2]]]], np.int64),
                                        "u": _x(1, 1, 1, 4, seed=3)}, axis=1)
    _one("GatherND", {"x": x}, {"i": np.array([[1, 2], [0, -1], [1, 0]], np.int64)})
    _one("GatherND", {"x": x}, {"i": np.array([[[3], [0]], [[1], [1]]], np.int64)},
         batch_dims=1)
    _one("Softmax", {"x": x}, opset=11, axis=1)
    _one("Softmax", {"x": x}, opset=13, axis=1)


def test_normalizations():
    x = _x(2, 6, 4, 5)
    c = {"s": _x(6, seed=1), "b": _x(6, seed=2)}
    _one("InstanceNormalization", {"x": x}, c, epsilon=1e-3)
    _one("LayerNormalization", {"x": x}, {"s": _x(4, 5, seed=1), "b": _x(5, seed=2)},
         axis=2)
    _one("GroupNormalization", {"x": x}, c, opset=21, num_groups=3)
    _one("LRN", {"x": x}, size=3, alpha=1e-2)


# ---------------------------------------------------------------- refusals

def test_unknown_and_unmatched_nodes_refused_together():
    x = _x(1, 2, 4, 4)
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="ok"),
             helper.make_node("FancyOp", ["a"], ["b"], name="fancy", domain="custom.ops"),
             helper.make_node("Celu", ["b"], ["c"], name="celu1"),
             helper.make_node("Celu", ["c"], ["d"], name="celu2"),
             helper.make_node("Resize", ["d", "", "sc"], ["e"], name="up", mode="cubic"),
             helper.make_node("Resize", ["e", "", "sc"], ["f"], name="crop",
                              coordinate_transformation_mode="tf_crop_and_resize")]
    model = _model(nodes, {"x": x}, {"sc": np.array([1, 1, 2, 2], np.float32)})
    with pytest.raises(ModelError) as err:
        import_model(model)
    message = str(err.value)
    assert "\n" not in message and "cannot map 5 node(s)" in message
    for part in ("custom.ops.FancyOp (node 'fancy')", "Celu (nodes 'celu1', 'celu2')",
                 "Resize mode=cubic (node 'up')",
                 "Resize coordinate_transformation_mode=tf_crop_and_resize (node 'crop')"):
        assert part in message


@pytest.mark.parametrize("node", [
    helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="n", auto_pad="SAME_UPPER"),
    helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="n", output_shape=[8, 8]),
    helper.make_node("AveragePool", ["x"], ["y"], name="n", kernel_shape=[2, 2],
                     dilations=[2, 2]),
    helper.make_node("MaxPool", ["x"], ["y", "i"], name="n", kernel_shape=[2, 2]),
    helper.make_node("Resize", ["x", "", "w"], ["y"], name="n", antialias=1, mode="linear"),
])
def test_unmatched_settings_refused(node):
    model = onnx.ModelProto()
    model.graph.node.append(node)
    with pytest.raises(ModelError, match=f"{node.op_type} .*node 'n'"):
        import_model(model)
