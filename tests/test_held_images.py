"""Calibration images held on disk (kse_onnx/held_images.py): a file read and written by
slices of images, files converted and preprocessed a chunk at a time (data.load_data),
and the same output bytes as holding them in memory."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from graphs import folded_resnet, photo_batch
from kse_onnx import held_images
from kse_onnx.data import as_images, load_data, preprocess
from kse_onnx.held_images import DiskImages, image_store
from kse_onnx.options import (
    CalibrationOptions,
    DataOptions,
    KSEOptions,
    LowerOptions,
    QuantizeOptions,
    RefitOptions,
)


def test_disk_images_read_back_what_was_written_by_slices(private_tmp):
    values = np.random.default_rng(0).standard_normal((9, 3, 4, 5)).astype(np.float32)
    disk = DiskImages(values.shape)
    assert not any(private_tmp.iterdir())  # nameless from the start
    for start in range(0, 9, 4):  # 4, 4, 1 images
        disk[start:start + 4] = values[start:start + 4]
    assert disk.shape == values.shape and len(disk) == 9 and disk.ndim == 4
    assert disk.nbytes == values.nbytes and disk.dtype == np.float32
    view = disk[2:7]  # a view: nothing read
    assert isinstance(view, DiskImages) and view.shape == (5, 3, 4, 5)
    assert np.array_equal(np.asarray(view), values[2:7])
    assert np.array_equal(np.asarray(view[1:3]), values[3:5])  # a view of a view
    assert np.array_equal(disk[-1], values[-1]) and np.array_equal(disk[0, 1], values[0, 1])
    assert np.array_equal(disk[1:3, 2], values[1:3, 2])
    pick = np.array([8, 0, 3, 3])  # a minibatch: any order, repeats
    assert np.array_equal(disk[pick], values[pick])
    assert np.array_equal(np.ascontiguousarray(disk[7:]), values[7:])
    disk[4] = values[0]
    assert np.array_equal(disk[4], values[0]) and np.array_equal(view[2], values[0])
    with pytest.raises(ValueError, match="cannot write"):
        disk[0:2] = values[0:3]
    with pytest.raises(IndexError):
        disk[0:9:2]
    with pytest.raises(IndexError):
        disk[9]
    closer = disk._closer
    del disk, view
    assert not closer.alive  # the file goes with the last view


def test_the_store_goes_to_disk_only_above_the_threshold(monkeypatch):
    assert isinstance(image_store(4, (3, 8, 8)), np.ndarray)
    monkeypatch.setattr(held_images, "DISK_FROM_BYTES", 4 * 3 * 8 * 8 * 4 - 1)
    assert isinstance(image_store(4, (3, 8, 8)), DiskImages)


@pytest.mark.parametrize("dtype, layout, data, limit", [
    ("uint8", "nhwc", DataOptions(mean=[0.5, 0.4, 0.3], std=[0.2]), None),
    ("uint8", "nchw", DataOptions(), 13),
    ("float32", "nchw", DataOptions(), None),
    ("float32", "nchw", DataOptions(crop=6, mean=[0.1]), 21),
    ("float64", "nhwc", DataOptions(resize=10), None)])
def test_chunks_give_the_bytes_of_the_whole_set(tmp_path, monkeypatch, private_tmp, dtype,
                                                layout, data, limit):
    """Converted and preprocessed by chunks of 5 images, into memory or onto disk, a file
    gives the float32 images the whole-set conversion gives, byte for byte."""
    rng = np.random.default_rng(1)
    raw = (rng.integers(0, 256, (23, 3, 8, 8)) if dtype == "uint8"
           else rng.standard_normal((23, 3, 8, 8))).astype(dtype)
    if layout == "nhwc":
        raw = raw.transpose(0, 2, 3, 1).copy()
    np.savez(tmp_path / "images.npz", x=raw, y=np.arange(23) % 4)
    whole = preprocess(as_images(raw, "x")[:limit], data.resize or None, data.crop or None,
                       [float(v) for v in data.mean] or None, [float(v) for v in data.std] or None)
    monkeypatch.setattr("kse_onnx.data.CHUNK_VALUES", 5 * 3 * 8 * 8)
    x, y = load_data(tmp_path / "images.npz", data, limit=limit)
    assert isinstance(x, np.ndarray) and x.tobytes() == whole.tobytes()
    assert np.array_equal(y, (np.arange(23) % 4)[:limit])
    monkeypatch.setattr(held_images, "DISK_FROM_BYTES", 0)
    disk, _ = load_data(tmp_path / "images.npz", data, limit=limit, hold=image_store)
    assert isinstance(disk, DiskImages) and np.asarray(disk).tobytes() == whole.tobytes()
    assert not any(private_tmp.iterdir())


def test_a_bad_image_is_named_by_its_index_in_the_file(tmp_path, monkeypatch):
    x = np.zeros((12, 3, 4, 4), np.float32)
    x[9, 1, 2, 2] = np.inf
    np.savez(tmp_path / "images.npz", x=x)
    monkeypatch.setattr("kse_onnx.data.CHUNK_VALUES", 4 * 3 * 4 * 4)
    with pytest.raises(Exception, match="image 9 holds NaN"):
        load_data(tmp_path / "images.npz", DataOptions())


def test_the_held_out_split_reorders_disk_images_like_an_array():
    torch = pytest.importorskip("torch")  # noqa: F841  (the refit's package needs it)
    from kse_onnx.refit.holdout import fitted_first

    values = np.random.default_rng(2).standard_normal((17, 2, 3, 3)).astype(np.float32)
    disk = DiskImages(values.shape)
    disk[0:17] = values
    memory = values.copy()
    with fitted_first(memory, 0.3, 5) as (a, held_a), fitted_first(disk, 0.3, 5) as (b, held_b):
        assert held_a == held_b == 5 and b is disk
        assert np.array_equal(np.asarray(b), a)
    assert np.array_equal(np.asarray(disk), values)  # put back on leaving


@pytest.mark.parametrize("refit, quantize", [
    ("act", "int8-static"), pytest.param("act", None, marks=pytest.mark.slow),
    pytest.param("distill", None, marks=pytest.mark.slow)])
def test_images_on_disk_give_the_bytes_images_in_memory_give(tmp_path, monkeypatch, private_tmp,
                                                              refit, quantize):
    """The whole ``optimize --calibration`` (refit walk, held-out split, drop measurement,
    int8 calibration, distillation) with the images on disk writes the model and report it
    writes with them in memory, and leaves no file."""
    pytest.importorskip("torch")
    from kse_onnx.api import optimize

    src, images = tmp_path / "model.onnx", tmp_path / "images.npz"
    onnx.save(folded_resnet(width=16, hw=8), src)
    np.savez(images, x=(photo_batch((40, 3, 8, 8), seed=3) * 255).clip(0, 255).astype(np.uint8))
    options = dict(lower_options=LowerOptions("dense"), data=DataOptions(mean=[0.5], std=[0.25]),
                   calibration=CalibrationOptions(str(images)), log=lambda line: None,
                   refit=RefitOptions(refit, refit_steps=20, refit_batch=16,
                                      refit_distill_epochs=1),
                   quantize=QuantizeOptions(quantize) if quantize else None)
    memory = optimize(src, tmp_path / "memory.onnx", KSEOptions(G=4), **options)
    stores = []

    def counted(n, shape):
        stores.append(image_store(n, shape))
        return stores[-1]

    monkeypatch.setattr(held_images, "DISK_FROM_BYTES", 0)
    monkeypatch.setattr("kse_onnx.calibration.image_store", counted)
    disk = optimize(src, tmp_path / "disk.onnx", KSEOptions(G=4), **options)
    assert len(stores) == 1 and isinstance(stores[0], DiskImages)
    assert (tmp_path / "disk.onnx").read_bytes() == (tmp_path / "memory.onnx").read_bytes()
    assert disk.extra["accuracy"] == memory.extra["accuracy"]
    assert [layer["error_after"] for layer in disk.extra["refit"]["layers"]] == [
        layer["error_after"] for layer in memory.extra["refit"]["layers"]]
    assert not [p for p in private_tmp.iterdir() if p.name.startswith("kse-onnx-images")]
