"""Where the refit's walk holds its whole-set activations: in memory, or on disk
(docs/refit.md, "Memory").

An activation over all calibration images is one tensor of shape (images, ...). In
memory it is a torch tensor. On disk it is a :class:`DiskTensor`: a raw file in a
private temporary folder (``tempfile.mkdtemp``, so ``TMPDIR`` chooses the disk; never a
user folder), read and written a slice of images at a time with ``os.pread`` /
``os.pwrite``. Plain file I/O rather than ``np.memmap``: a mapping's touched pages count
in the process's resident memory until the kernel reclaims them, so a memory-mapped walk
would still show a peak that grows with the images; read into a fresh buffer, only the
slice in use is resident (the page cache is the kernel's, dropped under pressure).

A :class:`DiskTensor` answers what the walk's consumers ask of a held activation: its
``shape``, ``dtype``, ``dim()``, ``len()``, ``numel()``, a slice of images (a float32 or
float16 torch tensor, as held), a row or a tuple index starting with one, the rows of an
index tensor (the ``block`` mode's minibatches), writing a slice, and ``float()`` (the
whole tensor in memory, for the few consumers that need it whole).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from itertools import count

import numpy as np
import torch

# A whole-set activation larger than this (float32 bytes over all images, the largest
# Conv output's) makes the walk hold its activations on disk (:func:`disk_wanted`).
DISK_FROM_BYTES = 1024 * 2**20
# On disk, tensors below this many bytes (logits, pooled features) stay in memory.
DISK_TENSOR_MIN_BYTES = 8 * 2**20
# On disk, a chunk of images holds at most this many bytes of the largest activation
# in float32 (fewer images than the walk's CHUNK on large inputs: :func:`chunk_images`).
DISK_CHUNK_BYTES = 64 * 2**20
# Bytes per read or write call (os.pread/pwrite may do less than asked on large sizes).
_IO_BYTES = 256 * 2**20


def disk_wanted(images: int, largest_per_image: int) -> bool:
    """Whether activations of ``largest_per_image`` elements per image over ``images``
    calibration images go to disk."""
    return images * largest_per_image * 4 > DISK_FROM_BYTES


def chunk_images(chunk: int, largest_per_image: int) -> int:
    """Images per chunk on disk: ``chunk`` at most, fewer when a chunk of the largest
    activation would exceed DISK_CHUNK_BYTES."""
    return max(1, min(chunk, DISK_CHUNK_BYTES // max(1, 4 * largest_per_image)))


class Holding:
    """Makes the walk's whole-set tensors: torch tensors in memory, or
    :class:`DiskTensor` files in a private folder removed by :meth:`close` (called on
    success, error and Ctrl-C alike by the ``with`` block) or, failing that, at exit."""

    def __init__(self, disk: bool):
        self.disk = disk
        self.folder: str | None = None
        self._names = count()
        self._cleanup = None

    def __enter__(self) -> Holding:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._cleanup is not None:
            self._cleanup()  # removes the folder, once
            self._cleanup = None

    def _path(self) -> str:
        if self.folder is None:
            self.folder = tempfile.mkdtemp(prefix="kse-onnx-refit-")
            self._cleanup = weakref.finalize(self, shutil.rmtree, self.folder, True)
        return os.path.join(self.folder, f"{next(self._names)}.bin")

    def _on_disk(self, shape, dtype: torch.dtype) -> bool:
        size = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
        return self.disk and len(shape) >= 1 and size >= DISK_TENSOR_MIN_BYTES

    def empty(self, shape, dtype: torch.dtype):
        """An uninitialised whole-set tensor, on disk when holding there and large."""
        if self._on_disk(shape, dtype):
            return DiskTensor(self._path(), shape, dtype)
        return torch.empty(shape, dtype=dtype)

    def keep(self, value):
        """``value`` (a computed torch tensor) as held: written to disk when holding there
        and large, else itself."""
        if isinstance(value, DiskTensor) or not self._on_disk(value.shape, value.dtype):
            return value
        held = DiskTensor(self._path(), value.shape, value.dtype)
        held[0:len(value)] = value
        return held

    def widened(self, value):
        """``value`` in float32 (a slice came out of float16's range): a float32 copy on
        disk, written a slice at a time, or ``value.float()`` in memory."""
        if not isinstance(value, DiskTensor):
            return value.float()
        if value.dtype == torch.float32:
            return value
        wide = DiskTensor(self._path(), value.shape, torch.float32)
        step = value.rows_per(_IO_BYTES)
        for start in range(0, len(value), step):
            wide[start:start + step] = value[start:start + step].float()
        return wide


def is_held_on_disk(value) -> bool:
    return isinstance(value, DiskTensor)


class DiskTensor:
    """A (images, ...) tensor in a raw file, C order, read and written by image slices.
    The file is unlinked as soon as it is opened; its space is freed when the object
    goes (or the process ends)."""

    def __init__(self, path: str, shape, dtype: torch.dtype):
        self.path, self.shape, self.dtype = path, torch.Size(shape), dtype
        self._np = torch.empty((), dtype=dtype).numpy().dtype
        self._row = int(np.prod(self.shape[1:], dtype=np.int64))  # elements per image
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.unlink(path)  # nameless from now on: the space goes with the descriptor, even
        # when the process is killed (SIGTERM, SIGKILL) and no clean-up code runs
        self._closer = weakref.finalize(self, os.close, self._fd)
        os.ftruncate(self._fd, len(self) * self._row * self._np.itemsize)
        self._first, self._base = 0, None  # a view of rows of another: see rows()

    @classmethod
    def reading(cls, images) -> DiskTensor:
        """The calibration images of a :class:`kse_onnx.held_images.DiskImages` as a
        float32 DiskTensor reading the same file (a duplicated descriptor: nothing is
        copied)."""
        held = object.__new__(cls)
        held.path, held.shape, held.dtype = "held calibration images", torch.Size(
            images.shape), torch.float32
        held._np, held._row = np.dtype(np.float32), int(np.prod(images.shape[1:], dtype=np.int64))
        held._fd = os.dup(images.fileno())
        held._closer = weakref.finalize(held, os.close, held._fd)
        held._first, held._base = images.offset // max(1, held._row * 4), None
        return held

    def rows(self, start: int, stop: int) -> DiskTensor:
        """Images ``start:stop`` as a view reading the same file (nothing copied; the
        view keeps the file open)."""
        start, stop = self._span(slice(start, stop))
        view = object.__new__(DiskTensor)
        view.__dict__.update(self.__dict__)
        view.shape = torch.Size((stop - start, *self.shape[1:]))
        view._first, view._base = self._first + start, self._base or self
        return view

    def __len__(self) -> int:
        return self.shape[0]

    def dim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        return len(self) * self._row

    def rows_per(self, nbytes: int) -> int:
        """Images per slice of about ``nbytes``."""
        return max(1, nbytes // max(1, self._row * self._np.itemsize))

    def _span(self, key: slice) -> tuple[int, int]:
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise IndexError("a held activation is read by contiguous slices of images")
        return start, max(start, stop)

    def _read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, *self.shape[1:]), self._np)
        view = memoryview(out.reshape(-1).view(np.uint8))
        offset, done = (self._first + start) * self._row * self._np.itemsize, 0
        while done < len(view):
            got = os.preadv(self._fd, [view[done:done + _IO_BYTES]], offset + done)
            if got <= 0:
                raise OSError(f"{self.path}: short read")
            done += got
        return out

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, tuple):
            head = self[key[0]]
            return head[(slice(None), *key[1:])] if isinstance(key[0], slice) else head[key[1:]]
        if isinstance(key, slice):
            return torch.from_numpy(self._read(*self._span(key)))
        if isinstance(key, (int, np.integer)):
            index = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= index < len(self):
                raise IndexError(f"image {key} of {len(self)}")
            return torch.from_numpy(self._read(index, index + 1)[0])
        rows = np.asarray(key.cpu() if isinstance(key, torch.Tensor) else key, np.int64)
        rows = np.where(rows < 0, rows + len(self), rows)
        out = np.empty((len(rows), *self.shape[1:]), self._np)
        for k, row in enumerate(rows):  # a minibatch: one read per image
            out[k] = self._read(int(row), int(row) + 1)[0]
        return torch.from_numpy(out)

    def __setitem__(self, key: slice, value: torch.Tensor) -> None:
        start, stop = self._span(key)
        data = np.ascontiguousarray(value.detach().to(self.dtype).numpy())
        if data.shape != (stop - start, *self.shape[1:]):
            raise ValueError(f"cannot write {tuple(data.shape)} into images {start}:{stop} "
                             f"of {tuple(self.shape)}")
        view = memoryview(data.reshape(-1).view(np.uint8))
        offset, done = (self._first + start) * self._row * self._np.itemsize, 0
        while done < len(view):
            done += os.pwrite(self._fd, view[done:done + _IO_BYTES], offset + done)

    def float(self) -> torch.Tensor:
        """The whole tensor in memory, as float32."""
        return self[0:len(self)].float()


def runs_by_images(op: str, attrs: dict, args: list, batch: list[bool]) -> bool:
    """Whether a node outside the walk's PER_IMAGE operators still treats each image alone
    with these arguments (``batch[k]``: argument k holds every image), so that the disk
    walk runs it a chunk of images at a time instead of reading its inputs whole: a
    Concat, Split or Softmax off the batch axis, a Slice whose axes skip it, a Transpose
    that keeps it first, a Resize by scales that keep it, a Reshape that keeps it
    (:func:`chunk_args`). These copy or interpolate values, so chunks give the same
    bytes as the whole."""
    x = args[0]
    if not batch[0] or any(b for b in batch[1:]) and op != "Concat":
        return False
    rank = x.dim()
    if op in ("Concat", "Split", "Softmax", "LogSoftmax", "Flatten"):
        default = {"Concat": None, "Split": 0, "Flatten": 1}.get(op, -1)
        axis = attrs.get("axis", default)
        return axis is not None and axis % rank != 0 and (
            op != "Concat" or all(b or a is None for a, b in zip(args, batch, strict=True)))
    if op == "Slice":
        return len(args) > 3 and args[3] is not None and all(
            int(a) % rank != 0 for a in args[3].reshape(-1))
    if op == "Transpose":
        return list(attrs.get("perm", []))[:1] == [0]
    if op in ("Resize", "Upsample"):
        scales = args[2] if op == "Resize" and len(args) > 2 else (
            args[1] if op == "Upsample" and len(args) > 1 else None)
        sizes = args[3] if op == "Resize" and len(args) > 3 else None
        return (scales is not None and scales.numel() == rank and float(scales[0]) == 1
                and (sizes is None or not sizes.numel())
                and (op == "Upsample" or args[1] is None or not args[1].numel()))
    if op == "Reshape":
        first = int(args[1].reshape(-1)[0]) if args[1].numel() else -1
        return first == len(x) or (first == 0 and not attrs.get("allowzero", 0))
    return False


def chunk_args(op: str, args: list, rows: int, images: int) -> list:
    """A chunk's arguments of a :func:`runs_by_images` node: a Reshape to all ``images``
    reshapes ``rows`` of them."""
    if op == "Reshape" and int(args[1].reshape(-1)[0]) == images:
        shape = args[1].clone()
        shape.view(-1)[0] = rows
        return [args[0], shape, *args[2:]]
    return args
