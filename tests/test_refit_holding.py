"""The refit's disk holding (kse_onnx/onnx_torch/holding.py): files read and written by image
slices, the same bytes as holding in memory, and no file left behind."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import graphs
from graphs import folded_resnet, photo_batch
from kse_onnx.api import optimize
from kse_onnx.options import CalibrationOptions, KSEOptions, LowerOptions, RefitOptions

torch = pytest.importorskip("torch")
from kse_onnx.onnx_torch import held, holding  # noqa: E402  (torch)
from kse_onnx.onnx_torch.holding import DiskTensor, Holding  # noqa: E402
from kse_onnx.refit.layer import SharedConv  # noqa: E402

FAST = dict(refit_steps=20, refit_batch=16)


def _left(folder) -> list:
    """The refit's folders in ``folder`` (torch may put its own caches there)."""
    return [p.name for p in folder.iterdir() if p.name.startswith("kse-onnx-refit-")]


def test_a_disk_tensor_reads_back_what_was_written_by_slices(private_tmp):
    rng = np.random.default_rng(0)
    values = torch.from_numpy(rng.standard_normal((9, 3, 4, 5)).astype(np.float32))
    with Holding(disk=True) as held:
        holding_min = holding.DISK_TENSOR_MIN_BYTES
        holding.DISK_TENSOR_MIN_BYTES = 0
        try:
            disk = held.empty(values.shape, torch.float16)
        finally:
            holding.DISK_TENSOR_MIN_BYTES = holding_min
        assert isinstance(disk, DiskTensor) and len(_left(private_tmp)) == 1
        assert not any((private_tmp / _left(private_tmp)[0]).iterdir())  # nameless files
        for start in range(0, 9, 4):  # 4, 4, 1 images
            disk[start:start + 4] = values[start:start + 4]
        half = values.half()
        assert disk.shape == values.shape and disk.dim() == 4 and len(disk) == 9
        assert disk.numel() == values.numel() and disk.dtype == torch.float16
        assert torch.equal(disk[2:7], half[2:7]) and torch.equal(disk[7:], half[7:])
        assert torch.equal(disk[-1], half[-1]) and torch.equal(disk[0, 1], half[0, 1])
        assert torch.equal(disk[1:3, 2], half[1:3, 2])
        pick = torch.tensor([8, 0, 3, 3])  # a minibatch: any order, repeats
        assert torch.equal(disk[pick], half[pick])
        assert torch.equal(disk.float(), half.float())
        wide = held.widened(disk)
        assert wide.dtype == torch.float32 and torch.equal(wide[0:9], half.float())
        with pytest.raises(ValueError, match="cannot write"):
            disk[0:2] = values[0:3]
        with pytest.raises(IndexError):
            disk[0:9:2]
        closers = [disk._closer, wide._closer]
        del disk, wide  # a tensor's file goes with it
        assert not any(closer.alive for closer in closers)
    assert _left(private_tmp) == []


def test_small_tensors_and_memory_holding_stay_torch_tensors(private_tmp):
    assert isinstance(Holding(disk=False).empty((4, 2), torch.float32), torch.Tensor)
    with Holding(disk=True) as held:  # logits-sized: not worth a file
        small = torch.ones(4, 10)
        assert held.keep(small) is small and isinstance(held.empty((4, 10), torch.float32),
                                                        torch.Tensor)
    assert _left(private_tmp) == []


def _force_disk(monkeypatch):
    monkeypatch.setattr(holding, "DISK_FROM_BYTES", 0)
    monkeypatch.setattr(holding, "DISK_TENSOR_MIN_BYTES", 0)


def _run(src, images, out, mode, lowering="compact"):
    return optimize(src, out, KSEOptions(G=4), lower_options=LowerOptions(lowering),
                    calibration=CalibrationOptions(str(images)),
                    refit=RefitOptions(mode, **FAST), log=lambda line: None)


@pytest.mark.parametrize("builder, mode, half", [
    ("resnet", "act", True), ("tiny_detector", "act", True),
    pytest.param("resnet", "act", False, marks=pytest.mark.slow),
    pytest.param("resnet", "block", True, marks=pytest.mark.slow),
    pytest.param("resnet", "ls", False, marks=pytest.mark.slow),
    pytest.param("tiny_unet", "act", False, marks=pytest.mark.slow)])
def test_disk_holding_writes_the_bytes_memory_holding_writes(tmp_path, private_tmp,
                                                             monkeypatch, builder, mode, half):
    """Forced onto disk (every tensor a file), the refit writes the same model byte for
    byte as in memory, with float16 holding or without, and leaves no file behind. The
    detector's Split, Slice, Concat, Resize, Reshape and Transpose run by chunks of
    images on disk (holding.runs_by_images), the U-Net's bilinear Resize too."""
    src, images = tmp_path / "model.onnx", tmp_path / "images.npz"
    if builder == "resnet":
        onnx.save(folded_resnet(width=16, hw=8), src)
        np.savez(images, x=photo_batch((40, 3, 8, 8), seed=3))
    else:
        onnx.save(getattr(graphs, builder)(hw=16), src)
        np.savez(images, x=photo_batch((24, 3, 16, 16), seed=5))
    if half:  # chunks of 7 images, so the last one is short
        monkeypatch.setattr(held, "HALF_FROM_BYTES", 0)
    monkeypatch.setattr(held, "CHUNK", 7)
    memory = _run(src, images, tmp_path / "memory.onnx", mode)
    files = []
    real_path = Holding._path

    def counted(self):
        files.append(real_path(self))
        return files[-1]

    monkeypatch.setattr(Holding, "_path", counted)
    _force_disk(monkeypatch)
    disk = _run(src, images, tmp_path / "disk.onnx", mode)
    assert len(files) > 5  # the walk did hold on disk
    assert (tmp_path / "disk.onnx").read_bytes() == (tmp_path / "memory.onnx").read_bytes()
    assert disk.extra["refit"]["layers"] == [
        {**layer, "seconds": d["seconds"]} for layer, d in zip(
            memory.extra["refit"]["layers"], disk.extra["refit"]["layers"], strict=True)]
    assert _left(private_tmp) == []


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_the_disk_folder_goes_on_an_error_or_ctrl_c(tmp_path, private_tmp, monkeypatch, error):
    src, images = tmp_path / "model.onnx", tmp_path / "images.npz"
    onnx.save(folded_resnet(width=8, hw=8), src)
    np.savez(images, x=photo_batch((16, 3, 8, 8), seed=3))
    _force_disk(monkeypatch)

    def fail(*args, **kwargs):
        assert _left(private_tmp)  # the folder exists: files were being held
        raise error("stop")

    monkeypatch.setattr(SharedConv, "least_squares", fail)
    with pytest.raises(error):
        _run(src, images, tmp_path / "out.onnx", "ls")
    assert _left(private_tmp) == [] and not (tmp_path / "out.onnx").exists()
