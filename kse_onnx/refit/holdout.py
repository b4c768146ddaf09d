"""The held-out split of the calibration images (docs/refit.md, "Held-out judgement").

Every fitted step of the refit (a layer's least squares, each after-ReLU round, a block,
the classifier, the distillation) is kept only where it lowers the error on images it
was not fitted on. A fit judged on its own images can only look better: the classifier
refit of a real MobileNetV2 (1,281 unknowns per logit from 1,024 images) drove its fit
error to 0 while top-1 agreement with the original on other images fell from 0.73 to 0.56.
"""

from __future__ import annotations

import numpy as np


def holdout_split(n: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fitted, held-out) indices of ``n`` images, each in increasing order: a share
    ``share`` of them (at least one when ``share`` > 0 and ``n`` > 1, never all) drawn
    by ``seed``."""
    held = 0 if n < 2 or share <= 0 else min(n - 1, max(1, int(round(n * share))))
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[held:]), np.sort(order[:held])


def fitted_first(x: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, int]:
    """``x`` reordered as its fitted images then its held-out ones, and how many are held
    out (the last ones): the refit's walk runs over both, fits on the first part."""
    fitted, held = holdout_split(len(x), share, seed)
    if not len(held):
        return x, 0
    return np.concatenate([x[fitted], x[held]]), len(held)
