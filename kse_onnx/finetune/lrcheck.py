"""The one-batch learning-rate check (``--lr-check K``): does the peak rate keep a good
start?

Adam's first steps move every weight by about the rate whatever its gradient, so a rate
that recovers a badly compressed model (far from its teacher) throws a nearly recovered
one away: the loss rises many times over before it comes back. Before training, from the
input's weights, ``K`` steps at the peak rate (a fresh optimizer of the run's kind) are
taken on the first training batch, un-augmented, and the loss on that batch is compared
with the loss before. If it rose, the rate is divided by ``BACK_OFF`` and tried again,
at most ``TRIES`` times; the weights are put back after every try. The batch is not
drawn from the run's generator, so an accepted rate leaves the run's batches unchanged.
"""

from __future__ import annotations

import numpy as np
import torch

BACK_OFF = 3.0
TRIES = 4


def checked_lr(module, objective, make_optimizer, x: np.ndarray, labels, lr: float,
               steps: int, clip: float, log) -> float:
    """The largest of ``lr, lr / 3, ...`` (``TRIES`` + 1 rates) whose ``steps`` steps on
    ``x`` lower the loss on ``x``; the smallest if none does. ``make_optimizer(lr)``
    builds the run's optimizer over ``module``'s parameters; ``clip``: the run's gradient
    norm clip (0 = off)."""
    if steps <= 0 or not len(x):
        return lr
    state = {k: v.clone() for k, v in module.state_dict().items()}
    xb = torch.from_numpy(np.ascontiguousarray(x))
    targets = objective.targets(np.ascontiguousarray(x))
    y = None if labels is None else torch.from_numpy(labels)

    def loss() -> float:
        with torch.no_grad():
            return float(objective.loss(module, module, xb, targets, y))

    before = loss()
    tried = []
    for _ in range(TRIES + 1):
        optimizer = make_optimizer(lr)
        for _ in range(steps):
            value = objective.loss(module, module, xb, targets, y)
            optimizer.zero_grad()
            value.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
            optimizer.step()
        after = loss()
        module.load_state_dict(state)
        tried.append(f"{lr:g}: {after:.4g}")
        if np.isfinite(after) and after < before:
            break
        lr /= BACK_OFF
    else:
        lr *= BACK_OFF  # the last rate tried
    if len(tried) > 1:
        log(f"lr check: {steps} step(s) on one batch from loss {before:.4g}: "
            f"{', '.join(tried)}; lr {lr:g}")
    return lr
