"""The one loader of images: calibration images from a file, an array, or an iterable
of arrays (batches) or of input dicts (``{input name: batch}``), all to one float32
array (held on disk when large: :mod:`kse_onnx.held_images`); and fine-tuning's
training images and labels (:func:`training_data`).

The facade calls it once (``optimize``; the CLI for ``finetune --quantize``); the refit,
the latency budget, the quantizer and fine-tuning receive the array and read no file.
A file is read like ``--calibration`` (:func:`kse_onnx.data.load_data`, with the data
options' preprocessing, checked against the model's input); arrays are taken as the
model's input, already preprocessed. Every source keeps its first ``count`` images, so
the same images give the same model whichever way they are passed.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import numpy as np

from .data import ModelInput, load_data
from .errors import OptionError
from .held_images import image_store
from .options import CalibrationOptions, DataOptions

MAX_BATCHES = 1 << 20  # an endless data loader is cut here, not read forever


class TrainingData(NamedTuple):
    """Fine-tuning's images ``x`` (float32, preprocessed) and labels ``y`` (or None), read
    once by the caller; ``where``: their source, named in errors and in the path checks."""

    x: np.ndarray
    y: np.ndarray | None
    where: str | os.PathLike


def training_data(path, data: DataOptions, model) -> TrainingData:
    """``finetune --data``: images and optional labels read from ``path`` by the one
    validated reader (:func:`kse_onnx.data.load_data`, with ``data``'s preprocessing),
    checked against the input of ``model``, the ModelProto that fine-tuning trains."""
    x, y = load_data(path, data, ModelInput.of(model))
    return TrainingData(x, y, path)


def as_images(calibration, count: int | None = None, data: DataOptions | None = None,
              input_name: str | None = None, flag: str = "calibration",
              model=None) -> np.ndarray | None:
    """The first ``count`` (default 1024) calibration images as one float32 array (a file's
    above 1 GiB: a :class:`kse_onnx.held_images.DiskImages`), None without a source.
    ``input_name``: the model's input, the key taken from input dicts; ``model``: a file's
    images are checked against its input (kse_onnx.data)."""
    if calibration is None:
        return None
    if isinstance(calibration, CalibrationOptions):
        count = calibration.calibration_images if count is None else count
        calibration = calibration.calibration or None
        if calibration is None:
            return None
    count = CalibrationOptions().calibration_images if count is None else count
    CalibrationOptions(calibration_images=count)  # validated like the flag
    if isinstance(calibration, (str, os.PathLike)):
        expect = ModelInput.of(model) if model is not None else None
        if expect is not None:  # calibration feeds an unbatched input one image at a time
            expect = dataclasses.replace(expect, per_image=True)
        return load_data(str(calibration), data or DataOptions(), expect, limit=count,
                         hold=image_store)[0]
    if isinstance(calibration, np.ndarray):
        batches = [calibration]
    elif isinstance(calibration, Mapping):
        batches = [_from_dict(calibration, input_name, flag)]
    elif isinstance(calibration, Iterable):
        batches, held = [], 0
        for i, item in enumerate(calibration):
            if i >= MAX_BATCHES or held >= count:
                break
            batch = _from_dict(item, input_name, flag) if isinstance(item, Mapping) else item
            batch = _array(batch, flag)
            batches.append(batch)
            held += len(batch)
    else:
        raise OptionError(flag, f"expected a path, an array or an iterable of arrays or "
                          f"input dicts, got {type(calibration).__name__}")
    arrays = [_array(b, flag) for b in batches]
    if not arrays or not sum(len(a) for a in arrays):
        raise OptionError(flag, "holds no images")
    shapes = {a.shape[1:] for a in arrays}
    if len(shapes) > 1:
        raise OptionError(flag, f"batches differ in shape: {sorted(shapes)[:3]}")
    x = np.concatenate(arrays)[:count] if len(arrays) > 1 else arrays[0][:count]
    if not np.all(np.isfinite(x)):
        raise OptionError(flag, "images hold NaN or infinite values")
    return np.ascontiguousarray(x, np.float32)


def _from_dict(item: Mapping, input_name: str | None, flag: str):
    if len(item) == 1:
        return next(iter(item.values()))
    if input_name is not None and input_name in item:
        return item[input_name]
    raise OptionError(flag, f"an input dict with keys {sorted(map(str, item))[:4]} has no "
                      f"array for the model's input {input_name!r}")


def _array(value, flag: str) -> np.ndarray:
    try:
        x = np.asarray(value)
    except Exception as exc:
        raise OptionError(flag, f"not an array ({type(value).__name__})") from exc
    if x.dtype.kind not in "fiub" or x.ndim < 2:
        raise OptionError(flag, f"expected a numeric batch (n, ...) of images, got dtype "
                          f"{x.dtype} and shape {list(x.shape)}")
    return x
