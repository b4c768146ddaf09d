"""The held-out split of the calibration images (docs/refit.md, "Held-out judgement").

Every fitted step of the refit (a layer's least squares, each after-ReLU round, a block,
the classifier, the distillation) is kept only where it lowers the error on images it
was not fitted on. A fit judged on its own images can only look better: the classifier
refit of a real MobileNetV2 (1,281 unknowns per logit from 1,024 images) drove its fit
error to 0 while top-1 agreement with the original on other images fell from 0.73 to 0.56.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np


def holdout_split(n: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fitted, held-out) indices of ``n`` images, each in increasing order: a share
    ``share`` of them (at least one when ``share`` > 0 and ``n`` > 1, never all) drawn
    by ``seed``."""
    held = 0 if n < 2 or share <= 0 else min(n - 1, max(1, int(round(n * share))))
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[held:]), np.sort(order[:held])


@contextmanager
def fitted_first(x: np.ndarray, share: float, seed: int):
    """Within the block, ``(x reordered as its fitted images then its held-out ones, how
    many are held out)``: the refit's walk runs over both and fits on the first part.

    The rows are permuted in place and put back on leaving the block (also on an error),
    so no second copy of the calibration images is made: 512 detector images at 640x640
    are 2.5 GB, and a reordered copy held them twice (three times while it was built).
    Images held on disk (kse_onnx.held_images) are reordered in their file the same way;
    a read-only array is copied instead."""
    fitted, held = holdout_split(len(x), share, seed)
    if not len(held):
        yield x, 0
        return
    order = np.concatenate([fitted, held])
    if isinstance(x, np.ndarray) and not x.flags.writeable:
        yield x[order], len(held)
        return
    permute_rows(x, order)
    try:
        yield x, len(held)
    finally:
        permute_rows(x, np.argsort(order))


def permute_rows(x: np.ndarray, order: np.ndarray) -> None:
    """``x[:] = x[order]`` in place, one row of scratch memory: each cycle of the
    permutation is followed once."""
    done = np.zeros(len(order), bool)
    for start in range(len(order)):
        if done[start] or order[start] == start:
            done[start] = True
            continue
        saved = x[start].copy()
        here = start
        while True:
            done[here] = True
            source = int(order[here])
            if source == start:
                x[here] = saved
                break
            x[here] = x[source]
            here = source
