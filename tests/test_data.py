"""Dataset readers (kse_onnx/data.py): image folders; every user data file validated
before use (.npz members, IDX headers, gzip streams, preprocessing options, the model
input), each failure a one-line error naming the file or the option."""

from __future__ import annotations

import gzip
import re
import zipfile

import numpy as np
import pytest

from kse_onnx.data import ModelInput, load_data, load_dataset, preprocess, read_idx, read_npz
from kse_onnx.errors import ModelError, OptionError
from kse_onnx.options import DataOptions

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


def _npz(tmp_path, name="d.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def _idx(values: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, values.ndim]) + np.array(values.shape, ">u4").tobytes()
    return header + values.astype(values.dtype.newbyteorder(">")).tobytes()


IMAGES = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4) / 100


@pytest.mark.parametrize("arrays, words", [
    ({"x": np.array([object(), 1], dtype=object)}, "holds Python objects (a pickle)"),
    ({"x": np.array(["a", "b"])}, "expected numbers"),
    ({"x": np.array([[1 + 2j]])}, "expected numbers"),
    ({"x": np.zeros((2, 2), [("a", "f4"), ("b", "i4")])}, "expected numbers"),
    ({"x": np.zeros((0, 3, 4, 4), np.float32)}, "holds no images"),
    ({"x": np.zeros((2, 3, 0, 4), np.float32)}, "are empty"),
    ({"x": np.full((2, 3, 4, 4), np.nan, np.float32)}, "image 0 holds NaN or infinite"),
    ({"x": np.full((2, 3, 4, 4), 1e300)}, "NaN or infinite values (as float32)"),
    ({"x": np.zeros(5, np.float32)}, "expected images (n, C, H, W)"),
    ({"y": np.zeros(2, np.int64)}, "has no array 'x'"),
    ({"x": IMAGES, "y": np.array(["a", "b"])}, "expected numbers"),
    ({"x": IMAGES, "y": np.array([0, 1, 2])}, "3 labels for 2 images"),
])
def test_bad_npz_is_refused_naming_the_file(tmp_path, arrays, words):
    path = _npz(tmp_path, **arrays)
    with pytest.raises(ModelError) as info:
        load_data(path, DataOptions())
    assert words in str(info.value) and str(path) in str(info.value)
    assert len(str(info.value).splitlines()) == 1


def test_npz_header_promising_more_than_the_file_holds_is_refused_unread(tmp_path):
    """A shape of 10^12 elements in an .npy header: refused from the header and the
    member's size, before anything is allocated."""
    path = tmp_path / "huge.npz"
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)}
    with zipfile.ZipFile(path, "w") as archive, archive.open("x.npy", "w") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 64)
    with pytest.raises(ModelError, match=r"needs 4000000000000 bytes, the file holds 64"):
        load_data(path, DataOptions())


