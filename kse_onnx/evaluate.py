"""``kse-onnx eval``: top-1 / top-5 accuracy with onnxruntime, and agreement with a
second model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from .data import ModelInput, check_labels, load_data
from .errors import ModelError
from .graph.inputs import fixed_batch
from .graph.io import load_model
from .graph.run_images import run_images
from .options import DataOptions


@dataclass
class Evaluation:
    images: int
    top1: float | None
    top5: float | None
    agreement: float | None

    def summary(self) -> str:
        parts = [f"{self.images} images"]
        if self.top1 is not None:
            parts.append(f"top-1 {self.top1:.4f}, top-5 {self.top5:.4f}")
        if self.agreement is not None:
            parts.append(f"top-1 agreement with the other model {self.agreement:.4f}")
        return ", ".join(parts)


def logits(model_path, x: np.ndarray, batch: int = 256, threads: int = 0,
           model: onnx.ModelProto | None = None) -> np.ndarray:
    """Outputs of the model at ``model_path`` (``model``: it, loaded already) on ``x``,
    ``batch`` images a run at most (:func:`kse_onnx.graph.run_images.run_images`), whole
    batches of the one the model's input fixes: every image is scored, so their count
    must then be a multiple of it (a one-line error otherwise)."""
    model = model if model is not None else load_model(model_path)
    fixed = fixed_batch(model)
    if fixed and len(x) % fixed:
        raise ModelError(f"{model_path}: {len(x)} images, not a multiple of the batch of "
                         f"{fixed} images its input fixes (every image is scored)")
    return run_images(model, x, batch=fixed or 1, threads=threads, label=str(model_path),
                      chunk=batch)[0]


def evaluate_data(model_path, data_path, options: DataOptions, other=None) -> Evaluation:
    """:func:`evaluate` on the data at ``data_path`` (read by :func:`kse_onnx.data.load_data`,
    checked against both models' inputs before either runs)."""
    model = load_model(model_path)
    x, y = load_data(data_path, options, ModelInput.of(model))
    if other is not None:
        expect = ModelInput.of(load_model(other))
        if expect is not None:
            expect.check(x, data_path)
    return evaluate(model_path, x, y, other, model=model)


def evaluate(model_path, x: np.ndarray, y: np.ndarray | None, other=None,
             model: onnx.ModelProto | None = None) -> Evaluation:
    out = logits(model_path, x, model=model)
    top1 = top5 = agreement = None
    if y is not None:
        if out.ndim != 2:
            raise ModelError(f"{model_path}: output of shape {list(out.shape)} is not "
                             "(n, classes): accuracy needs class scores")
        y = check_labels(y, len(x), "labels", classes=out.shape[1])
        top1 = float((out.argmax(1) == y).mean())
        k = min(5, out.shape[1])
        top5 = float((np.argsort(-out, axis=1)[:, :k] == y[:, None]).any(1).mean())
    if other is not None:
        agreement = float((logits(other, x).argmax(1) == out.argmax(1)).mean())
    return Evaluation(len(x), top1, top5, agreement)
