"""What each span's ids are worth to the allocation (``--budget-importance``), kept apart
from the dependency walk (:mod:`.spans`) and the pruner (:mod:`.build`), as
Torch-Pruning keeps its importance apart from DepGraph.

- ``indicator`` (the default): the KSE indicator mass of each id, as :mod:`.spans` ranks
  them (a layer's ``v_c``; a residual class's ``m_k = sum_r sum_{c in k} v_rc``).
- ``sensitivity``: the same order inside each span, rescaled by what one step of the
  span costs on the calibration images. For span ``s`` the model with only ``s`` cut by
  one step (its ``step`` least important ids, exactly as the budget writes it) runs
  once on the first ``SENSITIVITY_IMAGES`` images, and

      e_s = sum (y_s - y)^2 / sum y^2        (y: the original's outputs)

  is its relative output error. Id ``i`` of span ``s`` then weighs
  ``e_s * w_i / sum_{j in first step} w_j`` with ``w_i = v_i + delta_s``
  (``delta_s = 1e-3 * mean v`` so that a span whose first step the indicator calls free
  still scales), so the first step weighs exactly ``e_s``, deeper steps in the
  indicator's proportions: the allocation's "latency saved per mass lost" becomes
  "per output error". One forward pass per span; the indicator never sees the data, and
  the residual stream, read by every block of a stage, is where it misjudges most.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx

from ..errors import OptionError
from ..graph.inputs import fixed_batch, unbatched, whole_batches
from ..graph.run_images import run_images
from ..progress import bar
from .spans import Cuts

SENSITIVITY_IMAGES = 256  # calibration images per forward pass
CHUNK = 64  # images per onnxruntime run
DELTA = 1e-3  # of a span's mean indicator, added to every id before rescaling
MAX_ERROR = 1e6  # a probe's error is capped here (inf or NaN outputs)


def model_outputs(model: bytes | onnx.ModelProto, x: np.ndarray, batch: int) -> np.ndarray:
    """Every output of ``model`` (its fixed batch ``batch``, or 1) on ``x``, flattened per
    image and joined (float64), one onnxruntime thread, ``CHUNK`` images (whole batches
    of ``batch``) at a time (:func:`kse_onnx.graph.run_images.run_images`)."""
    out = run_images(model, x, batch=batch, threads=1, label="a sensitivity probe",
                     chunk=CHUNK, chunk_bytes=None)
    return np.concatenate([o.reshape(len(o), -1) for o in out], axis=1).astype(np.float64)


def relative_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """``sum (candidate - reference)^2 / sum reference^2``; inf when not finite."""
    num = float(np.sum((candidate - reference) ** 2))
    den = float(np.sum(reference ** 2))
    value = num / den if den > 0 else num
    return value if np.isfinite(value) else float("inf")


def sensitivities(cuts: Cuts, model: onnx.ModelProto, images: np.ndarray, step: int,
                  build, quiet: bool = False) -> dict[str, float]:
    """Span name -> relative output error with only that span cut by one aligned step
    (0 for a span too small to cut); ``build(counts)`` is the float model for span
    counts ``counts`` (serialized). A model whose input has no batch axis is refused in
    one line: its outputs (after an NMS) may differ in length from image to image, so a
    probe's outputs cannot be set against the original's value by value."""
    if unbatched(model):
        raise OptionError("--budget-importance", "sensitivity needs a model whose input has "
                          "a batch axis (this one takes one image (C, H, W) per run, and "
                          "its outputs may differ in length from image to image); use "
                          "indicator")
    batch = fixed_batch(model) or 1
    x = whole_batches(np.asarray(images[:SENSITIVITY_IMAGES], dtype=np.float32), batch)
    reference = model_outputs(model, x, batch)
    whole = {s.name: s.size for s in cuts.spans}
    out = {}
    progress = bar(len(cuts.spans), "budget sensitivity", unit="span", quiet=quiet,
                   lines=True)
    for span in cuts.spans:
        cut = step * ((span.size - 1) // step)  # one aligned step down, as allocate cuts
        if cut <= 0:  # a span of one step or less is never cut
            out[span.name] = 0.0
        else:
            built = build({**whole, span.name: cut})
            out[span.name] = relative_error(reference, model_outputs(built, x, batch))
        progress.update()
    progress.close()
    return out


def rescaled(cuts: Cuts, errors: dict[str, float], step: int) -> Cuts:
    """``cuts`` with each span's mass rescaled so its first step weighs its measured
    error (module docstring); the order of the ids is unchanged."""
    spans = []
    for span in cuts.spans:
        v = np.asarray(span.mass, dtype=np.float64)
        w = v + DELTA * (float(v.mean()) if v.size and v.mean() > 0 else 1.0)
        first = float(w[:min(step, span.size)].sum())
        error = min(errors[span.name], MAX_ERROR)  # a non-finite probe: the costliest
        spans.append(dataclasses.replace(span, mass=w * (error / first)))
    return dataclasses.replace(cuts, spans=spans)
