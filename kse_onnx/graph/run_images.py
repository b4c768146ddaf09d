"""A model run over a set of images in onnxruntime, a chunk of whole batches at a time:
the one loop behind the accuracy guard's outputs and drops (:mod:`kse_onnx.guard.measure`)
and the budget's sensitivity probes (:mod:`kse_onnx.budget.importance`).

The batch rules are :mod:`.inputs`'s. A graph whose input fixes its batch ``b``
(:func:`.inputs.fixed_batch`) is defined on ``b`` images a run: it runs on the images
that fill whole batches of it (:func:`.inputs.whole_batches`; the rest are left out),
``step`` images a run, a multiple of ``b``: at most ``chunk`` images and ``chunk_bytes``
bytes of them (:func:`batch_and_step`). Why the byte cap: onnxruntime holds a run's
activations, and 256 images of 3x640x640 make a 6.7 GB first activation of a
16-channel detector (a refit of 512 such images was killed at 24 GB by the measurement
alone). A graph without a batch axis (:func:`.inputs.unbatched`, torchvision's
detectors) runs on each image alone (:func:`image_runner`), and its outputs stay one
list per image: their shapes may differ from image to image (boxes kept by an NMS).

:func:`chunk_outputs` gives the outputs a run at a time, for a caller that keeps only
sums of them (the guard's drop of two models: never the whole set's outputs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import onnx

from ..errors import ModelError
from ..runtime.ort import run_batched, session
from .inputs import fixed_batch, unbatched, whole_batches

CHUNK = 256  # images per onnxruntime run, at most
CHUNK_BYTES = 16 * 2**20  # of input images per onnxruntime run, at most


def images_per_run(batch: int, x, chunk: int = CHUNK,
                   chunk_bytes: int | None = CHUNK_BYTES) -> int:
    """Images of ``x`` per run of a graph fixed at ``batch`` (1: none): at most ``chunk``
    images and (unless None) ``chunk_bytes`` of them, a multiple of ``batch``, and at
    least one batch."""
    images = chunk
    if chunk_bytes is not None:
        images = max(1, min(chunk, chunk_bytes // max(1, x[:1].nbytes)))
    return max(batch, images - images % batch)


def enough_images(x, batch: int, label: str) -> None:
    """A one-line error when a graph fixed at ``batch`` images a run gets fewer images
    than one batch (onnxruntime's own message names only "invalid dimensions")."""
    if batch > 1 and len(x) < batch:
        raise ModelError(f"{label}: {len(x)} image(s), fewer than the batch of {batch} "
                         "images the model's input fixes (every run takes exactly that many)")


def batch_and_step(model: onnx.ModelProto, x, chunk: int = CHUNK,
                   chunk_bytes: int | None = CHUNK_BYTES) -> tuple[int, int]:
    """(the batch ``model``'s input fixes, or 1; images per run, :func:`images_per_run`)."""
    batch = fixed_batch(model) or 1
    return batch, images_per_run(batch, x, chunk, chunk_bytes)


def chunk_outputs(model: onnx.ModelProto | bytes, x, step: int, *, threads: int = 1,
                  label: str = "the model") -> Iterator[list[np.ndarray]]:
    """The outputs of ``model`` on ``x[i:i + step]`` for ``i = 0, step, 2 step, ...``, one
    run (of whole batches, :func:`.runtime.ort.run_batched`) at a time; the session is
    made on the first. ``x``: images already cut to whole batches."""
    sess = session(model, threads=threads)
    name = sess.get_inputs()[0].name
    for i in range(0, len(x), step):
        yield run_batched(sess, {name: x[i:i + step]}, label)


def image_runner(model: onnx.ModelProto | bytes, *, threads: int = 1,
                 label: str = "the model") -> Callable[[np.ndarray], list[np.ndarray]]:
    """A function of one image (C, H, W) giving the outputs of ``model``, a graph without
    a batch axis, on it; one session for every call."""
    sess = session(model, threads=threads)
    name = sess.get_inputs()[0].name

    def run(image: np.ndarray) -> list[np.ndarray]:
        return run_batched(sess, {name: image}, label)
    return run


def run_images(model: onnx.ModelProto | bytes, x, *, batch: int | None = None,
               threads: int = 1, label: str = "the model", chunk: int = CHUNK,
               chunk_bytes: int | None = CHUNK_BYTES) -> list:
    """Every output of ``model`` on the images ``x`` (n, C, H, W), one array per output
    joined along the images (those that fill whole batches of the model's fixed batch),
    ``chunk`` images and ``chunk_bytes`` a run (:func:`batch_and_step`), ``threads``
    onnxruntime threads; ``label`` names the model in onnxruntime's errors. A graph
    without a batch axis gives one list of outputs per image instead.

    ``batch``: the model's fixed batch (1: none) when the caller knows it already: a
    serialized ``model`` is then not parsed again, and it is run as a batched graph.
    """
    if batch is None:
        proto = model if isinstance(model, onnx.ModelProto) else onnx.load_from_string(model)
        if unbatched(proto):
            run = image_runner(model, threads=threads, label=label)
            return [run(image) for image in x]
        batch, step = batch_and_step(proto, x, chunk, chunk_bytes)
    else:
        step = images_per_run(batch, x, chunk, chunk_bytes)
    enough_images(x, batch, label)
    parts = list(chunk_outputs(model, whole_batches(x, batch), step, threads=threads,
                               label=label))
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]
