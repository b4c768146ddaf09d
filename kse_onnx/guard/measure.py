"""The drop of a compressed model against its original, in points.

- logits (first output of shape (n, K), K > 1) without labels: ``100 (1 - a)``, ``a``
  the top-1 agreement of the two models;
- with labels: ``100 (acc_original - acc_model)`` (top-1 accuracy);
- any other outputs: ``100 ||y - y0|| / ||y0||``, the relative L2 error over every
  output (float64), so D = 1 allows 1 % relative error.

Both models run in onnxruntime on the same inputs, ``CHUNK`` images at a time. A
non-finite output is an infinite drop, never a pass.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import onnx

from ..errors import ModelError
from ..graph.inputs import fixed_batch
from ..runtime.ort import random_inputs, run_batched, session

CHUNK = 256


@dataclass
class Drop:
    """A measured drop: ``points`` against the limit, and how it was measured."""

    points: float
    measure: str  # "top-1 agreement", "accuracy" or "relative error"
    images: int
    source: str  # "held-out calibration images", "validation data", "random inputs"
    rel_error: float
    agreement: float | None = None
    accuracy_original: float | None = None
    accuracy: float | None = None

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in asdict(self).items()}

    def line(self) -> str:
        if not math.isfinite(self.points):
            return f"non-finite outputs on {self.images} {self.source}"
        if self.measure == "top-1 agreement":
            detail = f"top-1 agreement {self.agreement:.4f}"
        elif self.measure == "accuracy":
            detail = f"accuracy {self.accuracy_original:.4f} -> {self.accuracy:.4f}"
        else:
            detail = f"relative error {self.rel_error:.4f}"
        return (f"drop {self.points:.2f} points ({detail}; relative output error "
                f"{self.rel_error:.4f}) on {self.images} {self.source}")


def input_name(model: onnx.ModelProto) -> str:
    """The model's one graph input; a ModelError when it has several."""
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    if len(names) != 1:
        raise ModelError(f"the accuracy guard needs a model with one input; this one has "
                         f"{len(names)}")
    return names[0]


def outputs(model: onnx.ModelProto, x: np.ndarray, label: str = "the model") -> list:
    """All outputs of ``model`` on images ``x``, ``CHUNK`` at a time; a model whose input
    fixes its batch runs on the images that fill whole batches of it."""
    sess = session(model)
    name = input_name(model)
    batch = fixed_batch(model) or 1
    step = max(batch, CHUNK - CHUNK % batch)
    x = x[:len(x) - len(x) % batch] if len(x) >= batch else x
    parts = [run_batched(sess, {name: x[i:i + step]}, label) for i in range(0, len(x), step)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


def drop(reference: list, candidate: list, labels: np.ndarray | None = None,
         source: str = "held-out calibration images") -> Drop:
    """The drop of ``candidate`` outputs against the original's ``reference`` outputs."""
    n = len(reference[0])
    finite = all(np.all(np.isfinite(c)) for c in candidate) and len(candidate) == len(
        reference) and all(c.shape == r.shape for c, r in zip(candidate, reference,
                                                               strict=False))
    if not finite:
        return Drop(math.inf, "relative error", n, source, math.inf)
    num = sum(float(np.sum((np.asarray(c, np.float64) - r) ** 2))
              for c, r in zip(candidate, reference, strict=True))
    den = sum(float(np.sum(np.asarray(r, np.float64) ** 2)) for r in reference)
    rel = math.sqrt(num) / max(math.sqrt(den), 1e-30)
    first, ref = candidate[0], reference[0]
    if ref.ndim != 2 or ref.shape[1] < 2:
        return Drop(100 * rel, "relative error", n, source, rel)
    agreement = float(np.mean(first.argmax(1) == ref.argmax(1)))
    if labels is None:
        return Drop(100 * (1 - agreement), "top-1 agreement", n, source, rel, agreement)
    labels = labels[:n]  # a fixed batch may have left the last images out
    before = float(np.mean(ref.argmax(1) == labels))
    after = float(np.mean(first.argmax(1) == labels))
    return Drop(100 * (before - after), "accuracy", n, source, rel, agreement, before, after)


def measure(original: onnx.ModelProto, candidate: onnx.ModelProto, x: np.ndarray,
            labels: np.ndarray | None = None, source: str = "held-out calibration images",
            reference: list | None = None) -> Drop:
    """Run both models on ``x`` (``reference``: the original's outputs, when known)."""
    reference = reference if reference is not None else outputs(original, x, "the original")
    return drop(reference, outputs(candidate, x, "the compressed model"), labels, source)


def random_drop(original: onnx.ModelProto, candidate: onnx.ModelProto,
                shape: tuple[int, ...] | None = None, batch: int = 32, seed: int = 0) -> Drop:
    """The drop on standard-normal inputs (symbolic sizes from ``shape``, C,H,W)."""
    sess = session(candidate)
    feeds = random_inputs(sess, batch, seed)
    if shape is not None and len(feeds) == 1:
        name, value = next(iter(feeds.items()))
        if value.ndim == len(shape) + 1:
            feeds = {name: np.random.default_rng(seed).standard_normal(
                (batch, *shape)).astype(value.dtype)}
    got = run_batched(sess, feeds, "the compressed model")
    ref = run_batched(session(original), feeds, "the original")
    return drop(ref, got, None, "random inputs")
