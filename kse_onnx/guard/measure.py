"""The drop of a compressed model against its original, in points.

- logits (first output of shape (n, K), K > 1) without labels: ``100 (1 - a)``, ``a``
  the top-1 agreement of the two models;
- with labels: ``100 (acc_original - acc_model)`` (top-1 accuracy);
- any other outputs: ``100 max(e, e_slice)``, ``e = ||y - y0|| / ||y0||`` the relative
  L2 error over every output (float64), so D = 1 allows 1 % relative error, and
  ``e_slice`` the per-slice error: for each output, along axis 1 and along its last
  axis, the mean over slices c of ``||y_c - y0_c|| / ||y0_c||`` (the largest of these).
  Why: an output that joins tensors of very different ranges (YOLOv8's head: box
  coordinates in pixels and class scores in [0, 1] in one Concat) has ``e`` made of the
  pixels; scores flattened to zero move ``e`` by 3 % and ``e_slice`` to 50 % (4 of 8
  channels wrong; docs/results.md). A slice whose reference norm is below 1e-6 of the
  slices' RMS norm is measured against that floor, so an all-zero channel is not a
  division by zero.

Both models run in onnxruntime on the same inputs, a chunk of whole batches at a time
(:mod:`kse_onnx.graph.run_images`: ``CHUNK`` images and ``CHUNK_BYTES`` a run). A
non-finite output is an infinite drop, never a pass.

A model whose input takes one image without a batch axis (a torchvision detector, whose
outputs after non-maximum suppression differ in length from image to image) runs one
image at a time and is compared image by image (:class:`PerImage`), by the relative
error of the float tensors just before its data-dependent post-processing
(:mod:`.frontier`: the class scores and decoded boxes before NMS), or of its outputs
when it has none. Where the two models' tensors have the same shapes,
``||y - y0||^2`` is added; where a shape differs (another number of boxes kept), every
value of both counts as error, ``||y0||^2 + ||y||^2``: that image's relative error is
at least 1, and the report counts such images (``mismatched``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import onnx

from ..errors import ModelError
from ..graph.inputs import unbatched, whole_batches
from ..graph.run_images import (
    batch_and_step,
    chunk_outputs,
    enough_images,
    image_runner,
    run_images,
)
from ..runtime.ort import random_inputs, run_batched, session
from .frontier import compared_model

UNBATCHED_RANDOM = 4  # random images for a model without a batch axis (random_drop)
BEFORE = "tensors before its data-dependent post-processing (NMS)"


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
    slice_error: float | None = None  # the per-slice error (module docstring)
    mismatched: int | None = None  # images whose outputs differ in shape (PerImage only)
    compared: str | None = None  # PerImage: "outputs" or "tensors before post-processing"

    @property
    def error(self) -> float:
        """The output error judged against ``--warn-error``: the relative error, or for
        outputs that are not logits the larger of it and the per-slice error."""
        if self.slice_error is None or self.measure != "relative error":
            return self.rel_error
        if not (math.isfinite(self.rel_error) and math.isfinite(self.slice_error)):
            return math.inf
        return max(self.rel_error, self.slice_error)

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in asdict(self).items()
                if k not in ("mismatched", "compared") or v is not None}

    def line(self) -> str:
        if not math.isfinite(self.points):
            return f"non-finite outputs on {self.images} {self.source}"
        if self.measure == "top-1 agreement":
            detail = f"top-1 agreement {self.agreement:.4f}"
        elif self.measure == "accuracy":
            detail = f"accuracy {self.accuracy_original:.4f} -> {self.accuracy:.4f}"
        else:
            detail = f"relative error {self.rel_error:.4f}"
            if self.slice_error is not None:
                detail += f", per-slice {self.slice_error:.4f}"
        if self.compared == BEFORE:
            detail += f" of the {BEFORE}"
        if self.mismatched:
            detail += f"; another shape on {self.mismatched} of {self.images} images"
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


class PerImage(list):
    """What a model without a batch axis gives, one list per image (:func:`per_image`);
    ``compared``: what the lists hold, "outputs" or :data:`BEFORE`."""

    compared = "outputs"


def per_image(model: onnx.ModelProto, label: str):
    """A function of one image (C, H, W) giving what the drop compares of ``model``, an
    unbatched model: the float tensors before its data-dependent post-processing
    (:func:`.frontier.compared_model`), else its outputs; and which of the two."""
    compared, before = compared_model(model)
    input_name(model)  # one input, else the guard's error
    outputs_of = image_runner(compared, label=label)

    def run(image: np.ndarray) -> list:
        got = outputs_of(image)
        return [a for a in got if a.dtype.kind == "f"] if before else got
    return run, BEFORE if before else "outputs"


def _per_image_outputs(model, images, label: str) -> PerImage:
    run, compared = per_image(model, label)
    out = PerImage(run(image) for image in images)
    out.compared = compared
    return out


def outputs(model: onnx.ModelProto, x: np.ndarray, label: str = "the model") -> list:
    """All outputs of ``model`` on images ``x``, a chunk at a time
    (:func:`kse_onnx.graph.run_images.run_images`); a model whose input fixes its batch
    runs on the images that fill whole batches of it, one without a batch axis on each
    image (:class:`PerImage`)."""
    if unbatched(model):
        return _per_image_outputs(model, x, label)
    input_name(model)  # one input, else the guard's error
    return run_images(model, x, label=label)


class DropSums:
    """The sums a drop is made of, added a chunk of images at a time (float64), so that
    no whole-set output is held: squared error and squared reference over every output,
    top-1 matches, and with labels the hits of each model. Non-finite or mismatched
    candidate outputs make the drop infinite."""

    def __init__(self):
        self.num = self.den = 0.0
        self.n = self.agree = self.hits_ref = self.hits = 0
        self.finite, self.logits = True, None
        self.slices: dict[tuple[int, int], list] = {}  # (output, axis) -> [num_c, den_c]
        self.mismatched: int | None = None

    def add_image(self, reference: list, candidate: list) -> None:
        """One image's outputs of two models without a batch axis (module docstring:
        an output of another shape counts whole, as error)."""
        self.n += 1
        self.logits = False
        self.mismatched = self.mismatched or 0
        if not all(np.all(np.isfinite(c)) for c in candidate):
            self.finite = False
            return
        differ = len(candidate) != len(reference)
        none = np.zeros(0)  # a tensor one side lacks: all of the other's values count
        for i in range(max(len(candidate), len(reference))):
            r64 = np.asarray(reference[i] if i < len(reference) else none, np.float64)
            c64 = np.asarray(candidate[i] if i < len(candidate) else none, np.float64)
            if c64.shape == r64.shape:
                self.num += float(np.sum(np.square(c64 - r64)))
            else:
                differ = True
                self.num += float(np.sum(np.square(r64)) + np.sum(np.square(c64)))
            self.den += float(np.sum(np.square(r64)))
        self.mismatched += differ

    def add(self, reference: list, candidate: list, labels: np.ndarray | None = None) -> None:
        ok = len(candidate) == len(reference) and all(
            c.shape == r.shape for c, r in zip(candidate, reference, strict=False)) and all(
            np.all(np.isfinite(c)) for c in candidate)
        self.n += len(reference[0])
        if not ok:
            self.finite = False
            return
        for k, (c, r) in enumerate(zip(candidate, reference, strict=True)):
            r64 = np.asarray(r, np.float64)
            err, ref = np.square(np.asarray(c, np.float64) - r64), np.square(r64)
            self.num += float(np.sum(err))
            self.den += float(np.sum(ref))
            for axis in sorted({1, r64.ndim - 1}) if r64.ndim >= 2 else ():
                others = tuple(a for a in range(r64.ndim) if a != axis)
                sums = self.slices.setdefault((k, axis), [0.0, 0.0])
                sums[0] = sums[0] + err.sum(axis=others)
                sums[1] = sums[1] + ref.sum(axis=others)
        first, ref = candidate[0], reference[0]
        self.logits = ref.ndim == 2 and ref.shape[1] >= 2
        if self.logits:
            self.agree += int(np.sum(first.argmax(1) == ref.argmax(1)))
            if labels is not None:
                labels = labels[:len(ref)]
                self.hits_ref += int(np.sum(ref.argmax(1) == labels))
                self.hits += int(np.sum(first.argmax(1) == labels))

    def slice_error(self) -> float:
        """The largest, over outputs and axes, mean per-slice relative L2 error."""
        worst = 0.0
        for num, den in self.slices.values():
            norms = np.sqrt(den)
            floor = max(1e-6 * float(np.sqrt(np.mean(den))), 1e-30)
            worst = max(worst, float(np.mean(np.sqrt(num) / np.maximum(norms, floor))))
        return worst

    def result(self, labels: bool, source: str, compared: str | None = None) -> Drop:
        n = self.n
        if not self.finite:
            return Drop(math.inf, "relative error", n, source, math.inf,
                        mismatched=self.mismatched, compared=compared)
        rel = math.sqrt(self.num) / max(math.sqrt(self.den), 1e-30)
        if not self.logits:
            per = self.slice_error() if self.slices else None
            points = rel if per is None else max(rel, per)
            return Drop(100 * points, "relative error", n, source, rel, slice_error=per,
                        mismatched=self.mismatched, compared=compared)
        agreement = self.agree / max(n, 1)
        if not labels:
            return Drop(100 * (1 - agreement), "top-1 agreement", n, source, rel, agreement)
        before, after = self.hits_ref / max(n, 1), self.hits / max(n, 1)
        return Drop(100 * (before - after), "accuracy", n, source, rel, agreement, before, after)


def drop(reference: list, candidate: list, labels: np.ndarray | None = None,
         source: str = "held-out calibration images") -> Drop:
    """The drop of ``candidate`` outputs against the original's ``reference`` outputs."""
    sums = DropSums()
    if isinstance(reference, PerImage) or isinstance(candidate, PerImage):
        for r, c in zip(reference, candidate, strict=True):
            sums.add_image(r, c)
        compared = {getattr(v, "compared", "outputs") for v in (reference, candidate)}
        return sums.result(labels is not None, source, " and ".join(sorted(compared)))
    sums.add(reference, candidate, labels)
    return sums.result(labels is not None, source)


