"""Small ONNX graphs built in code for the tests; the builder, ``conv_stack``,
``residual_net`` and ``photo_batch`` are in tools/graphs.py, shared with the tools."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tools.graphs import GraphBuilder, conv_stack, photo_batch, residual_net  # noqa: F401


def branchy_net(width: int = 24, hw: int = 8, seed: int = 0, opset: int = 17):
    """Concat of two branches, a depthwise conv, a Constant-node weight and a Mul by a
    per-channel constant between a Conv and its consumer."""
    b = GraphBuilder(3, hw, seed)
    stem = b.relu(b.conv(b.input.name, 3, width))
    left = b.relu(b.conv(stem, width, width))
    right = b.relu(b.conv(stem, width, width, k=1))
    cat = b.op("Concat", [left, right], axis=1)
    x = b.relu(b.bn(b.conv(cat, 2 * width, width), width))
    x = b.conv(x, width, width, group=width)  # depthwise
    scale = b.const(b.rng.uniform(0.5, 1.5, (1, width, 1, 1)).astype(np.float32))
    x = b.op("Mul", [b.conv(x, width, width), scale])
    w = (b.rng.standard_normal((width, width, 3, 3)) * 0.1).astype(np.float32)
    const_out = b.fresh_name("constw")
    b.nodes.append(helper.make_node("Constant", [], [const_out], name=const_out,
                                    value=numpy_helper.from_array(w)))
    x = b.relu(x)
    x = b.op("Conv", [x, const_out], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    return b.model(b.head(x, width), opset)


def cast_model(model: onnx.ModelProto, elem_type: int) -> onnx.ModelProto:
    """The same model with every float tensor (initializers, inputs, outputs) in
    ``elem_type`` (TensorProto.FLOAT16, BFLOAT16 or DOUBLE)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
    for i, init in enumerate(out.graph.initializer):
        if init.data_type == TensorProto.FLOAT:
            values = numpy_helper.to_array(init).astype(dtype)
            out.graph.initializer[i].CopyFrom(numpy_helper.from_array(values, init.name))
    for node in out.graph.node:
        for attr in node.attribute:
            if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                values = numpy_helper.to_array(attr.t).astype(dtype)
                attr.t.CopyFrom(numpy_helper.from_array(values, attr.t.name))
    for value in (*out.graph.input, *out.graph.output):
        value.type.tensor_type.elem_type = elem_type
    return out


def biases_as_constant_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with every Conv bias produced by a ``Constant`` node instead of an
    initializer (as some exporters write them)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    biases = {n.input[2] for n in out.graph.node if n.op_type == "Conv" and len(n.input) > 2}
    inits = [i for i in out.graph.initializer if i.name in biases]
    constants = [helper.make_node("Constant", [], [i.name], name=f"{i.name}_const", value=i)
                 for i in inits]
    for init in inits:
        out.graph.initializer.remove(init)
    nodes = constants + list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    onnx.checker.check_model(out, full_check=True)
    return out


def residual_prefix(width: int, hw: int, seed: int):
    """(builder, x, y): a stem and an identity block give ``x`` (width channels); ``y`` is
    the main branch of a downsampling block (conv stride 2 to 2*width, relu, conv), whose
    shortcut and Add the caller writes."""
    b = GraphBuilder(3, hw, seed)
    x = b.relu(b.conv(b.input.name, 3, width))
    y = b.conv(b.relu(b.conv(x, width, width)), width, width)
    x = b.relu(b.op("Add", [x, y]))
    wide = 2 * width
    y = b.conv(b.relu(b.conv(x, width, wide, stride=2)), wide, wide)
    return b, x, y


def folded_resnet(width: int = 16, hw: int = 8, seed: int = 0) -> onnx.ModelProto:
    """BatchNorm-folded residual net as exporters write it: stem, an identity block
    (conv-relu-conv-Add-relu) and a downsampling block whose shortcut is a strided 1x1
    conv (both branches of its Add end in a Conv), then the classifier head."""
    b, x, y = residual_prefix(width, hw, seed)
    wide = 2 * width
    shortcut = b.conv(x, width, wide, k=1, stride=2)
    x = b.relu(b.op("Add", [shortcut, y]))
    return b.model(b.head(x, wide))
