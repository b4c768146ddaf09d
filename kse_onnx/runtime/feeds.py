"""Real inputs for a session from a user's ``.npz`` (``verify --inputs``): one array per
graph input (or a lone array for a lone input), read by :func:`kse_onnx.data.read_npz`
(numbers only, nothing unpickled, headers checked) and checked against the session's
inputs: element type, rank, fixed dimensions, at least one sample, finite values."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from ..data import read_npz
from ..errors import ModelError

_FLOAT = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
          "tensor(double)": np.float64}
_INTEGER = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
            "tensor(uint8)": np.uint8, "tensor(int16)": np.int16, "tensor(uint16)": np.uint16}


def user_feeds(path, sess: ort.InferenceSession) -> dict:
    """``{input name: array}`` for ``sess`` from the ``.npz`` at ``path``; a one-line error
    naming the file and the array otherwise."""
    inputs = sess.get_inputs()
    names = [i.name for i in inputs]
    arrays = read_npz(path)
    if len(names) == 1 and names[0] not in arrays and len(arrays) == 1:
        arrays = {names[0]: next(iter(arrays.values()))}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise ModelError(f"{path}: has no array for input(s) {missing}")
    return {i.name: _fit(arrays[i.name], i, f"{path} (array {i.name!r})") for i in inputs}


def _fit(array: np.ndarray, spec, where: str) -> np.ndarray:
    if array.ndim and not len(array):
        raise ModelError(f"{where}: holds no samples")
    if array.ndim != len(spec.shape):
        raise ModelError(f"{where}: shape {list(array.shape)} has rank {array.ndim}, input "
                         f"{spec.name!r} takes rank {len(spec.shape)} {list(spec.shape)}")
    for axis, (want, got) in enumerate(zip(spec.shape, array.shape, strict=True)):
        fixed = isinstance(want, int) and want > 0
        if axis == 0 and fixed and got and got % want == 0:
            continue  # a fixed batch is run that many samples at a time
        if fixed and want != got:
            raise ModelError(f"{where}: shape {list(array.shape)} does not fit input "
                             f"{spec.name!r} of shape {list(spec.shape)} (axis {axis})")
    if spec.type in _FLOAT:
        array = array.astype(_FLOAT[spec.type])
        if not np.all(np.isfinite(array)):
            raise ModelError(f"{where}: holds NaN or infinite values (as {spec.type[7:-1]})")
    elif spec.type in _INTEGER:
        if array.dtype.kind not in "iu":
            raise ModelError(f"{where}: holds {array.dtype} values, input {spec.name!r} "
                             f"takes {spec.type[7:-1]}")
        target = _INTEGER[spec.type]
        info = np.iinfo(target)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise ModelError(f"{where}: values outside the range of {spec.type[7:-1]}")
        array = array.astype(target)
    return np.ascontiguousarray(array)