def measure(original: onnx.ModelProto, candidate: onnx.ModelProto, x: np.ndarray,
            labels: np.ndarray | None = None, source: str = "held-out calibration images",
            reference: list | None = None) -> Drop:
    """Run both models on ``x`` (``reference``: the original's outputs, when known). Without
    ``reference`` both run a chunk at a time and only the sums are kept: the outputs of a
    dense model over every calibration image (a detector at 640x640: gigabytes) are never
    held whole."""
    if reference is not None:
        return drop(reference, outputs(candidate, x, "the compressed model"), labels, source)
    if unbatched(original) or unbatched(candidate):  # one image a run, compared per image
        (ref, compared), (cand, other) = (per_image(original, "the original"),
                                          per_image(candidate, "the compressed model"))
        sums = DropSums()
        for image in x:
            sums.add_image(ref(image), cand(image))
        return sums.result(labels is not None, source, " and ".join(sorted({compared, other})))
    batch, step = max(batch_and_step(original, x), batch_and_step(candidate, x))
    enough_images(x, batch, f"the {source}")
    x = whole_batches(x, batch)
    input_name(original), input_name(candidate)  # one input each, else the guard's error
    sums = DropSums()
    runs = zip(chunk_outputs(original, x, step, label="the original"),
               chunk_outputs(candidate, x, step, label="the compressed model"), strict=True)
    for i, (ref, cand) in zip(range(0, len(x), step), runs, strict=True):
        sums.add(ref, cand, None if labels is None else labels[i:i + step])
    return sums.result(labels is not None, source)


def random_drop(original: onnx.ModelProto, candidate: onnx.ModelProto,
                shape: tuple[int, ...] | None = None, batch: int = 32, seed: int = 0) -> Drop:
    """The drop on standard-normal inputs (symbolic sizes from ``shape``, C,H,W); a model
    without a batch axis on ``UNBATCHED_RANDOM`` random images, one at a time."""
    sess = session(candidate)
    if unbatched(candidate):
        images = [next(iter(random_inputs(sess, 1, seed + k).values()))
                  for k in range(UNBATCHED_RANDOM)]
        return drop(_per_image_outputs(original, images, "the original"),
                    _per_image_outputs(candidate, images, "the compressed model"),
                    None, "random inputs")
    feeds = random_inputs(sess, batch, seed)
    if shape is not None and len(feeds) == 1:
        name, value = next(iter(feeds.items()))
        if value.ndim == len(shape) + 1:
            feeds = {name: np.random.default_rng(seed).standard_normal(
                (batch, *shape)).astype(value.dtype)}
    got = run_batched(sess, feeds, "the compressed model")
    ref = run_batched(session(original), feeds, "the original")
    return drop(ref, got, None, "random inputs")
