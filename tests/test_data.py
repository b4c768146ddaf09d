"""Dataset readers (kse_onnx/data.py): image folders."""

from __future__ import annotations

import numpy as np
import pytest

from kse_onnx.data import load_dataset
from kse_onnx.errors import ModelError

Image = pytest.importorskip("PIL.Image")


def _folder(tmp_path):
    root = tmp_path / "images"
    for label, value in (("a_cat", 40), ("b_dog", 200)):
        (root / label).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (6, 5), (value + i, 0, 0)).save(root / label / f"{i}.png")
    return root


def test_image_folder_reads_classes_and_ignores_other_files(tmp_path):
    root = _folder(tmp_path)
    (root / "a_cat" / "notes.txt").write_text("not an image")
    x, y = load_dataset(root)
    assert x.shape == (4, 3, 5, 6) and y.tolist() == [0, 0, 1, 1]
    np.testing.assert_allclose(x[:, 0, 0, 0], np.array([40, 41, 200, 201]) / 255.0, rtol=1e-6)


def test_unreadable_image_is_an_error_naming_it(tmp_path):
    root = _folder(tmp_path)
    (root / "b_dog" / "broken.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(ModelError, match="broken.png"):
        load_dataset(root)