@pytest.mark.parametrize("damage", ["not a zip", "cut", "npy renamed", "crc"])
def test_damaged_npz_is_a_one_line_error(tmp_path, damage):
    path = _npz(tmp_path, x=IMAGES)
    data = path.read_bytes()
    if damage == "not a zip":
        path.write_bytes(b"hello, not an archive")
    elif damage == "cut":
        path.write_bytes(data[:len(data) // 2])
    elif damage == "npy renamed":
        np.save(tmp_path / "a.npy", IMAGES)
        (tmp_path / "a.npy").rename(path)
    else:  # one data byte changed: the CRC no longer matches
        i = data.index(b"NUMPY") + 200
        path.write_bytes(data[:i] + bytes([data[i] ^ 1]) + data[i + 1:])
    with pytest.raises(ModelError) as info:
        load_data(path, DataOptions())
    assert str(path) in str(info.value) and len(str(info.value).splitlines()) == 1


def test_npz_reader_returns_what_numpy_saved(tmp_path):
    fortran = np.asfortranarray(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    path = tmp_path / "a.npz"
    np.savez_compressed(path, f=fortran, c=IMAGES)
    arrays = read_npz(path)
    assert np.array_equal(arrays["f"], fortran) and np.array_equal(arrays["c"], IMAGES)
    x, y = load_data(_npz(tmp_path, "u8.npz", x=np.full((1, 2, 2), 255, np.uint8)),
                     DataOptions())
    assert x.shape == (1, 1, 2, 2) and np.all(x == 1.0) and y is None


@pytest.mark.parametrize("data, words", [
    (b"\0\0\x08", "bad magic number"),
    (b"\1\0\x08\x01\0\0\0\x01\0", "bad magic number"),
    (b"\0\0\x08\x03\0\0\0\x02\0\0", "IDX header truncated"),
    (_idx(np.zeros((2, 4, 4), np.uint8))[:-5], "IDX data holds 27 bytes"),
    (_idx(np.zeros((2, 4, 4), np.uint8)) + b"\0", "IDX data holds 33 bytes"),
    (bytes([0, 0, 8, 3]) + np.array([2**31, 2**31, 2**31], ">u4").tobytes(),
     "need 9903520314283042199192993792"),
])
def test_bad_idx_is_refused(tmp_path, data, words):
    path = tmp_path / "bad-images-idx3-ubyte"
    path.write_bytes(data)
    with pytest.raises(ModelError, match=re.escape(words)):
        load_data(path, DataOptions())


@pytest.mark.parametrize("damage, words", [
    ("truncated", "truncated or corrupt gzip data"),
    ("corrupt", "truncated or corrupt gzip data"),
    ("not gzip", "truncated or corrupt gzip data"),
    ("short data", "IDX data holds 31 bytes"),
])
def test_bad_gzip_idx_is_refused(tmp_path, damage, words):
    raw = _idx(np.arange(32, dtype=np.uint8).reshape(2, 4, 4))
    packed = gzip.compress(raw)
    data = {"truncated": packed[:-12], "corrupt": packed[:12] + b"\xff" * 8 + packed[20:],
            "not gzip": raw, "short data": gzip.compress(raw[:-1])}[damage]
    path = tmp_path / "x-images-idx3-ubyte.gz"
    path.write_bytes(data)
    with pytest.raises(ModelError, match=words) as info:
        load_data(path, DataOptions())
    assert str(path) in str(info.value)


def test_idx_of_every_type_and_its_labels(tmp_path):
    for code, dtype in ((0x08, np.uint8), (0x0B, np.int16), (0x0D, np.float32)):
        values = np.arange(2 * 3 * 3).astype(dtype).reshape(2, 3, 3)
        path = tmp_path / f"t{code}-images-idx3-ubyte"
        path.write_bytes(_idx(values, code))
        assert np.array_equal(read_idx(path), values)
    (tmp_path / "t8-labels-idx1-ubyte").write_bytes(_idx(np.array([1, 2, 3], np.uint8)))
    with pytest.raises(ModelError, match="3 labels for 2 images"):
        load_data(tmp_path / "t8-images-idx3-ubyte", DataOptions())


@pytest.mark.parametrize("options, flag, words", [
    (DataOptions(mean=("0.5", "0.5")), "--mean", "2 values for the 3-channel images"),
    (DataOptions(std=("1", "1", "1", "1")), "--std", "4 values for the 3-channel images"),
    (DataOptions(crop=5), "--crop", "5 is larger than the 4x4 images"),
    (DataOptions(resize=2, crop=3), "--crop", "3 is larger than the 2x2 images"),
    (DataOptions(resize=10**7), "--resize", "more than this machine's memory"),
    (DataOptions(std=("1e-45",)), "--std", "non-finite values"),
])
def test_preprocessing_options_are_checked_against_the_images(tmp_path, options, flag, words):
    path = _npz(tmp_path, x=IMAGES)
    with pytest.raises(OptionError) as info:
        load_data(path, options)
    assert info.value.option == flag and words in str(info.value)


def test_preprocessing_one_value_per_channel_or_one_for_all():
    one = preprocess(IMAGES, mean=[0.5], std=[2.0])
    three = preprocess(IMAGES, mean=[0.5] * 3, std=[2.0] * 3)
    assert np.array_equal(one, three) and np.allclose(one, (IMAGES - 0.5) / 2)
    assert preprocess(IMAGES, crop=4).shape == IMAGES.shape  # a crop of the whole image


@pytest.mark.parametrize("dims, words", [
    ((None, 1, 4, 4), "images have 3 channels, model input 'x' takes 1"),
    ((None, 3, 8, 8), "images have 4 height, model input 'x' takes 8; use --resize/--crop"),
    ((None, 3, 4, 4, 4), "do not fit model input 'x' of rank 5"),
    ((3, 4, 4), "takes one image without a batch axis [3, 4, 4]"),
])
def test_images_are_checked_against_the_model_input(tmp_path, dims, words):
    path = _npz(tmp_path, x=IMAGES)
    with pytest.raises(ModelError, match=re.escape(words)):
        load_data(path, DataOptions(), ModelInput("x", dims))
    x, _ = load_data(path, DataOptions(), ModelInput("x", (None, 3, None, None)))
    assert x.shape == IMAGES.shape


def test_an_input_without_a_batch_axis_takes_images_fed_one_at_a_time(tmp_path):
    """Calibration (the refit, the drop measurement) feeds such an input one image at a
    time: the images are checked against its (C, H, W); other commands still refuse it."""
    path = _npz(tmp_path, x=IMAGES)
    x, _ = load_data(path, DataOptions(), ModelInput("x", (3, 4, 4), per_image=True))
    assert x.shape == IMAGES.shape
    with pytest.raises(ModelError, match=re.escape("images have 4 height, model input 'x' "
                                                   "takes 8")):
        load_data(path, DataOptions(), ModelInput("x", (3, 8, 8), per_image=True))
    with pytest.raises(ModelError, match="this command feeds it batches"):
        load_data(path, DataOptions(), ModelInput("x", (3, 4, 4)))


def test_image_folder_is_read_as_grayscale_for_a_one_channel_model(tmp_path):
    root = _folder(tmp_path)
    x, y = load_data(root, DataOptions(), ModelInput("x", (None, 1, 5, 6)))
    assert x.shape == (4, 1, 5, 6) and y.tolist() == [0, 0, 1, 1]


def test_gzip_idx_declaring_more_than_the_memory_is_refused_unread(tmp_path):
    """A gzip stream may expand to anything; its header's size is checked first."""
    path = tmp_path / "bomb-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(bytes([0, 0, 8, 3]) + np.array([2**31, 2**31, 2**20], ">u4")
                                   .tobytes() + bytes(1000)))
    with pytest.raises(ModelError, match="more than this machine's memory"):
        load_data(path, DataOptions())


def test_decompression_bomb_in_an_image_folder_is_an_unreadable_image(tmp_path):
    """An image over PIL's pixel limit (a small PNG can declare 10^8 pixels) is refused
    as unreadable, never decoded, and prints no warning."""
    root = _folder(tmp_path)
    Image.new("1", (10_000, 9_000)).save(root / "a_cat" / "bomb.png")
    with pytest.raises(ModelError, match="bomb.png"):
        load_dataset(root)
