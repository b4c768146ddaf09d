"""Readers of training data in plain numpy (no torch needed).

IDX is the MNIST family's format: a magic number whose third byte is the element type
(0x08 = uint8) and fourth the rank, then the dimensions as big-endian uint32, then the
data. Files may be gzip-compressed.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ..errors import ModelError

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX (optionally .gz) file."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read IDX data ({exc})") from None
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