def tiny_unet(hw: int = 16, seed: int = 0, opset: int = 17):
    """Encoder conv, 2x2 max pooling, a ConvTranspose and a linear (pytorch_half_pixel)
    Resize back up, Concat skip connection, per-pixel logits of 3 classes."""
    b = GraphBuilder(3, hw, seed)
    e1 = b.relu(b.conv(b.input.name, 3, 16))
    e2 = b.relu(b.bn(b.conv(e1, 16, 16), 16))
    pooled = b.op("MaxPool", [e2], kernel_shape=[2, 2], strides=[2, 2])
    mid = b.relu(b.bn(b.conv(pooled, 16, 32), 32))
    w = (b.rng.standard_normal((32, 8, 2, 2)) * 0.25).astype(np.float32)
    up1 = b.op("ConvTranspose", [mid, b.const(w)], kernel_shape=[2, 2], strides=[2, 2])
    scales = b.const(np.array([1, 1, 2, 2], np.float32))
    up2 = b.op("Resize", [b.conv(mid, 32, 8, k=1), "", scales], mode="linear",
               coordinate_transformation_mode="pytorch_half_pixel")
    x = b.op("Concat", [up1, up2, e2], axis=1)
    x = b.relu(b.bn(b.conv(x, 32, 16), 16))
    return b.model(b.conv(x, 16, 3, k=1), opset, ("batch", 3, hw, hw))


