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


STRUCTURE_KINDS = ("names", "graph inputs", "sparse tensors", "metadata")
NAME_POOL = ["", "a", "conv1", "conv3", "conv3_kse_weight", "conv3_kse_keep", "Conv_0",
             "Conv_0_1", "u1_conv3_kse_weight", "x", "\x1b[31m", "\u202e", "n" * 300]


def mutate_structure(model: onnx.ModelProto, seed: int, folder) -> tuple[str, bytes]:
    """(kind, serialized model) of one structural mutation that still parses: node and
    tensor names (duplicates, generated-looking, escapes), the graph input list (IR 3,
    initializers as overridable inputs), sparse tensors (inline or external data with odd
    locations and fields; files written to ``folder``) or, for "metadata", the model as
    is (:func:`mutate_metadata` changes the optimized output)."""
    rng = np.random.default_rng(seed)
    kind = STRUCTURE_KINDS[seed % len(STRUCTURE_KINDS)]
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    if kind == "names":
        for node in g.node:
            if rng.random() < 0.4:
                node.name = str(rng.choice(NAME_POOL))
        fixed = {v.name for v in (*g.input, *g.output)}
        internal = sorted({o for n in g.node for o in n.output} - fixed)
        existing = fixed | {i.name for i in g.initializer} | set(internal)
        pool = [n for n in NAME_POOL if n and n not in existing]  # tensors stay SSA
        rng.shuffle(pool)
        mapping = dict(zip([t for t in internal if rng.random() < 0.5], pool, strict=False))
        for node in g.node:
            node.input[:] = [mapping.get(t, t) for t in node.input]
            node.output[:] = [mapping.get(t, t) for t in node.output]
    elif kind == "graph inputs":
        m.ir_version = int(rng.choice([3, 4, 8]))
        for init in g.initializer:
            if m.ir_version == 3 or rng.random() < 0.3:
                g.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type,
                                                                  list(init.dims)))
    elif kind == "sparse tensors":
        n = int(rng.integers(1, 6))
        values = onnx.numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "sp")
        indices = onnx.numpy_helper.from_array(np.sort(rng.choice(32, n, replace=False))
                                               .astype(np.int64), "sp_i")
        sparse = onnx.helper.make_sparse_tensor(values, indices, [32])
        if rng.random() < 0.7:
            (folder / "w.bin").write_bytes(rng.standard_normal(8).astype(np.float32).tobytes())
            target = sparse.values if rng.random() < 0.7 else sparse.indices
            target.ClearField("float_data")
            target.ClearField("int64_data")
            target.data_location = onnx.TensorProto.EXTERNAL
            fields = {"location": str(rng.choice(["w.bin", "../w.bin", "/etc/hostname",
                                                  "w.bin\0", "", "missing.bin", "."])),
                      "offset": str(rng.choice(["0", "4", "-1", "x", "99999999999", ""])),
                      "length": str(rng.choice([str(4 * n), "0", "-4", "1e9", "8"]))}
            for key, value in fields.items():
                if rng.random() < 0.85:
                    entry = target.external_data.add()
                    entry.key, entry.value = key, value
        g.sparse_initializer.append(sparse)
    return kind, m.SerializeToString()


def mutate_metadata(model: onnx.ModelProto, seed: int) -> None:
    """Replace values of the kse-onnx settings recorded in ``model`` (in place) by odd
    ones: huge, negative, wrong types, invalid JSON."""
    import json

    rng = np.random.default_rng(seed)
    entry = next((p for p in model.metadata_props if p.key == "kse_onnx"), None)
    if entry is None:
        return
    if rng.random() < 0.1:
        entry.value = entry.value[: int(rng.integers(0, len(entry.value)))]
        return
    settings = json.loads(entry.value)
    odd = [10**12, -1, 0, 1.5, "x", None, [], {}, ["*" * 5000], True, float("inf")]
    for key in rng.choice(sorted(settings), int(rng.integers(1, 4)), replace=False):
        settings[str(key)] = odd[int(rng.integers(0, len(odd)))]
    entry.value = json.dumps(settings)
