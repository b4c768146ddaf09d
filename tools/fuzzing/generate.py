"""Random small CNN graphs, byte and structure mutations, damaged data files: the inputs of
the fuzz cases (tools/fuzzing/cases.py)."""

from __future__ import annotations

import numpy as np
import onnx

from tools.graphs import GraphBuilder

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


# --- data files (tools/scripts/fuzz.py --data): every reader of user images --------------------

DATA_KINDS = ("npz", "idx", "gz", "folder")
# mutation -> whether the result is certainly bad data (exit 0 on it is a failure)
DATA_MUTATIONS = {"valid": False, "random bytes": True, "truncate": True, "flip": False,
                  "dtype": True, "pickle": True, "huge header": True, "shape": True,
                  "values": True, "labels": True, "empty": True}


def _image_array(rng, n: int, channels: int, hw: int) -> np.ndarray:
    """Valid images for a model input of (channels, hw, hw), in a random dtype/layout."""
    dtype = rng.choice(["uint8", "float32", "float64", "int16", "float16"])
    x = rng.integers(0, 256, (n, channels, hw, hw)) if dtype in ("uint8", "int16") else \
        rng.random((n, channels, hw, hw))
    x = x.astype(dtype)
    if channels == 3 and rng.random() < 0.3:
        x = x.transpose(0, 2, 3, 1)  # NHWC
    return x


def _idx_bytes(values: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, values.ndim]) + np.array(values.shape, ">u4").tobytes()
    return header + values.astype(np.uint8).tobytes()


def _bad_array(rng, mutation: str, x: np.ndarray) -> np.ndarray:
    if mutation == "dtype":
        choice = int(rng.integers(0, 5))
        return [x.astype(str), x.astype(np.complex64), x.astype(bool),
                np.zeros(len(x), [("a", "f4"), ("b", "i2")]),
                x.astype("datetime64[s]") if x.dtype.kind in "iu" else x.astype(str)][choice]
    if mutation == "pickle":
        return np.array([object(), x], dtype=object)
    if mutation == "shape":
        return [x[:, :, 0, 0], x[None], np.repeat(x[:, :1], 16, 1) if x.shape[1] in (1, 3)
                else x[:, :, :, :1].repeat(16, 3), x.reshape(-1)][int(rng.integers(0, 4))]
    if mutation == "values":
        y = x.astype(np.float64)
        y.flat[int(rng.integers(0, y.size))] = rng.choice([np.nan, np.inf, -np.inf, 1e39])
        return y
    if mutation == "empty":
        return x[:0] if rng.random() < 0.5 else x[:, :, :0]
    return x


def _npz_with_huge_header(path, rng) -> None:
    import zipfile

    shape = tuple(int(v) for v in rng.choice([2**31, 10**9, 7, 2**40], int(rng.integers(1, 5))))
    with zipfile.ZipFile(path, "w") as archive, archive.open("x.npy", "w") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                 "shape": shape})
        f.write(bytes(int(rng.integers(0, 64))))


def data_case(seed: int) -> tuple[str, str, np.random.Generator]:
    """(format, mutation, the generator that draws the rest) of data case ``seed``."""
    rng = np.random.default_rng(seed)
    return DATA_KINDS[seed % len(DATA_KINDS)], str(rng.choice(sorted(DATA_MUTATIONS))), rng


