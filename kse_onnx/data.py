"""Readers of user data files in plain numpy (no torch needed): training, evaluation,
calibration and verification inputs. Every field of a data file is untrusted, so each
is checked before it is used, and a failure is one line naming the file:

- ``.npz``: a zip archive read member by member (:func:`read_npz`): the ``.npy``
  header's dtype must be numeric (never Python objects: nothing is unpickled) and its
  shape must match the bytes the member holds before anything is allocated;
- IDX (the MNIST family, optionally ``.gz``): a magic number whose third byte is the
  element type and fourth the rank, then the dimensions as big-endian uint32, then the
  data; the dimensions must match the data's length, and a truncated or corrupt gzip
  stream is refused;
- image folders: every file with an image suffix must decode;
- the images (:func:`load_data`): at least one, finite, shaped (n, C, H, W); ``--mean``
  and ``--std`` give 1 or C values; ``--crop`` fits the (resized) images; the result
  fits the model input's channels and fixed height and width.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .errors import KSEError, ModelError, OptionError, first_line
from .model_input import ModelInput
from .paths import regular_file

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
# IDX element types: code -> big-endian numpy dtype
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
NUMERIC_KINDS = "uif"  # unsigned, signed, floating
_CHUNK = 1 << 20
CHUNK_VALUES = 8 * 2**20  # load_data converts about this many values at a time


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX (optionally .gz) file, its header checked against the
    data's length before the data is read."""
    path = regular_file(path, "an IDX file")
    packed = path.suffix == ".gz"
    try:
        with (gzip.open if packed else open)(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in IDX_TYPES:
                raise ModelError(f"{path}: not an IDX file (bad magic number)")
            dtype, rank = np.dtype(IDX_TYPES[head[2]]), head[3]
            raw_dims = f.read(4 * rank)
            if len(raw_dims) < 4 * rank:
                raise ModelError(f"{path}: IDX header truncated ({rank} dimensions declared)")
            dims = list(struct.unpack(f">{rank}I", raw_dims))
            need = math.prod(dims) * dtype.itemsize
            if not packed:  # the length is known before reading
                held = path.stat().st_size - 4 - 4 * rank
                if held != need:
                    raise ModelError(f"{path}: IDX data holds {held} bytes, dimensions "
                                     f"{dims} need {need}")
            _fits_memory(need, path, f"IDX dimensions {dims}")
            data, got = _read_exactly(f, need)
    except KSEError:
        raise
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        what = "truncated or corrupt gzip data" if packed else "cannot read IDX data"
        raise ModelError(f"{path}: {what} ({first_line(exc)})") from exc
    if got != need:
        raise ModelError(f"{path}: IDX data holds {got if got <= need else 'more'}"
                         f" bytes, dimensions {dims} need {need}")
    return data.view(dtype).reshape(dims).astype(dtype.newbyteorder("="), copy=False)


def _fits_memory(need: int, where, what: str) -> None:
    """Refuse, before reading, data larger than the machine's memory (a gzip or zip
    stream can expand a small file into anything its header declares)."""
    memory = _memory_bytes()
    if memory and need > memory:
        raise ModelError(f"{where}: {what} need {need} bytes, more than this machine's "
                         f"memory ({memory})")


def _read_exactly(f, need: int) -> tuple[np.ndarray, int]:
    """(``need`` bytes of ``f`` in one writable buffer, how many it held: ``need`` + 1
    when more followed). Read in chunks straight into the buffer: joining chunks would
    hold the data twice at once (5 GB to load 2.5 GB of detector images), and a header
    that promises more than the file holds only reserves pages it never touches."""
    buffer = np.empty(need, np.uint8)
    view, got = memoryview(buffer), 0
    while got < need:
        n = f.readinto(view[got:got + _CHUNK])
        if not n:
            break
        got += n
    if got == need and f.read(1):
        got += 1
    return buffer, got


def read_npz(path: str | Path, names: list[str] | None = None,
             optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Arrays ``names`` (default: all; ``optional`` ones may be absent) of an ``.npz``
    archive. Each member's ``.npy`` header is read first: a dtype holding Python objects
    (a pickle) or anything but numbers, or a shape promising more or fewer bytes than
    the member holds, is refused before its data is read."""
    path = regular_file(path, "an .npz file")
    try:
        archive = zipfile.ZipFile(path)
    except Exception as exc:  # BadZipFile, a bad header's ValueError, ...
        raise ModelError(f"{path}: not an .npz archive ({first_line(exc)})") from exc
    with archive:
        members = {}
        for info in archive.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            members.setdefault(name, info)
        if names is None:
            names = sorted(members)
        missing = [n for n in names if n not in members and n not in optional]
        if missing:
            raise ModelError(f"{path}: has no array {missing[0]!r} (arrays: {sorted(members)})")
        return {n: _read_member(archive, members[n], path, n) for n in names if n in members}


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, name: str):
    where = f"{path} (array {name!r})"
    try:
        with archive.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ModelError(f"{where}: .npy format {version} is not supported")
            _check_dtype(dtype, where)
            need = math.prod(shape) * dtype.itemsize
            held = info.file_size - f.tell()
            if held != need:
                raise ModelError(f"{where}: shape {list(shape)} of {dtype} needs {need} bytes, "
                                 f"the file holds {held}: truncated or corrupt")
            _fits_memory(need, where, f"shape {list(shape)} of {dtype}")
            data, got = _read_exactly(f, need)
            if got != need:
                raise ModelError(f"{where}: holds {got} bytes, {need} expected")
    except KSEError:
        raise
    except Exception as exc:  # zip, zlib, CRC and header errors of a damaged archive
        raise ModelError(f"{where}: cannot read ({first_line(exc)})") from exc
    array = data.view(dtype)
    if fortran:
        return array.reshape(shape[::-1]).transpose()
    return array.reshape(shape)


def _check_dtype(dtype: np.dtype, where: str) -> None:
    if dtype.hasobject:
        raise ModelError(f"{where}: holds Python objects (a pickle), refused; save plain "
                         "numeric arrays")
    if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype:
        raise ModelError(f"{where}: holds {dtype} values, expected numbers "
                         "(integers or floats)")


def fashion_mnist(split: str = "train", root: Path = FASHION_MNIST):
    """(images uint8 (n, 28, 28), labels uint8 (n,)) of Debian's dataset-fashion-mnist."""
    prefix = "train" if split == "train" else "t10k"
    images = root / f"{prefix}-images-idx3-ubyte.gz"
    if not images.exists():
        raise ModelError(f"{images}: missing; install it with "
                         "'apt-get install dataset-fashion-mnist'")
    return read_idx(images), read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")


def load_dataset(path: str | Path, channels: int | None = None, raw: bool = False):
    """(x float32 (n, C, H, W), y int64 (n,) or None) from ``path``, checked (at least one
    image, finite values; labels by :func:`check_labels`); ``raw``: x as the file holds it
    (its dtype and layout; its first image checked), for :func:`load_data`'s chunks:
    - ``.npz`` with array ``x`` (and optional ``y``); uint8 images are scaled to [0, 1];
      (n, H, W) gains a channel axis; (n, H, W, C) with C in (1, 3) becomes NCHW;
    - an IDX images file (``*images-idx3-ubyte[.gz]``), labels read from the matching
      ``*labels-idx1-ubyte[.gz]`` beside it when present;
    - a folder with one sub-folder of images per class (sorted names = class indices),
      decoded as grayscale when ``channels`` is 1, else RGB.
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such data file or folder")
    if path.is_dir():
        return _image_folder(path, channels, raw)
    regular_file(path, "a data file")  # a FIFO would block the reader
    if path.suffix == ".npz":
        arrays = read_npz(path, ["x", "y"], optional=("y",))
        x = _checked(arrays["x"], path, raw)
        y = check_labels(arrays["y"], len(x), f"{path} (array y)") if "y" in arrays else None
        return x, y
    if "idx" in path.name:
        x = _checked(read_idx(path), path, raw)
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
        raise ModelError(f"{where}: labels must be in [0, 2**62), got {y.min()}..{y.max()}")
    y = y.astype(np.int64)
    if classes is not None and len(y) and y.max() >= classes:
        raise ModelError(f"{where}: label {int(y.max())} is not one of the model's "
                         f"{classes} classes")
    return y


def _checked(x: np.ndarray, where, raw: bool) -> np.ndarray:
    if not raw:
        return as_images(x, where)
    as_images(x[:1], where)  # the checks, on one image
    return x


def as_images(x: np.ndarray, where, first: int = 0) -> np.ndarray:
    """``x`` as float32 images (n, C, H, W), checked: numeric, at least one image, no
    empty axis, finite after the conversion (uint8 is scaled to [0, 1]); ``first``: the
    index of x's first image in its file (named in errors)."""
    _check_dtype(x.dtype, str(where))
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4:
        raise ModelError(f"{where}: expected images (n, C, H, W), got shape {list(x.shape)}")
    if not len(x):
        raise ModelError(f"{where}: holds no images")
    if 0 in x.shape:
        raise ModelError(f"{where}: images of shape {list(x.shape[1:])} are empty")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is refused just below
        # no whole-set copy beyond the float32 conversion (3x the images' size at once
        # before: 7.5 GB for 512 images of 3x640x640; docs/refit.md, "Memory")
        x = np.ascontiguousarray(x.astype(np.float32, copy=False))
        if scale != 1.0:
            x /= np.float32(scale)  # a new array here (converted from uint8)
    finite = np.isfinite(x)
    if not finite.all():
        first += int(np.argmin(finite.reshape(len(x), -1).all(axis=1)))
        raise ModelError(f"{where}: image {first} holds NaN or infinite values (as float32)")
    return x


def _image_folder(path: Path, channels: int | None = None, raw: bool = False):
    from PIL import Image

    classes = sorted(p for p in path.iterdir() if p.is_dir())
    if not classes:
        raise ModelError(f"{path}: no class sub-folders")
    mode = "L" if channels == 1 else "RGB"
    images, labels, unreadable = [], [], []
    for index, folder in enumerate(classes):
        for file in sorted(folder.iterdir()):
            if file.name.startswith("."):
                continue  # hidden files (.DS_Store, editor backups) are not data
            try:
                if not file.is_file():
                    raise OSError("not a regular file")
                with warnings.catch_warnings():  # a decompression bomb is not an image
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    with Image.open(file) as img:
                        images.append(np.asarray(img.convert(mode)))
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
    return _checked(np.stack(images), path, raw), np.array(labels, np.int64)


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def preprocess(x: np.ndarray, resize: int | None = None, crop: int | None = None,
               mean=None, std=None, where="images", count: int | None = None) -> np.ndarray:
    """Resize (shorter side, bilinear), centre-crop, then ``(x - mean) / std``; each
    checked against the images: a resized set larger than the machine's memory, a crop
    larger than the image, or a count of ``mean``/``std`` values other than 1 or the
    channels is an option error naming ``where``; ``count``: the whole set's images when
    ``x`` is a chunk of it."""
    n, c, h, w = x.shape
    n = count or n
    for flag, values in (("--mean", mean), ("--std", std)):
        if values is not None and len(values) not in (1, c):
            raise OptionError(flag, f"{len(values)} values for the {c}-channel images of "
                                    f"{where}: give 1 or {c}")
    if resize:
        import torch
        import torch.nn.functional as F

        scale = resize / min(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        memory = _memory_bytes()
        if memory and n * c * size[0] * size[1] * 4 > memory:
            raise OptionError("--resize", f"{resize}: {n} images of {size[0]}x{size[1]} from "
                                          f"{where} would need more than this machine's memory")
        x = F.interpolate(torch.from_numpy(x), size=size, mode="bilinear",
                          align_corners=False).numpy()
        h, w = size
    if crop:
        if crop > h or crop > w:
            raise OptionError("--crop", f"{crop} is larger than the {h}x{w} images of {where}"
                                        + (" after --resize" if resize else ""))
        top, left = (h - crop) // 2, (w - crop) // 2
        x = x[:, :, top:top + crop, left:left + crop]
    with np.errstate(over="ignore", invalid="ignore"):  # load_data refuses non-finite
        if mean is not None:
            x = x - np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
        if std is not None:
            x = x / np.asarray(std, np.float32).reshape(1, -1, 1, 1)
    return np.ascontiguousarray(x, dtype=np.float32)


def load_data(path, options, model_input: ModelInput | None = None,
              limit: int | None = None, hold=None):
    """``load_dataset`` (the first ``limit`` images when given) then ``preprocess`` with a
    DataOptions' resize/crop/mean/std, checked against ``model_input`` when given. The
    file's values are converted a chunk of images at a time into ``hold(n, shape)``
    (kse_onnx.held_images.image_store: on disk when large), by default over the file's
    own float32 array when it fits, else into a new array: no whole float32 copy beside
    the file's values (docs/refit.md, "Memory")."""
    channels = model_input.dims[1] if model_input and model_input.dims and len(
        model_input.dims) == 4 else None
    raw, y = load_dataset(path, channels, raw=True)
    n = len(raw) if limit is None else min(limit, len(raw))
    y = y if y is None or n == len(y) else y[:n].copy()
    mean = [float(v) for v in options.mean] or None
    std = [float(v) for v in options.std] or None
    x, step = None, max(1, CHUNK_VALUES // max(1, raw[:1].size))
    for start in range(0, n, step):
        part = preprocess(as_images(raw[start:min(n, start + step)], path, start),
                          options.resize or None, options.crop or None, mean, std, where=path,
                          count=n)
        if not np.all(np.isfinite(part)):  # a huge mean or a tiny std overflows float32
            raise OptionError("--std" if std else "--mean", f"{path}: preprocessed images "
                                                            "hold non-finite values")
        if model_input is not None:
            model_input.check(part, path)
        if x is None:
            x = hold(n, part.shape[1:]) if hold else _over(raw, n, part.shape[1:])
        x[start:start + len(part)] = part
    return x, y


def _over(raw: np.ndarray, n: int, shape) -> np.ndarray:
    """The first ``n`` images of ``raw`` to be written over, when they are float32 images of
    ``shape`` (the file's own array: no second copy); else a new array."""
    if raw.dtype == np.float32 and raw.shape[1:] == tuple(shape) and raw.flags.c_contiguous \
            and raw.flags.writeable and n == len(raw):
        return raw
    return np.empty((n, *shape), np.float32)
