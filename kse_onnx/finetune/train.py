"""Fine-tuning a compressed model by distillation from the original ONNX model.

Loss per batch (``--loss``, :mod:`.losses`): for classifier logits
``w * CE(student, labels) + (1 - w) * T^2 * KL(teacher_T || student_T)`` (distillation
only when there are no labels); for other outputs, or the compressed Convs' outputs, the
mean squared error divided by the teacher's variance. The teacher runs in onnxruntime on
the same augmented batch. Under ``torchrun`` each process takes its slice of every global batch
and DistributedDataParallel averages gradients, so K processes follow the same
trajectory as one (up to float summation order).
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelError
from ..graph.io import load_model, save_model
from ..options import DataOptions, FinetuneOptions, QuantizeOptions
from . import losses, progress
from .data import load_data
from .importer import import_model


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


def learning_rate(opts: FinetuneOptions, step: int, total: int) -> float:
    if opts.schedule == "cosine":
        return opts.lr * 0.5 * (1 + math.cos(math.pi * step / max(1, total)))
    if opts.schedule == "step":  # x0.1 at half and three quarters, as the authors did
        return opts.lr * (0.1 ** (int(step >= total / 2) + int(step >= 3 * total / 4)))
    return opts.lr


class Distributed:
    """Rank and world size under torchrun (RANK, WORLD_SIZE set), else one process."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            torch.distributed.init_process_group(backend)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, module):
        if self.world == 1:
            return module
        return torch.nn.parallel.DistributedDataParallel(module)

    def barrier(self):
        if self.world > 1:
            torch.distributed.barrier()


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


def _save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


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

    def epoch(self, epoch: int, lr_at, good_state: dict, output: Path,
              label: str = "epoch") -> list[float]:
        """Train one epoch; ``lr_at(step)`` gives the learning rate. A non-finite loss
        restores ``good_state``, writes it to ``output`` and stops with an error."""
        opts, dist, module = self.opts, self.dist, self.module
        per_rank = opts.batch // dist.world
        epoch_rng = np.random.default_rng([opts.seed, epoch])
        perm = self.train[epoch_rng.permutation(len(self.train))]
        history = []
        bar = progress.bar(self.steps * opts.batch, f"{label} {epoch + 1}",
                           quiet=opts.quiet or not dist.main)
        for step in range(self.steps):
            batch_idx = perm[step * opts.batch:(step + 1) * opts.batch]
            xb = augment(self.x[batch_idx], self.data, epoch_rng)
            targets = self.objective.targets(xb)
            mine = slice(dist.rank * per_rank, (dist.rank + 1) * per_rank)
            labels = None if self.y is None else torch.from_numpy(self.y[batch_idx][mine])
            for group in self.optimizer.param_groups:
                group["lr"] = lr_at(step)
            loss = self.objective.loss(self.model, module, torch.from_numpy(xb[mine]),
                                       [t[mine] for t in targets], labels)
            if not torch.isfinite(loss):
                bar.close()
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
            history.append(loss.item())
            bar.update(len(batch_idx), loss=f"{np.mean(history[-20:]):.4g}")
        bar.close()
        return history


def finetune(compressed, output, teacher, data_path, opts: FinetuneOptions,
             data: DataOptions, resume: bool = False, log=None,
             quantize: QuantizeOptions | None = None) -> dict:
    """Train ``compressed`` toward ``teacher`` on ``data_path``; write ``output``."""
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    dist = Distributed()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    output = Path(output)
    say = (lambda text: None) if opts.quiet or not dist.main else log
    student_model = load_model(compressed)
    module = import_model(student_model, str(compressed))  # unmappable ops: refused here
    x, y = load_data(data_path, data)
    if opts.batch % dist.world:
        raise ModelError(f"--batch {opts.batch} must be a multiple of the {dist.world} "
                         "torchrun processes")
    objective = losses.plan(opts, student_model, load_model(teacher), module, x, say)
    rng = np.random.default_rng(opts.seed)
    order = rng.permutation(len(x))
    n_val = int(len(x) * opts.val_fraction) if y is not None and objective.classifier else 0
    val, train = order[:n_val], order[n_val:]
    model = dist.wrap(module)
    optimizer = torch.optim.SGD(module.parameters(), lr=opts.lr, momentum=opts.momentum,
                                weight_decay=opts.weight_decay)
    steps_per_epoch = max(1, len(train) // opts.batch)
    total = steps_per_epoch * opts.epochs
    ckpt_dir = Path(f"{output}.ckpt")
    ckpt = ckpt_dir / "last.pt"
    start_epoch, best_acc, best_state = 0, -1.0, None
    if resume and ckpt.exists():
        try:  # tensors and plain containers only: nothing in the file is executed
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelError(f"{ckpt}: not a kse-onnx checkpoint or holds objects other "
                             f"than tensors; refused ({type(exc).__name__})") from None
        module.load_state_dict(state["module"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best_acc = int(state["epoch"]), float(state["best_acc"])
        best_state = state.get("best")
        say(f"resumed from {ckpt} at epoch {start_epoch}")
    good_state = {k: v.clone() for k, v in module.state_dict().items()}
    history = []
    run = EpochRunner(model, module, optimizer, objective, x, y, train, opts, data, dist, say)
    for epoch in range(start_epoch, opts.epochs):
        t0 = time.perf_counter()
        step_losses = run.epoch(epoch, lambda step, e=epoch: learning_rate(
            opts, e * steps_per_epoch + step, total), good_state, output)
        good_state = {k: v.clone() for k, v in module.state_dict().items()}
        record = {"epoch": epoch + 1, "loss": float(np.mean(step_losses)),
                  "seconds": time.perf_counter() - t0}
        if n_val:
            record["val_accuracy"] = accuracy(module, x[val], y[val], quiet=opts.quiet)
            if record["val_accuracy"] > best_acc:
                best_acc, best_state = record["val_accuracy"], good_state
        history.append(record)
        if dist.main:
            say(f"epoch {epoch + 1}/{opts.epochs}: loss {record['loss']:.4g}, "
                f"{record['seconds']:.1f} s"
                + (f", held-out accuracy {record['val_accuracy']:.4f}" if n_val else ""))
            ckpt_dir.mkdir(exist_ok=True)
            state = {"module": good_state, "optimizer": optimizer.state_dict(),
                     "epoch": epoch + 1, "best_acc": best_acc, "best": best_state}
            _save_checkpoint(ckpt_dir / f"epoch_{epoch + 1:03d}.pt", state)
            _save_checkpoint(ckpt, state)
        dist.barrier()
    if best_state is not None:
        module.load_state_dict(best_state)
    result = {"history": history, "best_val_accuracy": best_acc if n_val else None,
              "loss": objective.describe()}
    if quantize is not None and quantize.active:
        from .qat import quantize_tuned  # every rank: the same decision, the same epochs

        tuned, result["int8"] = quantize_tuned(run, quantize, str(data_path), val, output)
    else:
        tuned = module.export()
    if dist.main:
        save_model(tuned, output)
    dist.barrier()
    return result
