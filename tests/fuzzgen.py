"""Random small CNN graphs and byte mutations, for the fuzz tests and tools/fuzz.py."""

from __future__ import annotations

import numpy as np
import onnx

from graphs import GraphBuilder

ACTIVATIONS = ("Relu", "LeakyRelu", "Sigmoid", "Clip", "HardSwish")


def random_cnn(seed: int) -> onnx.ModelProto:
    """Conv stacks of random widths, kernels, strides, dilations, with residual Adds,
    Concats, depthwise convs, BN, pooling and activations; dynamic batch."""
    rng = np.random.default_rng(seed)
    c, hw = int(rng.integers(1, 5)), int(rng.integers(5, 13))
    b = GraphBuilder(c, hw, seed)
    x = b.input.name
    for _ in range(int(rng.integers(2, 7))):
        kind = rng.choice(["conv", "conv", "residual", "concat", "depthwise", "pool"])
        if kind == "conv" or (kind == "residual" and c < 2):
            width = int(rng.integers(1, 41))
            k = int(rng.choice([1, 3, 5]))
            stride = 2 if (hw >= 4 and rng.random() < 0.3) else 1
            x = b.conv(x, c, width, k=k, stride=stride, dilation=int(rng.choice([1, 1, 2])),
                       bias=bool(rng.random() < 0.5))
            c, hw = width, (hw + stride - 1) // stride
            if rng.random() < 0.6:
                x = b.bn(x, c)
        elif kind == "residual":
            y = _activation(b, b.bn(b.conv(x, c, c), c), rng)
            x = b.op("Add", [x, b.conv(y, c, c)])
        elif kind == "concat":
            width = int(rng.integers(1, 21))
            left, right = b.conv(x, c, width), b.conv(x, c, width, k=1)
            x, c = b.op("Concat", [left, right], axis=1), 2 * width
        elif kind == "depthwise":
            x = b.conv(x, c, c, group=c)
        elif hw >= 2:
            pool = "MaxPool" if rng.random() < 0.5 else "AveragePool"
            x = b.op(pool, [x], kernel_shape=[2, 2], strides=[2, 2])
            hw //= 2
        x = _activation(b, x, rng)
    return b.model(b.head(x, c), opset=int(rng.choice([11, 13, 17])))


def _activation(b: GraphBuilder, x: str, rng) -> str:
    op = str(rng.choice(ACTIVATIONS))
    if op == "Clip" and b.count % 2:
        return b.op("Clip", [x, b.const(np.float32(0)), b.const(np.float32(6))])
    if op == "Clip" or (op == "HardSwish"):
        return b.op("Relu", [x])
    return b.op(op, [x])


def mutate(data: bytes, seed: int) -> bytes:
    """Flip, overwrite, insert or cut bytes of a serialized model."""
    rng = np.random.default_rng(seed)
    buf = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        pos = int(rng.integers(0, len(buf))) if buf else 0
        action = rng.integers(0, 4)
        if action == 0 and buf:
            buf[pos] ^= 1 << int(rng.integers(0, 8))
        elif action == 1 and buf:
            buf[pos] = int(rng.integers(0, 256))
        elif action == 2:
            buf[pos:pos] = bytes(rng.integers(0, 256, int(rng.integers(1, 16))).astype(np.uint8))
        else:
            buf = buf[:pos]
    return bytes(buf)


def mutate_fields(model: onnx.ModelProto, seed: int) -> bytes:
    """Structured mutations that still parse: dims, dtypes, attributes, op types, inputs."""
    rng = np.random.default_rng(seed)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for _ in range(int(rng.integers(1, 4))):
        action = int(rng.integers(0, 6))
        node = g.node[int(rng.integers(0, len(g.node)))]
        init = g.initializer[int(rng.integers(0, len(g.initializer)))]
        if action == 0 and init.dims:
            init.dims[int(rng.integers(0, len(init.dims)))] = int(rng.choice([0, 1, 3, 10**7]))
        elif action == 1:
            init.data_type = int(rng.choice([1, 2, 6, 7, 10, 11, 16]))
        elif action == 2 and node.attribute:
            attr = node.attribute[int(rng.integers(0, len(node.attribute)))]
            if attr.ints:
                attr.ints[0] = int(rng.integers(-2, 6))
            else:
                attr.i = int(rng.integers(-2, 40))
        elif action == 3:
            node.op_type = str(rng.choice(["Conv", "Relu", "Add", "Gemm", "Nope"]))
        elif action == 4 and node.input:
            node.input[int(rng.integers(0, len(node.input)))] = str(
                rng.choice([i.name for i in g.initializer] + ["", "missing"]))
        else:
            m.opset_import[0].version = int(rng.integers(1, 25))
    return m.SerializeToString()
