"""No silent collapse: every compressed model leaves with its measured error.

Without ``--max-drop`` the written model is compared with the original on the
calibration images (which the refit has seen: said so) or, without them, on random
inputs, with a line asking for unlabeled images. A relative output error (for outputs
that are not logits, the larger of the whole and the per-slice one: guard/measure.py)
above ``--warn-error`` is a warning in the report; with ``--strict`` it is an error and nothing
is written. Multiply-adds of a model with symbolic height and width are counted at the
size of the calibration images or ``--input-shape``.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..errors import ModelError
from ..options import GuardOptions, shape_list
from .measure import Drop, measure, random_drop
from .shapes import fill_counts

NO_CALIBRATION = ("pass unlabeled images with --calibration (a few hundred from the "
                  "training set) to refit the compressed layers and to measure the error on "
                  "real data")


def finish_checks(original: onnx.ModelProto, optimized: onnx.ModelProto, report,
                  images: np.ndarray | None, guard: GuardOptions, drop: Drop | None) -> None:
    """Measure (unless the guard did), record ``report.extra["accuracy"]``, warn, and
    raise under ``strict``; then fill counts a known input size makes countable."""
    shape = shape_list(guard.input_shape) or (None if images is None else images.shape[1:])
    if drop is None:
        try:
            drop = (random_drop(original, optimized, shape) if images is None else
                    measure(original, optimized, images, source="calibration images (the "
                            "refit's own)"))
        except ModelError as exc:  # e.g. float64 Convs onnxruntime's CPU build lacks
            _unmeasured(report, guard, str(exc))
            if shape is not None:
                fill_counts(report, original, optimized, tuple(int(d) for d in shape))
            return
    over = not drop.error <= guard.warn_error  # NaN and inf are over
    exceeded = guard.active and not drop.points <= guard.max_drop
    report.extra["accuracy"] = {**drop.to_dict(), "warn_error": guard.warn_error,
                                "max_drop": guard.max_drop or None,
                                "over_threshold": over or exceeded}
    warnings = report.extra.setdefault("warnings", [])
    if over:
        warnings.append(f"the compressed model's outputs differ from the original's by "
                        f"{drop.error:.3g} relative error, above --warn-error "
                        f"{guard.warn_error:g} ({drop.line()})")
    if images is None:
        warnings.append(NO_CALIBRATION)
    if guard.strict and (over or exceeded):
        limit = (f"--warn-error {guard.warn_error:g}" if over
                 else f"--max-drop {guard.max_drop:g}")
        raise ModelError(f"--strict: {drop.line()}, above {limit}; nothing written")
    if shape is not None:
        fill_counts(report, original, optimized, tuple(int(d) for d in shape))


def _unmeasured(report, guard: GuardOptions, reason: str) -> None:
    """The error could not be measured: said in the report, an error under ``strict``."""
    report.extra["accuracy"] = {"points": None, "measured": False, "reason": reason,
                                "warn_error": guard.warn_error, "over_threshold": None}
    report.extra.setdefault("warnings", []).append(
        f"the compressed model's error was not measured: {reason}")
    if guard.strict:
        raise ModelError(f"--strict: the error could not be measured ({reason}); "
                         "nothing written")
