"""One epoch of training, shared by fine-tuning (:mod:`.train`) and its quantization-aware
epochs (:mod:`.qat`), with the pieces it needs: augmentation and the held-out measure that
picks the epoch to keep. The loss is the objective of :mod:`.losses` (``--loss``);
progress shows as a bar on a terminal, one line per epoch in logs (:mod:`.progress`).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .. import progress
from ..errors import ModelError
from ..options import DataOptions, FinetuneOptions
from . import losses


def augment(x: np.ndarray, data: DataOptions, rng: np.random.Generator) -> np.ndarray:
    """Random crop after zero padding and horizontal flip, one draw per sample."""
    if data.pad_crop:
        p = data.pad_crop
        n, _, h, w = x.shape
        padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        dy, dx = rng.integers(0, 2 * p + 1, n), rng.integers(0, 2 * p + 1, n)
        x = np.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    if data.flip:
        flip = rng.random(len(x)) < 0.5
        x = np.where(flip[:, None, None, None], x[:, :, :, ::-1], x)
    return np.ascontiguousarray(x, dtype=np.float32)


def accuracy(module, x, y, batch: int = 512, quiet: bool = True) -> float:
    module.eval()
    bar = progress.bar(len(x), "evaluation", quiet=quiet)
    preds = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out = module(torch.from_numpy(x[i:i + batch]))
            preds.append((out[0] if isinstance(out, tuple) else out).argmax(1).numpy())
            bar.update(len(preds[-1]))
    bar.close()
    module.train()
    return float((np.concatenate(preds) == y).mean())


def _diverged(loss, targets, label: str, epoch: int, step: int) -> str:
    """The error of a non-finite loss, blaming what caused it: the teacher's outputs, the
    student before any update, or the training (the learning rate)."""
    where = f"loss became {loss.item()} at {label} {epoch + 1} step {step + 1}"
    if not all(np.all(np.isfinite(np.asarray(t))) for t in targets):
        cause = "the teacher's outputs on this batch are not finite (check --teacher)"
    elif epoch == 0 and step == 0:
        cause = "the compressed model's outputs are not finite before any update"
    else:
        cause = "training diverged: lower --lr (or --clip-grad)"
    return f"{where}: {cause}"


class Diverged(ModelError):
    """The loss became non-finite; the module holds the good state it was given again."""


class HeldOut:
    """How close the student is to what it should be on the held-out split, as a pair
    compared in order (higher is better): for a classifier, (top-1 accuracy against the
    labels, or top-1 agreement with the teacher without them; minus the loss's matching
    term), so an agreement already at 1 is still told apart by the distillation error;
    otherwise (minus the loss's own normalised error, 0): ``--loss mse``/``features``,
    per-channel squared error over the teacher's variance. On the un-augmented images."""

    def __init__(self, objective: losses.Objective, x: np.ndarray, y, batch: int = 256):
        self.objective, self.x, self.y, self.batch = objective, x, y, batch
        self.classifier = objective.classifier
        self.name = ("accuracy" if y is not None else "agreement") if self.classifier \
            else "error"

    def shown(self, score: tuple[float, float]) -> float:
        """The accuracy or agreement, or the error (positive)."""
        return -score[0] if self.name == "error" else score[0]

    def text(self, score: tuple[float, float]) -> str:
        extra = f" ({self.objective.kind} error {-score[1]:.4g})" if self.classifier else ""
        return f"{self.name} {self.shown(score):.4g}{extra}"

    def score(self, module) -> tuple[float, float]:
        module.eval()
        hits, error = 0.0, 0.0
        with torch.no_grad():
            for i in range(0, len(self.x), self.batch):
                xb = self.x[i:i + self.batch]
                targets = self.objective.targets(xb)
                out, match = self.objective.match(module, module, torch.from_numpy(xb),
                                                  targets)
                error += float(match) * len(xb)
                if self.classifier:
                    want = targets[0].argmax(1) if self.y is None else self.y[i:i + len(xb)]
                    hits += float((out[0].argmax(1).numpy() == want).sum())
        module.train()
        n = len(self.x)
        pair = (hits / n, -error / n) if self.classifier else (-error / n, 0.0)
        return pair if all(np.isfinite(pair)) else (-np.inf, -np.inf)


class EpochRunner:
    """One pass of distillation over the training split (shared by fine-tuning and its
    quantization-aware epochs)."""

    def __init__(self, model, module, optimizer, objective: losses.Objective, x, y, train,
                 opts: FinetuneOptions, data: DataOptions, dist, log):
        self.model, self.module, self.optimizer = model, module, optimizer
        self.objective = objective
        self.x, self.y, self.train = x, y, train
        self.opts, self.data, self.dist, self.log = opts, data, dist, log
        self.steps = max(1, len(train) // opts.batch)

    def epoch(self, epoch: int, lr_at, good_state: dict,
              label: str = "epoch") -> list[float]:
        """Train one epoch; ``lr_at(step)`` gives the learning rate. A non-finite loss
        restores ``good_state`` (the best measured so far) and raises :class:`Diverged`."""
        opts, dist, module = self.opts, self.dist, self.module
        per_rank = opts.batch // dist.world
        epoch_rng = np.random.default_rng([opts.seed, epoch])
        perm = self.train[epoch_rng.permutation(len(self.train))]
        history = []
        bar = progress.bar(self.steps * opts.batch, f"{label} {epoch + 1}",
                           quiet=opts.quiet or not dist.main)
        for step, (batch_idx, xb, targets) in enumerate(self._batches(perm, epoch_rng)):
            mine = slice(dist.rank * per_rank, (dist.rank + 1) * per_rank)
            labels = None if self.y is None else torch.from_numpy(self.y[batch_idx][mine])
            for group in self.optimizer.param_groups:
                group["lr"] = lr_at(step)
            loss = self.objective.loss(self.model, module, torch.from_numpy(xb[mine]),
                                       [t[mine] for t in targets], labels)
            if not torch.isfinite(loss):
                bar.close()
                module.load_state_dict(good_state)
                raise Diverged(_diverged(loss, targets, label, epoch, step))
            self.optimizer.zero_grad()
            loss.backward()
            if opts.clip_grad:
                torch.nn.utils.clip_grad_norm_(module.parameters(), opts.clip_grad)
            self.optimizer.step()
            history.append(loss.item())
            bar.update(len(batch_idx), loss=f"{np.mean(history[-20:]):.4g}")
        bar.close()
        return history

    def _batches(self, perm: np.ndarray, rng: np.random.Generator):
        """``(ids, augmented batch, teacher targets)`` per step, the next one prepared on a
        worker thread while the current step trains: the teacher (onnxruntime, one thread,
        about a sixth of a ResNet-56 step) overlaps the student's step on another core.
        The worker draws from ``rng`` in step order, so the batches are the same bytes."""
        batch = self.opts.batch

        def prepare(step: int):
            ids = perm[step * batch:(step + 1) * batch]
            xb = augment(self.x[ids], self.data, rng)
            return ids, xb, self.objective.targets(xb)

        with ThreadPoolExecutor(max_workers=1) as pool:
            ahead = pool.submit(prepare, 0)
            for step in range(self.steps):
                ready = ahead.result()
                if step + 1 < self.steps:
                    ahead = pool.submit(prepare, step + 1)
                yield ready
