"""Readers of datasets in plain numpy (no torch needed): training, evaluation and
calibration inputs.

IDX is the MNIST family's format: a magic number whose third byte is the element type
(0x08 = uint8) and fourth the rank, then the dimensions as big-endian uint32, then the
data. Files may be gzip-compressed.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from .errors import ModelError
from .paths import regular_file

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX (optionally .gz) file."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read IDX data ({exc})") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ModelError(f"{path}: not an IDX file of uint8 values")
    rank = data[3]
    header = 4 + 4 * rank
    dims = np.frombuffer(data[4:header], dtype=">u4").astype(np.int64)
    if len(data) - header != int(np.prod(dims)):
        raise ModelError(f"{path}: IDX data holds {len(data) - header} bytes, "
                         f"dimensions {dims.tolist()} need {int(np.prod(dims))}")
    return np.frombuffer(data[header:], dtype=np.uint8).reshape(dims)


def fashion_mnist(split: str = "train", root: Path = FASHION_MNIST):
    """(images uint8 (n, 28, 28), labels uint8 (n,)) of Debian's dataset-fashion-mnist."""
    prefix = "train" if split == "train" else "t10k"
    images = root / f"{prefix}-images-idx3-ubyte.gz"
    if not images.exists():
        raise ModelError(f"{images}: missing; install it with "
                         "'apt-get install dataset-fashion-mnist'")
    return read_idx(images), read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")


def load_dataset(path: str | Path):
    """(x float32 (n, C, H, W), y int64 (n,) or None) from ``path``:
    - ``.npz`` with array ``x`` (and optional ``y``); uint8 images are scaled to [0, 1];
      (n, H, W) gains a channel axis; (n, H, W, C) with C in (1, 3) becomes NCHW;
    - an IDX images file (``*images-idx3-ubyte[.gz]``), labels read from the matching
      ``*labels-idx1-ubyte[.gz]`` beside it when present;
    - a folder with one sub-folder of images per class (sorted names = class indices).
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such data file or folder")
    if path.is_dir():
        return _image_folder(path)
    regular_file(path, "a data file")  # a FIFO would block the reader
    if path.suffix == ".npz":
        try:
            data = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise ModelError(f"{path}: cannot read .npz ({type(exc).__name__})") from exc
        if "x" not in data.files:
            raise ModelError(f"{path}: has no array 'x' (arrays: {data.files})")
        x = _as_nchw(data["x"], path)
        y = check_labels(data["y"], len(x), f"{path} (array y)") if "y" in data.files else None
        return x, y
    if "idx" in path.name:
        x = _as_nchw(read_idx(path), path)
        labels = path.with_name(path.name.replace("images-idx3", "labels-idx1"))
        y = (check_labels(read_idx(labels), len(x), labels)
             if labels != path and labels.exists() else None)
        return x, y
    raise ModelError(f"{path}: unknown data format (expected .npz, an IDX file or a folder)")


def check_labels(y, n: int, where, classes: int | None = None) -> np.ndarray:
    """``y`` as int64 of shape (n,): integer-valued (floats only when whole numbers),
    one per image, each in [0, classes) when the model's class count is known; else a
    one-line error naming ``where``. (Labels of shape (n, 1) or with fractions would
    otherwise broadcast or truncate into a wrong accuracy.)"""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ModelError(f"{where}: labels must have shape (n,), got {list(y.shape)}")
    if len(y) != n:
        raise ModelError(f"{where}: {len(y)} labels for {n} images")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ModelError(f"{where}: labels must be integers (found fractions or "
                             "non-finite values)")
    elif y.dtype.kind not in "iu":
        raise ModelError(f"{where}: labels must be integers, got dtype {y.dtype}")
    if len(y) and (y.min() < 0 or y.max() >= 2**62):
        raise ModelError(f"{where}: labels must be >= 0, got {y.min()}")
    y = y.astype(np.int64)
    if classes is not None and len(y) and y.max() >= classes:
        raise ModelError(f"{where}: label {int(y.max())} is not one of the model's "
                         f"{classes} classes")
    return y


def _as_nchw(x: np.ndarray, path: Path) -> np.ndarray:
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    # no whole-set copy beyond the float32 conversion (3x the images' size at once
    # before: 7.5 GB for 512 images of 3x640x640; docs/refit.md, "Memory")
    x = x.astype(np.float32, copy=False)
    if scale != 1.0:
        x /= scale  # x is a new array here (converted from uint8)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4:
        raise ModelError(f"{path}: expected images (n, C, H, W), got shape {x.shape}")
    return np.ascontiguousarray(x)


def _image_folder(path: Path):
    from PIL import Image

    classes = sorted(p for p in path.iterdir() if p.is_dir())
    if not classes:
        raise ModelError(f"{path}: no class sub-folders")
    images, labels, unreadable = [], [], []
    for index, folder in enumerate(classes):
        for file in sorted(folder.iterdir()):
            if file.name.startswith("."):
                continue  # hidden files (.DS_Store, editor backups) are not data
            try:
                if not file.is_file():
                    raise OSError("not a regular file")
                with Image.open(file) as img:
                    images.append(np.asarray(img.convert("RGB")))
            except Exception:
                if file.suffix.lower() in IMAGE_SUFFIXES:  # an image that cannot be read
                    unreadable.append(file)
                continue  # not an image (a README, ...)
            labels.append(index)
    if unreadable:  # a silently smaller data set would shift every result
        raise ModelError(f"{path}: {len(unreadable)} file(s) in its class folders are not "
                         f"readable images (first: {unreadable[0]}); remove or fix them")
    if not images:
        raise ModelError(f"{path}: no readable images in its class folders")
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ModelError(f"{path}: images differ in size {sorted(shapes)[:3]}; use --resize")
    return _as_nchw(np.stack(images), path), np.array(labels, np.int64)


def preprocess(x: np.ndarray, resize: int | None = None, crop: int | None = None,
               mean=None, std=None) -> np.ndarray:
    """Resize (shorter side, bilinear), centre-crop, then ``(x - mean) / std``."""
    if resize:
        import torch
        import torch.nn.functional as F

        h, w = x.shape[2:]
        scale = resize / min(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = F.interpolate(torch.from_numpy(x), size=size, mode="bilinear",
                          align_corners=False).numpy()
    if crop:
        h, w = x.shape[2:]
        top, left = (h - crop) // 2, (w - crop) // 2
        x = x[:, :, top:top + crop, left:left + crop]
    if mean is not None:
        x = x - np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    if std is not None:
        x = x / np.asarray(std, np.float32).reshape(1, -1, 1, 1)
    return np.ascontiguousarray(x, dtype=np.float32)


def load_data(path, options):
    """``load_dataset`` then ``preprocess`` with a DataOptions' resize/crop/mean/std."""
    x, y = load_dataset(path)
    mean = [float(v) for v in options.mean] or None
    std = [float(v) for v in options.std] or None
    return preprocess(x, options.resize or None, options.crop or None, mean, std), y
