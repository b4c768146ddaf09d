"""How close one model's outputs are to another's: the numbers ``verify`` reports.

Relative error is ``||a - b|| / ||b||`` over each output, in float64 (the largest over
the outputs); top-1 agreement is the share of rows of the first output, when it is 2-D
with more than one column (logits), whose argmax is the same.

Non-finite values: a model whose *reference* is itself non-finite somewhere (NaN or Inf
weights, a Log or Sqrt that random inputs drive out of its domain) is not the rewrite's
fault. When both models have exactly the same non-finite values at the same positions,
the rewrite reproduced them, and the comparison is made over the positions where both
are finite, with a note that says so. Any other non-finite value (in one model only, or
a different one) is a problem, naming the model; so is an output with no finite value
left to compare, since nothing would then have been checked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Comparison:
    label: str
    rel_error: float
    max_abs: float
    top1_agreement: float | None
    problem: str | None = None  # non-finite values or mismatched shapes: a failure
    note: str | None = None  # e.g. non-finite in both models alike: compared where finite
    classes: int | None = None  # columns of the first output when it is logits
    reference: str = "reference"  # what the outputs were compared with
    # the worst channel (axis 1) of an output of rank >= 3: (output, channel, its relative
    # error); a channel the reference leaves at zero is not judged (``worst_channel``)
    worst_channel: tuple[int, int, float] | None = None


def compare(label, outputs, references, reference: str = "reference") -> Comparison:
    """Relative error and top-1 agreement of ``outputs`` (the optimized model's) against
    ``references`` (the model named ``reference``); a Comparison with a ``problem``
    (never a pass) when the output counts or shapes differ or the non-finite values
    differ (module docstring)."""
    rel, max_abs, skipped, total = 0.0, 0.0, 0, 0
    if len(outputs) != len(references):
        return Comparison(label, np.nan, np.nan, None, f"{len(outputs)} outputs where the "
                          f"{reference} has {len(references)}", reference=reference)
    for i, (out, ref) in enumerate(zip(outputs, references, strict=True)):
        a, b = np.asarray(out, np.float64), np.asarray(ref, np.float64)
        if a.shape != b.shape:
            return Comparison(label, np.nan, np.nan, None, f"output {i} has shape "
                              f"{list(a.shape)} where the {reference} has {list(b.shape)}",
                              reference=reference)
        problem = _non_finite_problem(i, a, b, reference)
        if problem:
            return Comparison(label, np.nan, np.nan, None, problem, reference=reference)
        finite = np.isfinite(b)
        skipped, total = skipped + int(b.size - finite.sum()), total + b.size
        diff = a[finite] - b[finite]
        rel = max(rel, float(np.linalg.norm(diff) / max(np.linalg.norm(b[finite]), 1e-30)))
        max_abs = max(max_abs, float(np.abs(diff).max()) if diff.size else 0.0)
    note = None
    if skipped:
        note = (f"the {reference} is non-finite too ({skipped} of {total} values, the same "
                "in both models): compared where both are finite")
    first = np.asarray(references[0])
    classes = first.shape[1] if first.ndim == 2 and first.shape[1] > 1 else None
    return Comparison(label, rel, max_abs, _agreement(outputs[0], references[0]), note=note,
                      classes=classes, reference=reference,
                      worst_channel=worst_channel(outputs, references))


def worst_channel(outputs, references) -> tuple[int, int, float] | None:
    """The channel (axis 1) of an output of rank >= 3 with the largest relative error
    ``||a_c - b_c|| / ||b_c||`` over the values finite in both: (output, channel, error),
    or None. Why per channel: an output that joins values of very different ranges (a
    detector's pixel boxes beside [0, 1] scores in one Concat) hides a flattened channel
    from the whole error. A channel whose reference norm is below ``1e-6`` of the output's
    RMS channel norm is not judged (a dead channel has nothing to lose)."""
    worst = None
    for i, (out, ref) in enumerate(zip(outputs, references, strict=True)):
        a, b = np.asarray(out, np.float64), np.asarray(ref, np.float64)
        if b.ndim < 3 or a.shape != b.shape or b.shape[1] < 2:
            continue
        both = np.isfinite(a) & np.isfinite(b)
        a, b = np.where(both, a, 0.0), np.where(both, b, 0.0)
        others = tuple(k for k in range(b.ndim) if k != 1)
        num = np.sqrt(np.square(a - b).sum(axis=others))
        den = np.sqrt(np.square(b).sum(axis=others))
        floor = 1e-6 * float(np.sqrt(np.mean(np.square(den))))
        judged = den > max(floor, 1e-30)
        if not judged.any():
            continue
        errors = np.where(judged, num / np.where(judged, den, 1.0), -1.0)
        c = int(np.argmax(errors))
        if worst is None or errors[c] > worst[2]:
            worst = (i, c, float(errors[c]))
    return worst


def _non_finite_problem(i: int, a: np.ndarray, b: np.ndarray, reference: str) -> str | None:
    fa, fb = np.isfinite(a), np.isfinite(b)
    if fa.all() and fb.all():
        return None
    if (fa & ~fb).any():
        return f"output {i} of the {reference} has non-finite values where the optimized " \
               "model's are finite"
    if (~fa & fb).any():
        return f"output {i} of the optimized model has non-finite values where the " \
               f"{reference}'s are finite"
    same = (np.isnan(a) == np.isnan(b)) & ((a == b) | np.isnan(a))
    if not same[~fa].all():
        return f"output {i}: the optimized model and the {reference} have different " \
               "non-finite values (NaN against Inf, or Inf of the other sign)"
    if not fa.any():
        return (f"output {i} is non-finite everywhere, in the {reference} as in the optimized "
                "model: nothing to compare (the original is non-finite on these inputs)")
    return None


def _agreement(out, ref) -> float | None:
    """Top-1 agreement over the rows finite in both, or None (not logits, no such row)."""
    out, ref = np.asarray(out), np.asarray(ref)
    if ref.ndim != 2 or ref.shape[1] <= 1:
        return None
    rows = np.isfinite(out).all(1) & np.isfinite(ref).all(1)
    if not rows.any():
        return None
    return float(np.mean(out[rows].argmax(1) == ref[rows].argmax(1)))
