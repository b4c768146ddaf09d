"""Calibration images held in memory or on disk (docs/refit.md, "Memory").

A calibration set read from a file is held whole between the facade and its consumers
(the refit's walk, the held-out split, distillation, the drop measurement, INT8
calibration), and 512 detector images of 3x640x640 are 2.5 GB of float32. Above
``DISK_FROM_BYTES`` (float32 bytes of the whole set) :func:`image_store` holds them in a
:class:`DiskImages`: a raw float32 file in the temporary folder (``TMPDIR``), unlinked
as soon as it is opened (its space goes with the object, or with the process however it
ends), read and written with ``os.pread`` / ``os.pwrite``. Not ``np.memmap``: a
mapping's touched pages count in the process's resident memory until the kernel
reclaims them, so the peak would still grow with the images (as in
:mod:`kse_onnx.onnx_torch.holding`, the same rule for the walk's activations).

A :class:`DiskImages` behaves like the array the consumers slice: ``len``, ``shape``,
``dtype``, ``ndim``, ``nbytes``; a slice of images is a view of the same file (nothing
read, as a numpy slice copies nothing); an image, a list of images, or ``np.asarray`` of
a view reads those images into a fresh array; an image or a slice can be written (the
held-out split reorders the rows in place). Consumers read it a chunk at a time.
"""

from __future__ import annotations

import os
import tempfile
import weakref

import numpy as np

# The whole set above this many float32 bytes is held on disk (the same threshold as
# the walk's activations: kse_onnx.onnx_torch.holding.DISK_FROM_BYTES).
DISK_FROM_BYTES = 1024 * 2**20
_IO_BYTES = 256 * 2**20  # per read or write call (they may do less than asked)


def image_store(n: int, shape) -> np.ndarray | DiskImages:
    """An uninitialised float32 (n, *shape) set: on disk above DISK_FROM_BYTES, else an
    array."""
    if n * int(np.prod(shape, dtype=np.int64)) * 4 > DISK_FROM_BYTES:
        return DiskImages((n, *shape))
    return np.empty((n, *shape), np.float32)


class DiskImages:
    """A float32 (images, ...) set in an unnamed file, C order. ``DiskImages(shape)``
    makes a new one; a slice is a view of the same file."""

    dtype = np.dtype(np.float32)

    def __init__(self, shape):
        self.shape = tuple(int(s) for s in shape)
        self._row = int(np.prod(self.shape[1:], dtype=np.int64))  # values per image
        fd, path = tempfile.mkstemp(prefix="kse-onnx-images-", suffix=".bin")
        os.unlink(path)  # nameless from now on: the space goes with the descriptor
        self._fd, self._first = fd, 0
        self._closer = weakref.finalize(self, os.close, fd)
        os.ftruncate(fd, len(self) * self._row * 4)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return len(self) * self._row

    @property
    def nbytes(self) -> int:
        return self.size * 4

    def fileno(self) -> int:
        """The file's descriptor (valid while this set or a view of it lives)."""
        return self._fd

    @property
    def offset(self) -> int:
        """The byte offset of this view's first image in the file."""
        return self._first * self._row * 4

    def __repr__(self) -> str:
        return f"DiskImages(shape={self.shape})"

    def _view(self, start: int, stop: int) -> DiskImages:
        view = object.__new__(DiskImages)
        view.__dict__.update(self.__dict__)  # shares the descriptor and its finalizer
        view.shape = (stop - start, *self.shape[1:])
        view._first = self._first + start
        return view

    def _index(self, key) -> int:
        index = int(key) + (len(self) if key < 0 else 0)
        if not 0 <= index < len(self):
            raise IndexError(f"image {key} of {len(self)}")
        return index

    def _span(self, key: slice) -> tuple[int, int]:
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise IndexError("held images are read by contiguous slices")
        return start, max(start, stop)

    def _io(self, start: int, array: np.ndarray, write: bool) -> None:
        view = memoryview(array.reshape(-1).view(np.uint8))
        offset, done = (self._first + start) * self._row * 4, 0
        while done < len(view):
            part = view[done:done + _IO_BYTES]
            got = (os.pwrite(self._fd, part, offset + done) if write
                   else os.preadv(self._fd, [part], offset + done))
            if got <= 0:
                raise OSError("held calibration images: short read or write")
            done += got

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Images ``start:stop`` in a fresh array."""
        start, stop = self._span(slice(start, stop))
        out = np.empty((stop - start, *self.shape[1:]), np.float32)
        self._io(start, out, write=False)
        return out

    def __getitem__(self, key):
        if isinstance(key, slice):
            return self._view(*self._span(key))
        if isinstance(key, tuple):
            head = self[key[0]]
            rest = (slice(None), *key[1:]) if isinstance(key[0], slice) else key[1:]
            return np.asarray(head)[rest]
        if isinstance(key, (int, np.integer)):
            index = self._index(key)
            return self.read(index, index + 1)[0]
        rows = np.asarray(key)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        out = np.empty((len(rows), *self.shape[1:]), np.float32)
        for k, row in enumerate(rows.reshape(-1)):
            out[k] = self[int(row)]
        return out

    def __setitem__(self, key, value) -> None:
        if isinstance(key, (int, np.integer)):
            start = self._index(key)
            stop = start + 1
        else:
            start, stop = self._span(key)
        data = np.ascontiguousarray(value, np.float32)
        if data.size != (stop - start) * self._row:
            raise ValueError(f"cannot write {data.shape} into images {start}:{stop} of "
                             f"{self.shape}")
        self._io(start, data, write=True)

    def __array__(self, dtype=None, copy=None):
        out = self.read()
        return out if dtype is None else out.astype(dtype, copy=False)

    def copy(self) -> np.ndarray:
        return self.read()
