"""Small ONNX graphs and image batches built in code: a graph builder, two small CNNs and
photographs as input. Shared by the tests (tests/graphs.py builds its other graphs on
them) and the tools (the fuzz cases, the torchvision import checks), so that tools never
import tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class GraphBuilder:
    """Appends nodes to one graph; each method returns its output tensor name."""

    def __init__(self, channels: int, hw: int = 8, seed: int = 0, name: str = "x"):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.input = helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                   ["batch", channels, hw, hw])
        self.count = 0

    def fresh_name(self, op: str) -> str:
        self.count += 1
        return f"{op.lower()}{self.count}"

    def const(self, values: np.ndarray, name: str | None = None) -> str:
        name = name or self.fresh_name("w")
        self.inits.append(numpy_helper.from_array(np.asarray(values), name))
        return name

    def conv(self, x: str, c_in: int, c_out: int, k: int = 3, stride: int = 1,
             group: int = 1, bias: bool = True, dilation: int = 1) -> str:
        name = self.fresh_name("conv")
        w = self.rng.standard_normal((c_out, c_in // group, k, k)).astype(np.float32)
        w *= np.sqrt(2.0 / (c_in // group * k * k))
        inputs = [x, self.const(w, f"{name}.weight")]
        if bias:
            inputs.append(self.const(self.rng.standard_normal(c_out).astype(np.float32) * 0.1,
                                     f"{name}.bias"))
        pad = dilation * (k - 1) // 2
        self.nodes.append(helper.make_node(
            "Conv", inputs, [name], name=name, kernel_shape=[k, k], strides=[stride, stride],
            pads=[pad] * 4, group=group, dilations=[dilation, dilation]))
        return name

    def bn(self, x: str, c: int) -> str:
        name = self.fresh_name("bn")
        r = self.rng
        params = [r.uniform(0.5, 1.5, c), r.standard_normal(c) * 0.1,
                  r.standard_normal(c) * 0.1, r.uniform(0.5, 1.5, c)]
        inputs = [x] + [self.const(p.astype(np.float32)) for p in params]
        self.nodes.append(helper.make_node("BatchNormalization", inputs, [name], name=name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        name = self.fresh_name(op_type)
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
        return name

    def relu(self, x: str) -> str:
        return self.op("Relu", [x])

    def head(self, x: str, c: int, classes: int = 10) -> str:
        pooled = self.op("GlobalAveragePool", [x])
        flat = self.op("Flatten", [pooled], axis=1)
        w = self.const((self.rng.standard_normal((classes, c)) * 0.1).astype(np.float32))
        b = self.const(np.zeros(classes, np.float32))
        return self.op("Gemm", [flat, w, b], transB=1)

    def silu(self, x: str) -> str:
        return self.op("Mul", [x, self.op("Sigmoid", [x])])

    def model(self, output: str, opset: int = 17, shape=("batch", 10)) -> onnx.ModelProto:
        out = helper.make_tensor_value_info(output, TensorProto.FLOAT, list(shape))
        graph = helper.make_graph(self.nodes, "test", [self.input], [out], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model


def conv_stack(widths=(3, 16, 32, 32), hw: int = 8, seed: int = 0, opset: int = 17):
    """Conv-BN-Relu stack of the given widths plus a classifier head."""
    b = GraphBuilder(widths[0], hw, seed)
    x = b.input.name
    for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
        x = b.relu(b.bn(b.conv(x, c_in, c_out), c_out))
    return b.model(b.head(x, widths[-1]), opset)


def residual_net(width: int = 16, hw: int = 8, seed: int = 0):
    """stem conv, two residual blocks (conv-relu-conv + identity), head."""
    b = GraphBuilder(3, hw, seed)
    x = b.relu(b.conv(b.input.name, 3, width))
    for _ in range(2):
        y = b.relu(b.bn(b.conv(x, width, width), width))
        y = b.bn(b.conv(y, width, width), width)
        x = b.relu(b.op("Add", [x, y]))
    return b.model(b.head(x, width))


def photo_batch(shape, seed: int = 0) -> np.ndarray:
    """Crops of scikit-learn's sample photographs, normalised per channel: realistic
    image statistics (smooth, correlated pixels) for inputs of any (B, C, H, W)."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = [img.astype(np.float32) / 255.0 for img in load_sample_images().images]
    b, c, h, w = shape
    out = np.empty(shape, np.float32)
    for i in range(b):
        img = photos[i % len(photos)]
        step = max(1, min(4, (img.shape[0] - 1) // h, (img.shape[1] - 1) // w))
        y = rng.integers(0, img.shape[0] - step * h)
        x = rng.integers(0, img.shape[1] - step * w)
        crop = img[y:y + step * h:step, x:x + step * w:step]  # (h, w, 3), subsampled
        for ch in range(c):
            out[i, ch] = crop[:, :, ch % 3]
    out -= out.mean(axis=(0, 2, 3), keepdims=True)
    out /= out.std(axis=(0, 2, 3), keepdims=True) + 1e-6
    return out
