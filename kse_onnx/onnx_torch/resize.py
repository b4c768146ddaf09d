"""ONNX ``Resize`` (and the older ``Upsample``) with onnxruntime's exact semantics.

Each resized axis is done separately: for output index ``i`` the source coordinate
``x = f(i)`` follows ``coordinate_transformation_mode`` (computed in float32, in
onnxruntime's order of operations), with ``s`` the scale (given, or ``out / in`` when
sizes are given):

- half_pixel ``(i + 0.5) / s - 0.5``; pytorch_half_pixel the same, 0 when ``out == 1``;
- align_corners ``i (in - 1) / (out - 1)`` (0 when ``out == 1``);
- asymmetric ``i / s``, or ``i in / out`` when the sizes are given.

``nearest`` picks ``round_prefer_floor | round_prefer_ceil | floor | ceil (x)`` clamped to
``[0, in - 1]`` (Resize-10 and Upsample: asymmetric, truncation, ``ceil`` when shrinking).
``linear`` clamps ``x`` to ``[0, in - 1]`` and mixes ``x0 = floor(x)`` and
``x1 = min(x0 + 1, in - 1)`` with weights ``x1 - x`` and ``x - x0``. An axis of scale 1 is
left unchanged, and so is the tensor when no length changes. These give onnxruntime 1.32's
indices, ties included, for lengths 1..11 resized to 1..23 and by 13 scales
(tests/test_finetune_ops.py). ``cubic``, ``tf_crop_and_resize``, ``tf_half_pixel_for_nn``,
``half_pixel_symmetric`` (whose ties onnxruntime breaks otherwise), antialiasing and a
``keep_aspect_ratio_policy`` other than ``stretch`` are refused by :func:`refusal`.
"""

from __future__ import annotations

import numpy as np
import torch

COORDINATE_MODES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def text(value, default: str) -> str:
    if value is None:
        return default
    return value.decode() if isinstance(value, bytes) else str(value)


def refusal(attrs: dict) -> str | None:
    """Why a Resize/Upsample with these attributes cannot be matched exactly, or None."""
    mode = text(attrs.get("mode"), "nearest")
    if mode not in ("nearest", "linear", "bilinear"):
        return f"mode={mode}"
    coord = text(attrs.get("coordinate_transformation_mode"), "half_pixel")
    if coord not in COORDINATE_MODES:
        return f"coordinate_transformation_mode={coord}"
    nearest = text(attrs.get("nearest_mode"), "round_prefer_floor")
    if mode == "nearest" and nearest not in NEAREST_MODES:
        return f"nearest_mode={nearest}"
    if attrs.get("antialias", 0):
        return "antialias=1"
    policy = text(attrs.get("keep_aspect_ratio_policy"), "stretch")
    if policy != "stretch":
        return f"keep_aspect_ratio_policy={policy}"
    return None


def _source(coord: str, out_len: int, in_len: int, scale: np.float32,
            sized: bool = False) -> np.ndarray:
    f32 = np.float32
    i = np.arange(out_len, dtype=f32)
    half = f32(0.5)
    if coord == "asymmetric":
        return i * f32(in_len) / f32(out_len) if sized else i / scale
    if coord == "half_pixel":
        return (i + half) / scale - half
    if coord == "pytorch_half_pixel":
        return (i + half) / scale - half if out_len > 1 else np.zeros(out_len, f32)
    if coord == "align_corners":
        if out_len <= 1:
            return np.zeros(out_len, f32)
        return i * f32(in_len - 1) / f32(out_len - 1)
    raise ValueError(coord)


def _nearest_index(x: np.ndarray, nearest: str, shrinking: bool) -> np.ndarray:
    x = x.astype(np.float64)  # exact for float32 values; rounding below is C's
    away = np.sign(x) * np.floor(np.abs(x) + 0.5)  # std::round: halves away from zero
    if nearest == "round_prefer_floor":
        return np.where(x == np.trunc(x) + 0.5, np.floor(x), away)
    if nearest == "round_prefer_ceil":
        return away
    if nearest == "floor":
        return np.floor(x)
    if nearest == "ceil":
        return np.ceil(x)
    if nearest == "simple":
        return np.ceil(x) if shrinking else np.trunc(x)
    raise ValueError(nearest)


def _along(x: torch.Tensor, axis: int, weights: np.ndarray) -> torch.Tensor:
    shape = [1] * x.dim()
    shape[axis] = len(weights)
    return torch.from_numpy(weights.astype(np.float32)).reshape(shape).to(x.dtype)


def resize_axis(x: torch.Tensor, axis: int, out_len: int, scale: np.float32, mode: str,
                coord: str, nearest: str, sized: bool = False) -> torch.Tensor:
    in_len = x.shape[axis]
    if scale == 1:
        return x
    src = _source(coord, out_len, in_len, scale, sized)
    if mode == "nearest":
        index = np.clip(_nearest_index(src, nearest, scale < 1), 0, in_len - 1)
        return torch.index_select(x, axis, torch.from_numpy(index.astype(np.int64)))
    src = np.clip(src, np.float32(0), np.float32(in_len - 1))
    i0 = np.minimum(src.astype(np.int64), in_len - 1)
    i1 = np.minimum(i0 + 1, in_len - 1)
    w0 = np.abs(src - i1.astype(np.float32))  # weight of x0 is the distance to x1
    w1 = np.abs(src - i0.astype(np.float32))
    same = i0 == i1
    w0[same], w1[same] = 0.5, 0.5
    a = torch.index_select(x, axis, torch.from_numpy(i0))
    b = torch.index_select(x, axis, torch.from_numpy(i1))
    return a * _along(x, axis, w0) + b * _along(x, axis, w1)


def _values(t) -> list[float]:
    return [float(v) for v in t.reshape(-1).tolist()]


def resize(args, a):
    """Resize-10 (X, scales), Resize-11+ (X, roi, scales, sizes) and Upsample."""
    x = args[0]
    rank = x.dim()
    mode = text(a.get("mode"), "nearest")
    mode = "linear" if mode == "bilinear" else mode
    if len(args) == 2 or "_upsample" in a:  # Resize-10 / Upsample: scales only
        scales_t = args[1] if len(args) > 1 else None
        scales = _values(scales_t) if scales_t is not None else list(a["scales"])
        sizes = None
        coord, nearest = "asymmetric", "simple"
    else:
        scales_t = args[2] if len(args) > 2 else None
        sizes_t = args[3] if len(args) > 3 else None
        sizes = [int(v) for v in sizes_t.reshape(-1).tolist()] \
            if sizes_t is not None and sizes_t.numel() else None
        scales = None if sizes is not None else _values(scales_t)
        coord = text(a.get("coordinate_transformation_mode"), "half_pixel")
        nearest = text(a.get("nearest_mode"), "round_prefer_floor")
    axes = [ax % rank for ax in a.get("axes", [])] or list(range(rank))
    plan = []
    for k, axis in enumerate(axes):
        in_len = x.shape[axis]
        if sizes is not None:
            out_len = sizes[k]
            scale = np.float32(out_len) / np.float32(in_len)
        else:
            scale = np.float32(scales[k])
            out_len = int(scale * np.float32(in_len))
        plan.append((axis, out_len, scale))
    if all(out_len == x.shape[axis] for axis, out_len, _ in plan):
        return x  # onnxruntime copies the input when the shape is unchanged
    for axis, out_len, scale in plan:
        x = resize_axis(x, axis, out_len, scale, mode, coord, nearest, sizes is not None)
    return x


def upsample(args, a):
    return resize(args, {**a, "_upsample": 1})
