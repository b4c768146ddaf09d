"""torch implementations of the ONNX operators found in exported CNNs (classifiers,
detectors, segmenters), with onnxruntime's semantics.

Each entry of :data:`OPS` takes the node's inputs (tensors, None for an omitted optional
input) and its attributes as given by :func:`attributes`, and returns the output (or a
tuple of outputs). Shape-like inputs are integer tensors and are turned into Python ints.
:func:`refusal` says, before anything runs, why a node cannot be mapped exactly (an
unknown operator, or an attribute setting that would compute another function).
"""

from __future__ import annotations

import functools
import math

import onnx
import torch
import torch.nn.functional as F

from ..graph.walk import DEFAULT_DOMAINS
from . import resize as _resize
from .resize import text as _text

AUTO_PADS = ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER")


def _ints(t) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


def _given(args, i) -> bool:
    return len(args) > i and args[i] is not None


def torch_pads(pads) -> list[int]:
    """ONNX pads [b1, b2, ..., e1, e2, ...] -> F.pad order (last axis first)."""
    half = len(pads) // 2
    out = []
    for i in reversed(range(half)):
        out += [pads[i], pads[i + half]]
    return out


def explicit_pads(a, x, kernel, strides, dilations) -> list[int]:
    """ONNX pads of a Conv/pool, ``auto_pad`` resolved: SAME_* pad ``out = ceil(in / s)``
    with ``max(0, (out - 1) s + (k - 1) d + 1 - in)`` in total, the odd one at the end
    (UPPER) or the beginning (LOWER)."""
    n = len(kernel)
    auto = _text(a.get("auto_pad"), "NOTSET")
    if auto == "NOTSET":
        return list(a.get("pads", [0] * 2 * n))
    if auto == "VALID":
        return [0] * 2 * n
    begins, ends = [], []
    for i in range(n):
        size = x.shape[2 + i]
        out = -(-size // strides[i])
        total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size)
        begin = total // 2 if auto == "SAME_UPPER" else total - total // 2
        begins.append(begin)
        ends.append(total - begin)
    return begins + ends


def conv(args, a):
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else None
    spatial = w.dim() - 2
    strides = a.get("strides", [1] * spatial)
    dilations = a.get("dilations", [1] * spatial)
    pads = explicit_pads(a, x, list(w.shape[2:]), strides, dilations)
    begins, ends = pads[:spatial], pads[spatial:]
    if begins != ends:  # torch pads both sides alike: an asymmetric pad is a copy first
        x, begins = F.pad(x, torch_pads(pads)), [0] * spatial
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[spatial]
    return fn(x, w, b, strides, begins, dilations, a.get("group", 1))


def conv_transpose(args, a):
    """Full transposed convolution, ``output_padding`` zeros appended at the end of each
    axis, then ``pads`` cropped (begin, end), then the bias."""
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else None
    spatial = w.dim() - 2
    strides = a.get("strides", [1] * spatial)
    dilations = a.get("dilations", [1] * spatial)
    pads = [0] * 2 * spatial if _text(a.get("auto_pad"), "NOTSET") == "VALID" else \
        list(a.get("pads", [0] * 2 * spatial))
    extra = a.get("output_padding", [0] * spatial)
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[spatial]
    y = fn(x, w, None, strides, 0, 0, a.get("group", 1), dilations)
    if any(extra):
        y = F.pad(y, torch_pads([0] * spatial + list(extra)))
    index = [slice(None), slice(None)]
    for i in range(spatial):
        index.append(slice(pads[i], y.shape[2 + i] - pads[i + spatial]))
    y = y[tuple(index)]
    return y if b is None else y + b.reshape(1, -1, *[1] * spatial)


def batchnorm(args, a):
    x, scale, bias, mean, var = args[:5]
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, a.get("epsilon", 1e-5))


def instance_norm(args, a):
    return F.instance_norm(args[0], weight=args[1], bias=args[2], use_input_stats=True,
                           eps=a.get("epsilon", 1e-5))


def layer_norm(args, a):
    """``(x - mean) / sqrt(var + eps) * scale + bias`` over the axes from ``axis`` on;
    also returns the mean and the inverse standard deviation."""
    x, scale = args[0], args[1]
    axis = a.get("axis", -1) % x.dim()
    dims = tuple(range(axis, x.dim()))
    mean = x.mean(dims, keepdim=True)
    centred = x - mean
    inv_std = torch.rsqrt((centred * centred).mean(dims, keepdim=True) + a.get("epsilon", 1e-5))
    y = centred * inv_std * scale
    if _given(args, 2):
        y = y + args[2]
    return y, mean, inv_std