def random_data_file(seed: int, folder, channels: int = 3, hw: int = 8):
    """(kind, mutation, certainly bad, path) of one data file for a model input of
    (channels, hw, hw), valid or damaged (``DATA_MUTATIONS``), written in ``folder``."""
    import gzip

    kind, mutation, rng = data_case(seed)
    n = int(rng.integers(1, 7))
    x = _image_array(rng, n, channels, hw)
    y = rng.integers(0, 10, n)
    if kind == "folder":
        return _random_folder(rng, folder, mutation, x, y)
    if kind == "npz":
        path = folder / "data.npz"
        if mutation == "huge header":
            _npz_with_huge_header(path, rng)
            return kind, mutation, True, path
        arrays = {"x": _bad_array(rng, mutation, x)}
        if mutation == "labels":
            arrays["y"] = [y.astype(str), -y - 1, np.append(y, 1), y[:, None], y + 0.5,
                           y + 10**4][int(rng.integers(0, 6))]
        elif rng.random() < 0.5:
            arrays["y"] = y
        np.savez(path, **arrays) if rng.random() < 0.5 else np.savez_compressed(path, **arrays)
    else:
        path = folder / ("data-images-idx3-ubyte" + (".gz" if kind == "gz" else ""))
        images = x if x.ndim == 4 and x.shape[1] == channels else x.transpose(0, 3, 1, 2)
        values = images[:, 0] if channels == 1 else images.reshape(n, -1, hw)
        data = _idx_bytes(values.astype(np.uint8) if mutation != "empty" else values[:0])
        if mutation == "huge header":
            data = data[:4] + np.array(rng.integers(2**20, 2**32, values.ndim), ">u4"
                                       ).tobytes() + data[4 + 4 * values.ndim:]
        elif mutation == "shape":
            data = data[:3] + bytes([int(rng.choice([0, 1, 2, 5]))]) + data[4:]
        elif mutation in ("dtype", "pickle", "values"):
            data = data[:2] + bytes([int(rng.choice([0, 1, 7, 0x0A, 0xFF]))]) + data[3:]
        elif mutation == "labels":
            labels = folder / path.name.replace("images-idx3", "labels-idx1")
            bad = [np.append(y, 1), y[:-1]][int(rng.integers(0, 2))]
            raw = _idx_bytes(bad)
            labels.write_bytes(gzip.compress(raw) if kind == "gz" else raw)
        path.write_bytes(gzip.compress(data) if kind == "gz" else data)
    _damage_bytes(rng, path, mutation)
    return kind, mutation, DATA_MUTATIONS[mutation], path


def _damage_bytes(rng, path, mutation: str) -> None:
    data = path.read_bytes()
    if mutation == "random bytes":
        data = bytes(rng.integers(0, 256, int(rng.integers(0, 400))).astype(np.uint8))
    elif mutation == "truncate":
        data = data[:int(rng.integers(0, len(data)))]
    elif mutation == "flip":
        buf = bytearray(data)
        for _ in range(int(rng.integers(1, 6))):
            buf[int(rng.integers(0, len(buf)))] ^= 1 << int(rng.integers(0, 8))
        data = bytes(buf)
    path.write_bytes(data)


def _random_folder(rng, folder, mutation: str, x: np.ndarray, y: np.ndarray):
    """An image folder (one sub-folder per class) of PNGs, valid or damaged."""
    from PIL import Image

    root = folder / "images"
    images = x if x.shape[-1] in (1, 3) and x.ndim == 4 and x.shape[1] not in (1, 3) \
        else x.transpose(0, 2, 3, 1)
    images = (images.astype(np.float64) * (255 if x.dtype.kind == "f" else 1)).clip(0, 255)
    files = []
    for i, (image, label) in enumerate(zip(images.astype(np.uint8), y % 3, strict=True)):
        (root / f"c{label}").mkdir(parents=True, exist_ok=True)
        files.append(root / f"c{label}" / f"{i}.png")
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(files[-1])
    bad = DATA_MUTATIONS[mutation]
    target = files[int(rng.integers(0, len(files)))]
    if mutation in ("random bytes", "truncate", "flip"):
        _damage_bytes(rng, target, mutation)
        bad = mutation == "random bytes"  # PIL decodes a PNG cut after its pixel data
    elif mutation == "shape":  # one image of another size
        Image.new("RGB", (5, 7)).save(target)
    elif mutation == "empty":
        for f in files:
            f.unlink()
    elif mutation in ("dtype", "pickle", "values", "huge header", "labels"):
        target.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 256, 64)
                                                        .astype(np.uint8)))
    return "folder", mutation, bad, root
