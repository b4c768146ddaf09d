"""Optimize a small graph built in a test: the helper the test files share (through the
Python API, or through the CLI as a user runs it)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import onnx

from kse_onnx.api import optimize
from kse_onnx.cli import main
from kse_onnx.options import KSEOptions, LowerOptions
from kse_onnx.report import ModelReport


class Optimized(NamedTuple):
    src: Path
    dst: Path
    report: ModelReport


def saved(folder: Path, model: onnx.ModelProto | Path, name: str = "in.onnx") -> Path:
    """``model`` as a file: a path is used as it is, a ModelProto is saved to folder/name."""
    if isinstance(model, Path):
        return model
    path = folder / name
    onnx.save(model, path)
    return path


def optimize_graph(folder: Path, model: onnx.ModelProto | Path, kse: KSEOptions | None = None,
                   lowering: str | LowerOptions = "dense", *, src: str = "in.onnx",
                   dst: str | None = None, **options) -> Optimized:
    """``optimize`` of ``model`` (saved as folder/src unless it is a path) to folder/dst
    (default ``out_LOWERING.onnx``); ``options`` go to :func:`kse_onnx.api.optimize`."""
    lower = lowering if isinstance(lowering, LowerOptions) else LowerOptions(lowering)
    source = saved(folder, model, src)
    out = folder / (dst or f"out_{lower.lowering}.onnx")
    report = optimize(source, out, kse or KSEOptions(), lower_options=lower, **options)
    return Optimized(source, out, report)


def optimize_cli(folder: Path, model: onnx.ModelProto, *args: str, src: str = "in.onnx",
                 dst: str = "out.onnx") -> tuple[Path, Path]:
    """``kse-onnx optimize SRC DST --lowering dense ARGS``, which must exit 0."""
    source, out = saved(folder, model, src), folder / dst
    assert main(["optimize", str(source), str(out), "--lowering", "dense", *args]) == 0
    return source, out


def training(data, student, options=None):
    """Fine-tuning's training data from file ``data``, read as ``finetune --data`` reads
    it (checked against the input of the ``student`` model file)."""
    from kse_onnx.calibration import training_data
    from kse_onnx.options import DataOptions

    return training_data(data, options or DataOptions(), onnx.load(str(student)))