def group_norm(args, a):
    """GroupNormalization-18 (scale/bias per group) and -21 (per channel)."""
    x, scale, bias = args[:3]
    groups, c = a["num_groups"], x.shape[1]
    if scale.numel() != c:
        scale = scale.repeat_interleave(c // groups)
        bias = bias.repeat_interleave(c // groups)
    return F.group_norm(x, groups, scale, bias, a.get("epsilon", 1e-5))


def lrn(args, a):
    return F.local_response_norm(args[0], a["size"], a.get("alpha", 1e-4), a.get("beta", 0.75),
                                 a.get("bias", 1.0))


def gemm(args, a):
    x, w = args[0], args[1]
    x = x.t() if a.get("transA", 0) else x
    w = w.t() if a.get("transB", 0) else w
    y = a.get("alpha", 1.0) * (x @ w)
    if _given(args, 2):
        y = y + a.get("beta", 1.0) * args[2]
    return y


def clip(args, a):
    low = args[1] if _given(args, 1) else a.get("min")
    high = args[2] if _given(args, 2) else a.get("max")
    return torch.clamp(args[0], None if low is None else float(low),
                       None if high is None else float(high))


def _pool_sizes(x, k, strides, dilations, pads, ceil) -> list[int]:
    """onnxruntime's pooled sizes: with ``ceil_mode`` a last window starting past the input
    (in the end padding) is dropped, as torch does."""
    n, sizes = len(k), []
    for i in range(n):
        length = x.shape[2 + i]
        span = length + pads[i] + pads[i + n] - ((k[i] - 1) * dilations[i] + 1)
        out = (-(-span // strides[i]) if ceil else span // strides[i]) + 1
        if ceil and (out - 1) * strides[i] >= length + pads[i]:
            out -= 1
        sizes.append(out)
    return sizes


def pool(kind):
    def run(args, a):
        x = args[0]
        k = list(a["kernel_shape"])
        n = len(k)
        strides = a.get("strides", [1] * n)
        dilations = a.get("dilations", [1] * n)
        pads = explicit_pads(a, x, k, strides, dilations)
        ceil = bool(a.get("ceil_mode", 0))
        padding = torch_pads(pads)
        if kind == "max":
            padded = F.pad(x, padding, value=-math.inf) if any(pads) else x
            fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[n]
            y = fn(padded, k, strides, 0, dilations, ceil_mode=ceil)
        else:
            fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[n]
            padded = F.pad(x, padding) if any(pads) else x
            y = fn(padded, k, strides, 0, ceil_mode=ceil, count_include_pad=True)
            if any(pads) and not a.get("count_include_pad", 0):
                # divide by the count of real (unpadded) elements in each window
                ones = F.pad(torch.ones_like(x[:1, :1]), padding)
                y = y / fn(ones, k, strides, 0, ceil_mode=ceil, count_include_pad=True)
        sizes = _pool_sizes(x, k, strides, dilations, pads, ceil)
        return y[(slice(None), slice(None), *(slice(0, s) for s in sizes))]
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


def _index(idx, dim):
    idx = idx.long()
    return torch.where(idx < 0, idx + dim, idx)


def gather(args, a):
    x = args[0]
    axis = a.get("axis", 0) % x.dim()
    idx = _index(args[1], x.shape[axis])
    return torch.index_select(x, axis, idx.reshape(-1)).reshape(
        (*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]))


def gather_elements(args, a):
    x = args[0]
    axis = a.get("axis", 0) % x.dim()
    return torch.gather(x, axis, _index(args[1], x.shape[axis]))


def pad(args, a):
    x = args[0]
    pads = _ints(args[1]) if _given(args, 1) else list(a["pads"])
    value = float(args[2]) if _given(args, 2) and args[2].numel() else a.get("value", 0.0)
    if _given(args, 3):  # Pad-18 axes
        axes, full = _ints(args[3]), [0] * 2 * x.dim()
        for i, ax in enumerate(axes):
            full[ax % x.dim()], full[ax % x.dim() + x.dim()] = pads[i], pads[i + len(axes)]
        pads = full
    mode = _text(a.get("mode"), "constant")
    padding = torch_pads(pads)
    if mode == "constant":
        return F.pad(x, padding, value=value)
    while padding[-2:] == [0, 0]:  # torch pads only the innermost axes in these modes
        padding = padding[:-2]
    mode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}[mode]
    return F.pad(x, padding, mode=mode) if padding else x


def slice_(args, a):
    x = args[0]
    if _given(args, 1):
        starts, ends = _ints(args[1]), _ints(args[2])
        axes = _ints(args[3]) if _given(args, 3) else list(range(len(starts)))
        steps = _ints(args[4]) if _given(args, 4) else [1] * len(starts)
    else:  # Slice-1: attributes
        starts, ends = list(a["starts"]), list(a["ends"])
        axes = list(a.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    for s, e, ax, st in zip(starts, ends, axes, steps, strict=True):
        dim = x.shape[ax]
        s, e = s + dim if s < 0 else s, e + dim if e < 0 else e
        if st > 0:
            s, e = max(0, min(dim, s)), max(0, min(dim, e))
        else:  # ONNX clamps to [0, dim-1] and [-1, dim-1] going backwards
            s, e = max(-1, min(dim - 1, s)), max(-1, min(dim - 1, e))
        where = [slice(None)] * x.dim()
        if st > 0:  # a strided view: its backward writes into zeros, no index_add
            where[ax % x.dim()] = slice(s, e, st)
            x = x[tuple(where)]
        else:
            x = torch.index_select(x, ax % x.dim(), torch.arange(s, e, st, dtype=torch.long))
    return x


def split(args, a):
    """Split by the ``split`` input/attribute, else in ``num_outputs`` parts of
    ``ceil(n / parts)`` (the last smaller); :func:`attributes` supplies the count."""
    x = args[0]
    axis = a.get("axis", 0) % x.dim()
    sizes = _ints(args[1]) if _given(args, 1) else list(a.get("split", []))
    if not sizes:
        parts = a.get("num_outputs") or a.get("_outputs")
        if not parts:
            raise ValueError("Split without sizes: build its attributes with "
                             "ops.attributes(node, opset), which records the output count")
        length = x.shape[axis]
        chunk = -(-length // parts)
        sizes = [min(chunk, length - i * chunk) for i in range(parts)]
    return tuple(torch.split(x, sizes, axis))


def _axes_of(args, a):
    axes = a.get("axes")
    if axes is None and _given(args, 1):
        axes = _ints(args[1])
    return list(axes) if axes else []


def reduce(fn):
    def run(args, a):
        x, axes = args[0], _axes_of(args, a)
        keep = bool(a.get("keepdims", 1))
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        return fn(x, tuple(ax % x.dim() for ax in axes), keep)
    return run


def _prod(x, dims, keep):
    for d in sorted(dims, reverse=True):
        x = x.prod(d, keepdim=keep)
    return x


REDUCERS = {
    "ReduceSum": lambda x, d, k: x.sum(d, keepdim=k),
    "ReduceMean": lambda x, d, k: x.mean(d, keepdim=k),
    "ReduceMax": lambda x, d, k: x.amax(d, keepdim=k),
    "ReduceMin": lambda x, d, k: x.amin(d, keepdim=k),
    "ReduceProd": _prod,
    "ReduceL1": lambda x, d, k: x.abs().sum(d, keepdim=k),
    "ReduceL2": lambda x, d, k: (x * x).sum(d, keepdim=k).sqrt(),
    "ReduceSumSquare": lambda x, d, k: (x * x).sum(d, keepdim=k),
    "ReduceLogSum": lambda x, d, k: x.sum(d, keepdim=k).log(),
    "ReduceLogSumExp": lambda x, d, k: torch.logsumexp(x, d, keepdim=k),
}


def arg_reduce(largest: bool):
    def run(args, a):
        x = args[0]
        axis = a.get("axis", 0) % x.dim()
        if a.get("select_last_index", 0):
            x = x.flip(axis)
        idx = x.argmax(axis, keepdim=True) if largest else x.argmin(axis, keepdim=True)
        if a.get("select_last_index", 0):
            idx = x.shape[axis] - 1 - idx
        return idx if a.get("keepdims", 1) else idx.squeeze(axis)
    return run


def softmax_like(fn):
    """Softmax-13: along ``axis`` (default -1); before opset 13 the input is seen as 2-D
    (axes before ``axis``, default 1, times the rest)."""
    def run(args, a):
        x = args[0]
        if a.get("_opset", 13) < 13:
            axis = a.get("axis", 1) % x.dim()
            return fn(x.reshape(int(math.prod(x.shape[:axis])), -1), 1).reshape(x.shape)
        return fn(x, a.get("axis", -1))
    return run


_DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32,
           7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64,
           16: torch.bfloat16}


def _cast(args, a):
    return args[0].to(_DTYPES[a["to"]])


def _div(args, a):
    x, y = args[0], args[1]
    if not x.is_floating_point() and not y.is_floating_point():
        return torch.div(x, y, rounding_mode="trunc")  # C integer division
    return x / y


def _mod(args, a):
    return torch.fmod(args[0], args[1]) if a.get("fmod", 0) else \
        torch.remainder(args[0], args[1])


def _constant_of_shape(args, a):
    value = a.get("value")
    if value is None:
        return torch.zeros(_ints(args[0]))
    fill = torch.from_numpy(onnx.numpy_helper.to_array(value).copy()).reshape(-1)
    return torch.full(_ints(args[0]), fill[0].item(), dtype=fill.dtype)


def _unsqueeze(args, a):
    axes = a.get("axes") or _ints(args[1])
    x = args[0]
    for ax in sorted(ax % (x.dim() + len(axes)) for ax in axes):
        x = x.unsqueeze(ax)
    return x


def _squeeze(args, a):
    axes = a.get("axes") or (_ints(args[1]) if _given(args, 1) else None)
    return args[0].squeeze() if axes is None else args[0].squeeze(tuple(axes))


def _shape(args, a):
    dims = list(args[0].shape)
    start, end = a.get("start", 0), a.get("end", len(dims))
    return torch.tensor(dims[start:end], dtype=torch.int64)


def _expand(args, a):
    x = args[0]
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(_ints(args[1]))))


def _range(args, a):
    start, limit, delta = (v.item() for v in args[:3])
    return torch.arange(start, limit, delta, dtype=args[0].dtype)


def _einsum(args, a):
    return torch.einsum(_text(a["equation"], "").replace(" ", ""), *args)


def _prelu(args, a):
    x, slope = args[0], args[1]
    return torch.where(x < 0, x * slope, x)


def _depth_to_space(args, a):
    x, bs = args[0], a["blocksize"]
    b, c, h, w = x.shape
    if _text(a.get("mode"), "DCR") == "DCR":
        x = x.reshape(b, bs, bs, c // (bs * bs), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        x = x.reshape(b, c // (bs * bs), bs, bs, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c // (bs * bs), h * bs, w * bs)


def _space_to_depth(args, a):
    x, bs = args[0], a["blocksize"]
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // bs, bs, w // bs, bs).permute(0, 3, 5, 1, 2, 4)
    return x.reshape(b, c * bs * bs, h // bs, w // bs)


def _cumsum(args, a):
    x = args[0]
    axis = int(args[1].reshape(-1)[0]) % x.dim()
    if a.get("reverse", 0):
        x = x.flip(axis)
    y = x.cumsum(axis)
    if a.get("exclusive", 0):
        y = y - x
    return y.flip(axis) if a.get("reverse", 0) else y


def gather_nd(args, a):
    """``out[b..., i...] = data[b..., indices[b..., i..., :]]`` with ``batch_dims`` leading
    axes shared by data and indices."""
    data, idx = args[0], args[1].long()
    b, k = a.get("batch_dims", 0), idx.shape[-1]
    batch = data.shape[:b]
    n = math.prod(batch)
    d = data.reshape(n, *data.shape[b:])
    i = idx.reshape(n, -1, k)
    lead = torch.tensor(d.shape[1:1 + k], dtype=torch.long)
    i = torch.where(i < 0, i + lead, i)
    strides = torch.tensor([math.prod(d.shape[2 + j:1 + k]) for j in range(k)],
                           dtype=torch.long)
    rows = (i * strides).sum(-1)
    flat = d.reshape(n, -1, *d.shape[1 + k:])
    out = flat[torch.arange(n).unsqueeze(1), rows]
    return out.reshape(*batch, *idx.shape[b:-1], *d.shape[1 + k:])


_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


def scatter_nd(args, a):
    """``out = data``; ``out[indices[i]] (op)= updates[i]`` over the index tuples (the last
    axis of ``indices`` indexes the first axes of ``data``)."""
    data, idx, updates = args[0], args[1].long(), args[2]
    k = idx.shape[-1]
    lead = torch.tensor(data.shape[:k], dtype=torch.long)
    idx = idx.reshape(-1, k)
    idx = torch.where(idx < 0, idx + lead, idx)
    strides = torch.tensor([math.prod(data.shape[i + 1:k]) for i in range(k)],
                           dtype=torch.long)
    rows = (idx * strides).sum(1)
    flat = data.reshape(-1, *data.shape[k:])
    values = updates.reshape(len(rows), *data.shape[k:])
    reduction = _text(a.get("reduction"), "none")
    if reduction == "none":
        return flat.index_put((rows,), values).reshape(data.shape)
    index = rows.reshape(-1, *[1] * (flat.dim() - 1)).expand_as(values)
    return flat.scatter_reduce(0, index, values, _REDUCE[reduction]).reshape(data.shape)


def scatter_elements(args, a):
    data, updates = args[0], args[2]
    axis = a.get("axis", 0) % data.dim()
    index = _index(args[1], data.shape[axis])
    reduction = _text(a.get("reduction"), "none")
    if reduction == "none":
        return data.scatter(axis, index, updates)
    return data.scatter_reduce(axis, index, updates, _REDUCE[reduction])


def variadic(fn):
    return lambda x, a: functools.reduce(fn, x)


def unary(fn):
    return lambda x, a: fn(x[0])


OPS = {
    "Conv": conv, "ConvTranspose": conv_transpose, "BatchNormalization": batchnorm,
    "InstanceNormalization": instance_norm, "LayerNormalization": layer_norm,
    "GroupNormalization": group_norm, "LRN": lrn,
    "Gemm": gemm, "MatMul": lambda x, a: x[0] @ x[1], "Einsum": _einsum,
    "Relu": unary(F.relu), "Sigmoid": unary(torch.sigmoid), "Tanh": unary(torch.tanh),
    "Clip": clip,
    "LeakyRelu": lambda x, a: F.leaky_relu(x[0], a.get("alpha", 0.01)),
    "HardSigmoid": lambda x, a: torch.clamp(a.get("alpha", 0.2) * x[0] + a.get("beta", 0.5),
                                            0, 1),
    "HardSwish": unary(F.hardswish), "PRelu": _prelu,
    "Elu": lambda x, a: F.elu(x[0], a.get("alpha", 1.0)),
    "Selu": lambda x, a: a.get("gamma", 1.0507009873554805) * torch.where(
        x[0] > 0, x[0], a.get("alpha", 1.6732632423543772) * torch.expm1(x[0])),
    "ThresholdedRelu": lambda x, a: torch.where(x[0] > a.get("alpha", 1.0), x[0],
                                                torch.zeros_like(x[0])),
    "Softplus": lambda x, a: torch.logaddexp(x[0], torch.zeros_like(x[0])),
    "Softsign": lambda x, a: x[0] / (1 + x[0].abs()),
    "Mish": lambda x, a: x[0] * torch.tanh(torch.logaddexp(x[0], torch.zeros_like(x[0]))),
    "Gelu": lambda x, a: F.gelu(x[0], approximate=_text(a.get("approximate"), "none")),
    "Erf": unary(torch.erf), "Exp": unary(torch.exp), "Log": unary(torch.log),
    "Sqrt": unary(torch.sqrt), "Reciprocal": unary(torch.reciprocal),
    "Neg": unary(torch.neg), "Abs": unary(torch.abs), "Floor": unary(torch.floor),
    "Ceil": unary(torch.ceil), "Round": unary(torch.round), "Sign": unary(torch.sign),
    "Sin": unary(torch.sin), "Cos": unary(torch.cos),
    "Pow": lambda x, a: torch.pow(x[0], x[1]),
    "Softmax": softmax_like(F.softmax), "LogSoftmax": softmax_like(F.log_softmax),
    "MaxPool": pool("max"), "AveragePool": pool("avg"),
    "GlobalAveragePool": lambda x, a: x[0].mean(dim=tuple(range(2, x[0].dim())), keepdim=True),
    "GlobalMaxPool": lambda x, a: x[0].amax(dim=tuple(range(2, x[0].dim())), keepdim=True),
    "Add": lambda x, a: x[0] + x[1], "Sub": lambda x, a: x[0] - x[1],
    "Mul": lambda x, a: x[0] * x[1], "Div": _div, "Mod": _mod,
    "Min": variadic(torch.minimum), "Max": variadic(torch.maximum),
    "Sum": variadic(torch.add), "Mean": lambda x, a: functools.reduce(torch.add, x) / len(x),
    "Equal": lambda x, a: x[0] == x[1], "Less": lambda x, a: x[0] < x[1],
    "LessOrEqual": lambda x, a: x[0] <= x[1], "Greater": lambda x, a: x[0] > x[1],
    "GreaterOrEqual": lambda x, a: x[0] >= x[1], "Not": unary(torch.logical_not),
    "And": lambda x, a: x[0] & x[1], "Or": lambda x, a: x[0] | x[1],
    "Xor": lambda x, a: x[0] ^ x[1],
    "Where": lambda x, a: torch.where(x[0].bool(), x[1], x[2]),
    "Concat": lambda x, a: torch.cat(list(x), a["axis"]), "Split": split,
    "Gather": gather, "GatherElements": gather_elements, "ScatterND": scatter_nd,
    "GatherND": gather_nd,
    "ScatterElements": scatter_elements,
    "Reshape": reshape, "Flatten": flatten, "Expand": _expand,
    "Tile": lambda x, a: x[0].repeat(*_ints(x[1])),
    "Transpose": lambda x, a: x[0].permute(a.get("perm", list(reversed(range(x[0].dim()))))),
    "DepthToSpace": _depth_to_space, "SpaceToDepth": _space_to_depth,
    "Pad": pad, "Slice": slice_, "Resize": _resize.resize, "Upsample": _resize.upsample,
    **{name: reduce(fn) for name, fn in REDUCERS.items()},
    "ArgMax": arg_reduce(True), "ArgMin": arg_reduce(False), "CumSum": _cumsum,
    "Identity": unary(lambda x: x), "Dropout": unary(lambda x: x),
    "Cast": _cast, "CastLike": lambda x, a: x[0].to(x[1].dtype),
    "Shape": _shape, "Size": lambda x, a: torch.tensor(x[0].numel(), dtype=torch.int64),
    "ConstantOfShape": _constant_of_shape, "Unsqueeze": _unsqueeze, "Squeeze": _squeeze,
    "Range": _range, "NonZero": lambda x, a: torch.nonzero(x[0]).t(),
    "Constant": None,
}


def attributes(node: onnx.NodeProto, opset: int) -> dict:
    """The node's attributes as Python values, plus what some operators need from the
    node itself: ``_outputs`` (Split's output count) and ``_opset`` (the default-domain
    opset, for operators whose meaning changed)."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    attrs["_opset"] = opset
    if node.op_type == "Split":
        attrs["_outputs"] = len(node.output)
    return attrs


def _check_auto_pad(attrs, node):
    auto = _text(attrs.get("auto_pad"), "NOTSET")
    return None if auto in AUTO_PADS else f"auto_pad={auto}"


def _check_conv_transpose(attrs, node):
    if "output_shape" in attrs:
        return "output_shape"
    auto = _text(attrs.get("auto_pad"), "NOTSET")
    return None if auto in ("NOTSET", "VALID") else f"auto_pad={auto}"


def _check_max_pool(attrs, node):
    if len(node.output) > 1 and node.output[1]:
        return "Indices output"
    return _check_auto_pad(attrs, node)


def _check_avg_pool(attrs, node):
    if any(d != 1 for d in attrs.get("dilations", [])):
        return "dilations"
    return _check_auto_pad(attrs, node)


def _check_batchnorm(attrs, node):
    if attrs.get("training_mode", 0) or sum(1 for o in node.output if o) > 1:
        return "training_mode"
    return None


def _check_constant(attrs, node):
    known = {"value", "value_float", "value_floats", "value_int", "value_ints"}
    odd = sorted(set(attrs) - known - {"_opset"})
    return f"attribute {odd[0]}" if odd else None


CHECKS = {
    "Conv": _check_auto_pad, "ConvTranspose": _check_conv_transpose,
    "MaxPool": _check_max_pool, "AveragePool": _check_avg_pool,
    "BatchNormalization": _check_batchnorm, "Constant": _check_constant,
    "Resize": lambda attrs, node: _resize.refusal(attrs),
    "Upsample": lambda attrs, node: _resize.refusal(attrs),
    "LRN": lambda attrs, node: "an even size" if attrs["size"] % 2 == 0 else None,
    "Dropout": lambda attrs, node: "mask output" if len(node.output) > 1 and node.output[1]
    else None,
}


def refusal(node: onnx.NodeProto, attrs: dict) -> str | None:
    """None if :data:`OPS` computes ``node`` exactly as onnxruntime does, else what is
    missing: the operator (``Celu``) or the operator with its setting
    (``Resize mode=cubic``)."""
    if node.domain not in DEFAULT_DOMAINS:
        return f"{node.domain}.{node.op_type}"
    if node.op_type not in OPS:
        return node.op_type
    check = CHECKS.get(node.op_type)
    why = check(attrs, node) if check else None
    return None if why is None else f"{node.op_type} {why}"
