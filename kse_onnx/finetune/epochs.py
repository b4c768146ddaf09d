"""One epoch of distillation, shared by fine-tuning (:mod:`.train`) and its
quantization-aware epochs (:mod:`.qat`), with the pieces it needs: augmentation, the loss
and held-out accuracy.

Loss per batch: ``w * CE(student, labels) + (1 - w) * T^2 * KL(teacher_T || student_T)``
(distillation only when there are no labels), the teacher run by onnxruntime on the same
augmented batch.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ModelError
from ..graph.io import save_model
from ..options import DataOptions, FinetuneOptions


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


def distillation_loss(student, teacher, labels, opts: FinetuneOptions):
    t = opts.temperature
    kd = F.kl_div(F.log_softmax(student / t, 1), F.softmax(teacher / t, 1),
                  reduction="batchmean") * t * t
    if labels is None:
        return kd
    return opts.label_weight * F.cross_entropy(student, labels) + (1 - opts.label_weight) * kd


def accuracy(module, x, y, batch: int = 512) -> float:
    module.eval()
    with torch.no_grad():
        pred = np.concatenate([module(torch.from_numpy(x[i:i + batch])).argmax(1).numpy()
                               for i in range(0, len(x), batch)])
    module.train()
    return float((pred == y).mean())


class EpochRunner:
    """One pass of distillation over the training split (shared by fine-tuning and its
    quantization-aware epochs)."""

    def __init__(self, model, module, optimizer, teacher_sess, teacher_input, x, y, train,
                 opts: FinetuneOptions, data: DataOptions, dist, log):
        self.model, self.module, self.optimizer = model, module, optimizer
        self.teacher_sess, self.teacher_input = teacher_sess, teacher_input
        self.x, self.y, self.train = x, y, train
        self.opts, self.data, self.dist, self.log = opts, data, dist, log
        self.steps = max(1, len(train) // opts.batch)

    def epoch(self, epoch: int, lr_at, good_state: dict, output: Path,
              label: str = "epoch") -> list[float]:
        """Train one epoch; ``lr_at(step)`` gives the learning rate. A non-finite loss
        restores ``good_state``, writes it to ``output`` and stops with an error."""
        opts, dist, module = self.opts, self.dist, self.module
        per_rank = opts.batch // dist.world
        epoch_rng = np.random.default_rng([opts.seed, epoch])
        perm = self.train[epoch_rng.permutation(len(self.train))]
        seen, t0, losses = 0, time.perf_counter(), []
        for step in range(self.steps):
            batch_idx = perm[step * opts.batch:(step + 1) * opts.batch]
            xb = augment(self.x[batch_idx], self.data, epoch_rng)
            teacher_logits = self.teacher_sess.run(None, {self.teacher_input: xb})[0]
            mine = slice(dist.rank * per_rank, (dist.rank + 1) * per_rank)
            labels = None if self.y is None else torch.from_numpy(self.y[batch_idx][mine])
            for group in self.optimizer.param_groups:
                group["lr"] = lr_at(step)
            loss = distillation_loss(self.model(torch.from_numpy(xb[mine])),
                                     torch.from_numpy(teacher_logits[mine]), labels, opts)
            if not torch.isfinite(loss):
                module.load_state_dict(good_state)
                if dist.main:
                    save_model(module.export(), output)
                raise ModelError(f"loss became {loss.item()} at {label} {epoch + 1} step "
                                 f"{step + 1}; the last good model was written to {output}. "
                                 "Lower --lr.")
            self.optimizer.zero_grad()
            loss.backward()
            if opts.clip_grad:
                torch.nn.utils.clip_grad_norm_(module.parameters(), opts.clip_grad)
            self.optimizer.step()
            losses.append(loss.item())
            seen += len(batch_idx)
            if dist.main and (step % 20 == 0 or step == self.steps - 1):
                rate = seen / (time.perf_counter() - t0)
                self.log(f"{label} {epoch + 1} step {step + 1}/{self.steps} "
                         f"loss {np.mean(losses[-20:]):.4f} {rate:.0f} img/s")
        return losses
