"""torch implementations of the ONNX operators common in exported CNNs.

Each entry takes the node's inputs (tensors, None for an omitted optional input) and
its attributes, and returns the output (or a tuple of outputs). Shape-like inputs are
integer tensors and are turned into Python ints.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _ints(t) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


def _torch_pads(pads) -> list[int]:
    """ONNX pads [b1, b2, ..., e1, e2, ...] -> F.pad order (last axis first)."""
    half = len(pads) // 2
    out = []
    for i in reversed(range(half)):
        out += [pads[i], pads[i + half]]
    return out


def conv(args, a):
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else None
    spatial = w.dim() - 2
    pads = a.get("pads", [0] * 2 * spatial)
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise NotImplementedError("Conv auto_pad")
    x = F.pad(x, _torch_pads(pads)) if any(pads) else x
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[spatial]
    return fn(x, w, b, a.get("strides", [1] * spatial), 0, a.get("dilations", [1] * spatial),
              a.get("group", 1))


def batchnorm(args, a):
    x, scale, bias, mean, var = args[:5]
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, a.get("epsilon", 1e-5))


def gemm(args, a):
    x, w = args[0], args[1]
    x = x.t() if a.get("transA", 0) else x
    w = w.t() if a.get("transB", 0) else w
    y = a.get("alpha", 1.0) * (x @ w)
    if len(args) > 2 and args[2] is not None:
        y = y + a.get("beta", 1.0) * args[2]
    return y


def clip(args, a):
    low = args[1] if len(args) > 1 and args[1] is not None else a.get("min")
    high = args[2] if len(args) > 2 and args[2] is not None else a.get("max")
    return torch.clamp(args[0], None if low is None else float(low),
                       None if high is None else float(high))


def pool(kind):
    def run(args, a):
        x = args[0]
        k = a["kernel_shape"]
        pads = a.get("pads", [0] * 2 * len(k))
        strides = a.get("strides", [1] * len(k))
        if kind == "max":
            x = F.pad(x, _torch_pads(pads), value=-math.inf) if any(pads) else x
            return F.max_pool2d(x, k, strides, 0, a.get("dilations", [1] * len(k)),
                                ceil_mode=bool(a.get("ceil_mode", 0)))
        x = F.pad(x, _torch_pads(pads)) if any(pads) else x
        return F.avg_pool2d(x, k, strides, 0, ceil_mode=bool(a.get("ceil_mode", 0)),
                            count_include_pad=bool(a.get("count_include_pad", 0)) or not any(pads))
    return run


def reshape(args, a):
    shape = _ints(args[1])
    shape = [args[0].shape[i] if (s == 0 and not a.get("allowzero", 0)) else s
             for i, s in enumerate(shape)]
    return args[0].reshape(shape)


def flatten(args, a):
    axis = a.get("axis", 1)
    x = args[0]
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(int(math.prod(x.shape[:axis])), -1)


def gather(args, a):
    x, idx = args[0], args[1].long()
    axis = a.get("axis", 0)
    return torch.index_select(x, axis, idx.reshape(-1)).reshape(
        *x.shape[:axis % x.dim()], *idx.shape, *x.shape[axis % x.dim() + 1:])


def pad(args, a):
    pads = _ints(args[1]) if len(args) > 1 and args[1] is not None else a["pads"]
    value = float(args[2]) if len(args) > 2 and args[2] is not None else a.get("value", 0.0)
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    torch_pads = _torch_pads(pads)
    if mode == "constant":
        return F.pad(args[0], torch_pads, value=value)
    return F.pad(args[0], torch_pads, mode={"reflect": "reflect", "edge": "replicate"}[mode])


def slice_(args, a):
    x = args[0]
    starts, ends = _ints(args[1]), _ints(args[2])
    axes = _ints(args[3]) if len(args) > 3 and args[3] is not None else list(range(len(starts)))
    steps = _ints(args[4]) if len(args) > 4 and args[4] is not None else [1] * len(starts)
    for s, e, ax, st in zip(starts, ends, axes, steps, strict=True):
        dim = x.shape[ax]
        s, e = s + dim if s < 0 else s, e + dim if e < 0 else e
        if st > 0:
            s, e = max(0, min(dim, s)), max(0, min(dim, e))
        else:  # ONNX clamps to [0, dim-1] and [-1, dim-1] going backwards
            s, e = max(-1, min(dim - 1, s)), max(-1, min(dim - 1, e))
        index = torch.arange(s, e, st, dtype=torch.long)
        x = torch.index_select(x, ax % x.dim(), index)
    return x


def reduce(fn):
    def run(args, a):
        axes = a.get("axes")
        if axes is None and len(args) > 1 and args[1] is not None:
            axes = _ints(args[1])
        keep = bool(a.get("keepdims", 1))
        if not axes:
            return fn(args[0], dim=tuple(range(args[0].dim())), keepdim=keep)
        return fn(args[0], dim=tuple(axes), keepdim=keep)
    return run


def resize(args, a):
    x = args[0]
    sizes = args[3] if len(args) > 3 and args[3] is not None and args[3].numel() else None
    mode = a.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if sizes is not None:
        size = _ints(sizes)[2:]
        return F.interpolate(x, size=size, mode="nearest" if mode == "nearest" else "bilinear")
    scales = [float(v) for v in args[2].reshape(-1).tolist()][2:]
    return F.interpolate(x, scale_factor=scales,
                         mode="nearest" if mode == "nearest" else "bilinear")


def _cast(args, a):
    import onnx

    dtype = onnx.helper.tensor_dtype_to_np_dtype(a["to"])
    return args[0].to({"float32": torch.float32, "float16": torch.float16,
                       "float64": torch.float64, "int64": torch.int64, "int32": torch.int32,
                       "bool": torch.bool, "uint8": torch.uint8}[dtype.name])


def _constant_of_shape(args, a):
    value = a.get("value")
    fill = 0.0 if value is None else float(__import__("onnx").numpy_helper.to_array(value)[0])
    return torch.full(_ints(args[0]), fill)


def _unsqueeze(args, a):
    axes = a.get("axes") or _ints(args[1])
    x = args[0]
    for ax in sorted(ax % (x.dim() + len(axes)) for ax in axes):
        x = x.unsqueeze(ax)
    return x


def _squeeze(args, a):
    axes = a.get("axes") or (_ints(args[1]) if len(args) > 1 and args[1] is not None else None)
    return args[0].squeeze() if axes is None else args[0].squeeze(tuple(axes))


OPS = {
    "Conv": conv, "BatchNormalization": batchnorm, "Gemm": gemm,
    "MatMul": lambda x, a: x[0] @ x[1],
    "Relu": lambda x, a: F.relu(x[0]), "Sigmoid": lambda x, a: torch.sigmoid(x[0]),
    "Tanh": lambda x, a: torch.tanh(x[0]), "Clip": clip,
    "LeakyRelu": lambda x, a: F.leaky_relu(x[0], a.get("alpha", 0.01)),
    "HardSigmoid": lambda x, a: torch.clamp(a.get("alpha", 0.2) * x[0] + a.get("beta", 0.5),
                                            0, 1),
    "HardSwish": lambda x, a: F.hardswish(x[0]),
    "Softmax": lambda x, a: F.softmax(x[0], a.get("axis", -1)),
    "MaxPool": pool("max"), "AveragePool": pool("avg"),
    "GlobalAveragePool": lambda x, a: x[0].mean(dim=tuple(range(2, x[0].dim())), keepdim=True),
    "GlobalMaxPool": lambda x, a: x[0].amax(dim=tuple(range(2, x[0].dim())), keepdim=True),
    "Add": lambda x, a: x[0] + x[1], "Sub": lambda x, a: x[0] - x[1],
    "Mul": lambda x, a: x[0] * x[1], "Div": lambda x, a: x[0] / x[1],
    "Concat": lambda x, a: torch.cat(list(x), a["axis"]),
    "Gather": gather, "Reshape": reshape, "Flatten": flatten,
    "Transpose": lambda x, a: x[0].permute(a.get("perm", list(reversed(range(x[0].dim()))))),
    "Pad": pad, "Slice": slice_, "Resize": resize,
    "ReduceSum": reduce(torch.sum), "ReduceMean": reduce(torch.mean),
    "Identity": lambda x, a: x[0], "Dropout": lambda x, a: x[0],
    "Cast": _cast, "Shape": lambda x, a: torch.tensor(list(x[0].shape), dtype=torch.int64),
    "ConstantOfShape": _constant_of_shape, "Unsqueeze": _unsqueeze, "Squeeze": _squeeze,
    "Constant": None,
}
