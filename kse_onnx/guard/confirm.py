"""The winner's curse of a search: the chosen model's drop measured again on images that
neither the refit nor the choice saw.

A search measures every candidate on the same *selection* images and keeps the best
within D. Choosing among n candidates on m images favours one whose errors happened to
miss those images: its selection drop is biased low (on the Fashion-MNIST ResNet-20, 0.39
points reported on 256 images against 1.51 on the 10,000 test images). The held-out
images are therefore cut in two: the first part selects, the last (``--confirm`` of
them) confirms. The chosen model's drop on the confirmation images has no selection
in it: it is the drop reported and held to D.

Statistics. Without labels the drop is ``100 p``, ``p`` the rate at which the two models'
top-1 answers differ; measured on ``n`` images it is a binomial mean with standard error
``100 sqrt(p (1 - p) / n)``: at p = 1.5 % that is 0.76 point on 256 images, 0.54 on 512,
0.38 on 1,024, and one image is ``100 / n`` points. An accuracy drop on a labeled test set is
at most the disagreement rate (``|a0 - a1| <= P(answers differ)``), so the agreement drop is
also an upper bound, in expectation, of the accuracy the model loses.

When the confirmation fails D, the next candidate by the search's order that held on
the selection images is rebuilt and confirmed, at most ``LOOKS`` candidates in all; each
look is a choice made on the confirmation images, so the number of looks is reported,
and past ``LOOKS`` one error line names the best confirmed drop and nothing is written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ModelError, OptionError
from .measure import Drop, drop, outputs

MIN_PART = 16  # images in the selection part and in the confirmation part, at least
LOOKS = 3  # candidates confirmed at most


@dataclass
class Parts:
    """The measured images cut in two: the first select, the last confirm."""

    select_x: np.ndarray
    select_y: np.ndarray | None
    confirm_x: np.ndarray
    confirm_y: np.ndarray | None
    source: str

    def confirm_source(self) -> str:
        return f"{self.source} kept back to confirm the choice"


def cut(x: np.ndarray, y: np.ndarray | None, share: float, source: str) -> Parts:
    """The last ``ceil(share n)`` of the ``n`` measured images confirm, the rest select;
    an OptionError when either part has fewer than ``MIN_PART`` images."""
    n = len(x)
    confirming = int(math.ceil(n * share))
    if confirming < MIN_PART or n - confirming < MIN_PART:
        raise OptionError("--confirm", f"{n} {source} leave {n - confirming} to select and "
                          f"{confirming} to confirm; at least {MIN_PART} each are needed "
                          "(more --calibration-images, a larger --holdout, or --validation)")
    return Parts(x[:-confirming], None if y is None else y[:-confirming], x[-confirming:],
                 None if y is None else y[-confirming:], source)


def confirmed(original, candidates: list, build, parts: Parts, max_drop: float, say, what: str):
    """(built, the candidate, its confirmation Drop, looks) of the first of ``candidates``
    (each held D on the selection images, best first) whose drop on the confirmation
    images is at most ``max_drop``; ``build(candidate)`` gives its built model. A
    ModelError naming the best confirmed drop when none of the first ``LOOKS`` does."""
    reference = outputs(original, parts.confirm_x, "the original")
    looked = []
    for candidate in candidates[:LOOKS]:
        built = build(candidate)
        measured = drop(reference, outputs(built.model, parts.confirm_x, "a candidate"),
                        parts.confirm_y, parts.confirm_source())
        looked.append((candidate, measured))
        say(f"max-drop confirmation: {what(candidate)}: {measured.line()}")
        if measured.points <= max_drop:
            return built, candidate, measured, len(looked)
    if not looked:
        raise ModelError(f"--max-drop {max_drop:g}: no candidate held the drop on the "
                         f"{len(parts.select_x)} {parts.source} used to choose; nothing written")
    candidate, measured = min(looked, key=lambda c: _points(c[1]))
    raise ModelError(f"--max-drop {max_drop:g}: the {len(looked)} best candidate(s) held the "
                     f"drop on the {len(parts.select_x)} images used to choose, but not on "
                     f"the {len(parts.confirm_x)} kept back to confirm (best: {what(candidate)}"
                     f", {_shown(measured)}); raise --max-drop or give more --calibration "
                     "images; nothing written")


def _points(measured: Drop) -> float:
    return measured.points if math.isfinite(measured.points) else math.inf


def _shown(measured: Drop) -> str:
    return (f"a drop of {measured.points:.2f} points" if math.isfinite(measured.points)
            else "non-finite outputs")


__all__ = ["LOOKS", "MIN_PART", "Parts", "confirmed", "cut"]