def tiny_detector(hw: int = 16, seed: int = 0, opset: int = 17, anchors: int = 3,
                  fields: int = 6):
    """YOLO-style: Conv-SiLU (Sigmoid * x), a Split/Concat block, nearest 2x Resize and
    Concat, a 1x1 head reshaped and transposed to (batch, boxes, fields), sigmoid."""
    b = GraphBuilder(3, hw, seed)
    c1 = b.silu(b.conv(b.input.name, 3, 16, stride=2))
    c2 = b.silu(b.bn(b.conv(c1, 16, 32, stride=2), 32))
    half = b.const(np.array([16, 16], np.int64))
    left, right = f"{c2}_a", f"{c2}_b"
    b.nodes.append(helper.make_node("Split", [c2, half], [left, right], name="split", axis=1))
    x = b.op("Concat", [left, b.silu(b.bn(b.conv(right, 16, 16), 16))], axis=1)
    up = b.op("Resize", [x, "", b.const(np.array([1, 1, 2, 2], np.float32))],
              mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    x = b.silu(b.bn(b.conv(b.op("Concat", [up, c1], axis=1), 48, 32), 32))
    head = b.conv(x, 32, anchors * fields, k=1)
    cells = (hw // 2) ** 2
    y = b.op("Reshape", [head, b.const(np.array([0, anchors, fields, cells], np.int64))])
    y = b.op("Transpose", [y], perm=[0, 1, 3, 2])
    y = b.op("Reshape", [y, b.const(np.array([0, -1, fields], np.int64))])
    return b.model(b.op("Sigmoid", [y]), opset, ("batch", anchors * cells, fields))


def shuffle_net(batch: int = 2, width: int = 16, hw: int = 8, seed: int = 0):
    """A ShuffleNet-style channel shuffle whose Reshape holds the batch the input fixes
    (torch.onnx.export without dynamic axes writes such graphs): stem, conv, shuffle,
    conv, head."""
    b = GraphBuilder(3, hw, seed)
    b.input = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, hw, hw])
    x = b.relu(b.conv(b.input.name, 3, width))
    x = b.relu(b.bn(b.conv(x, width, width), width))
    split = b.const(np.array([batch, 2, width // 2, hw, hw], np.int64))
    x = b.op("Transpose", [b.op("Reshape", [x, split])], perm=[0, 2, 1, 3, 4])
    x = b.op("Reshape", [x, b.const(np.array([batch, width, hw, hw], np.int64))])
    x = b.relu(b.bn(b.conv(x, width, width), width))
    return b.model(b.head(x, width), shape=(batch, 10))


def pixel_score_detector(hw: int = 8, seed: int = 0, frame: float = 640.0):
    """YOLOv8's export head in small: boxes in pixels of a ``frame``-wide image
    (``frame x Sigmoid(conv)``) and class scores ``Sigmoid(conv - 4)`` (mostly near 0)
    joined by one Concat into (batch, 8, hw * hw), after two Conv-BN-Relu."""
    b = GraphBuilder(3, hw, seed)
    x = b.relu(b.bn(b.conv(b.input.name, 3, 16), 16))
    x = b.relu(b.bn(b.conv(x, 16, 16), 16))
    boxes = b.op("Mul", [b.op("Sigmoid", [b.conv(x, 16, 4, k=1)]),
                         b.const(np.array(frame, np.float32))])
    logits = b.op("Add", [b.conv(x, 16, 4, k=1), b.const(np.array(-4.0, np.float32))])
    y = b.op("Concat", [boxes, b.op("Sigmoid", [logits])], axis=1)
    y = b.op("Reshape", [y, b.const(np.array([0, 8, hw * hw], np.int64))])
    return b.model(y, 17, ("batch", 8, hw * hw))


def unbatched_detector(hw: int = 16, seed: int = 0, batched: bool = False):
    """torchvision's detectors as exported: one image [3, hw, hw] without a batch axis,
    in-graph preprocessing (Sub, Div, Unsqueeze, a Gather dropping the axis again and an
    Unsqueeze restoring it, as the image batching does), a small backbone (stem, two
    3x3 convs with a residual Add), box and score heads, then NonMaxSuppression: outputs
    boxes [k, 4] and scores [k], k depending on the image. ``batched``: the same weights
    on a batched input (batch, 3, hw, hw), ending at the heads (boxes (batch, 4, hw, hw),
    scores (batch, 1, hw, hw)): the refit of both must agree."""
    b = GraphBuilder(3, hw, seed)
    if batched:
        x = b.input.name
    else:
        b.input = helper.make_tensor_value_info("image", TensorProto.FLOAT, [3, hw, hw])
        mean = b.const(np.array([0.4, 0.45, 0.5], np.float32).reshape(3, 1, 1))
        std = b.const(np.array([0.25, 0.25, 0.25], np.float32).reshape(3, 1, 1))
        x = b.op("Div", [b.op("Sub", [b.input.name, mean]), std])
        axis = b.const(np.array([0], np.int64))
        x = b.op("Gather", [b.op("Unsqueeze", [x, axis]), b.const(np.array(0, np.int64))],
                 axis=0)
        x = b.op("Unsqueeze", [x, axis])
    if batched:  # the same arithmetic as the preprocessing above, on (batch, 3, hw, hw)
        mean = b.const(np.array([0.4, 0.45, 0.5], np.float32).reshape(1, 3, 1, 1))
        std = b.const(np.array([0.25, 0.25, 0.25], np.float32).reshape(1, 3, 1, 1))
        x = b.op("Div", [b.op("Sub", [x, mean]), std])
    stem = b.relu(b.conv(x, 3, 16))
    y = b.conv(b.relu(b.conv(stem, 16, 16)), 16, 16)
    x = b.relu(b.op("Add", [stem, y]))
    boxes = b.conv(x, 16, 4, k=1)
    scores = b.op("Sigmoid", [b.conv(x, 16, 1, k=1)])
    if batched:
        outs = [helper.make_tensor_value_info(boxes, TensorProto.FLOAT, ["batch", 4, hw, hw]),
                helper.make_tensor_value_info(scores, TensorProto.FLOAT, ["batch", 1, hw, hw])]
    else:
        cells = hw * hw
        boxes = b.op("Transpose", [b.op("Reshape", [boxes, b.const(np.array(
            [1, 4, cells], np.int64))])], perm=[0, 2, 1])  # [1, cells, 4]
        scores = b.op("Reshape", [scores, b.const(np.array([1, 1, cells], np.int64))])
        picked = b.op("NonMaxSuppression", [boxes, scores, b.const(np.array([8], np.int64)),
                                             b.const(np.array([0.3], np.float32)),
                                             b.const(np.array([0.5], np.float32))])
        index = b.op("Gather", [picked, b.const(np.array(2, np.int64))], axis=1)  # [k]
        kept_boxes = b.op("Gather", [b.op("Squeeze", [boxes, b.const(np.array([0], np.int64))]),
                                     index], axis=0)
        kept_scores = b.op("Gather", [b.op("Reshape", [scores, b.const(np.array(
            [-1], np.int64))]), index], axis=0)
        outs = [helper.make_tensor_value_info(kept_boxes, TensorProto.FLOAT, ["k", 4]),
                helper.make_tensor_value_info(kept_scores, TensorProto.FLOAT, ["k"])]
    graph = helper.make_graph(b.nodes, "detector", [b.input], outs, b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model
