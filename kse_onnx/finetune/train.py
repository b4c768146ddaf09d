"""Fine-tuning a compressed model by distillation from the original ONNX model.

Loss per batch (``--loss``, :mod:`.losses`): for classifier logits
``w * CE(student, labels) + (1 - w) * T^2 * KL(teacher_T || student_T)`` (distillation
only when there are no labels); for other outputs (and, with ``--loss features``, the
compressed Convs' outputs too) the mean squared error divided by the teacher's variance.
The teacher runs in onnxruntime on the same augmented batch. ``--optimizer auto``: SGD
with momentum for ``kd``, Adam for the dense targets of ``mse`` and ``features``; the
rate rises linearly over the first ``--warmup`` of the steps, so the first steps cannot
throw a good start far away.

Never worse: ``--val-fraction`` of the images is held out and the student is measured on
it (:class:`.epochs.HeldOut`) at the start and after every epoch; the best epoch is
written, and when no epoch beats the start the input's weights are written unchanged
and the run says so.
Under ``torchrun`` each process takes its slice of every global batch and
DistributedDataParallel averages gradients, so K processes follow the same trajectory
as one (up to float summation order).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .. import paths
from ..calibration import TrainingData
from ..data import check_labels
from ..errors import ModelError, OptionError
from ..graph.io import load_model, model_files, save_model
from ..options import (
    DEFAULT_BATCH,
    DEFAULT_LR,
    CalibrationOptions,
    DataOptions,
    FinetuneOptions,
    QuantizeOptions,
)
from ..runtime.ort import session
from . import losses
from .checkpoint import load_checkpoint
from .epochs import Diverged, EpochRunner, HeldOut
from .importer import import_model
from .lrcheck import checked_lr


def learning_rate(opts: FinetuneOptions, base: float, step: int, total: int) -> float:
    """The rate at ``step`` of ``total`` under ``opts.schedule``, from ``base``, times the
    linear warm-up ``min(1, (step + 1) / W)`` over the first ``W = ceil(warmup * total)``
    steps."""
    warm = min(1.0, (step + 1) / max(1, math.ceil(opts.warmup * total)))
    if opts.schedule == "cosine":
        return warm * base * 0.5 * (1 + math.cos(math.pi * step / max(1, total)))
    if opts.schedule == "step":  # x0.1 at half and three quarters, as the authors did
        return warm * base * (0.1 ** (int(step >= total / 2) + int(step >= 3 * total / 4)))
    return warm * base


def make_optimizer(opts: FinetuneOptions, loss: str, params, log):
    """(optimizer, base learning rate, ``lr -> optimizer`` over ``params``) of
    ``--optimizer``/``--lr`` for the chosen loss; says which it picked."""
    kind = opts.optimizer
    if kind == "auto":
        kind = "sgd" if loss == "kd" else "adam"
    # Adam: measured on dense losses (tools/results/finetune_dense.py)
    lr = opts.lr or DEFAULT_LR[kind]
    params = list(params)

    def build(rate: float):
        if kind == "sgd":
            return torch.optim.SGD(params, lr=rate, momentum=opts.momentum,
                                   weight_decay=opts.weight_decay)
        return torch.optim.Adam(params, lr=rate, weight_decay=opts.weight_decay)

    note = f" (auto: loss {loss})" if opts.optimizer == "auto" else ""
    log(f"optimizer: {kind}, lr {lr:g} ({opts.schedule}), batch {opts.batch}{note}")
    return build(lr), lr, build


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


def _save_checkpoint(path: Path, state: dict) -> None:
    paths.atomic_write(path, writer=lambda f: torch.save(state, f))


def finetune(compressed, output, teacher, training: TrainingData, opts: FinetuneOptions,
             data: DataOptions, resume: bool = False, log=None,
             quantize: QuantizeOptions | None = None,
             calibration: np.ndarray | None = None) -> dict:
    """Train ``compressed`` toward ``teacher`` on ``training`` (images and labels read by
    :func:`kse_onnx.calibration.training_data`); write ``output``.
    ``calibration``: the images int8-static calibrates on, loaded by the caller
    (:mod:`kse_onnx.calibration`); None: the first ``--calibration-images`` default of
    the training images."""
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    dist = Distributed()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    output = Path(output)
    if opts.batch % dist.world:
        raise OptionError("--batch", f"{opts.batch} must be a multiple of the {dist.world} "
                                          "torchrun processes")
    paths.check_paths({"COMPRESSED": model_files(compressed),
                       "--teacher": model_files(teacher), "--data": training.where},
                      {"OUTPUT": output, "OUTPUT's weights file": f"{output}.data",
                       "checkpoint folder/": f"{output}.ckpt"})
    say = (lambda text: None) if opts.quiet or not dist.main else log
    student_model = load_model(compressed)
    module = import_model(student_model, str(compressed))  # unmappable ops: refused here
    x, y = training.x, training.y
    teacher_model = load_model(teacher)
    if y is not None:  # every label one of the teacher's classes
        sess = session(teacher_model)
        classes = sess.run(None, {sess.get_inputs()[0].name: x[:1]})[0].shape[-1]
        y = check_labels(y, len(x), training.where, classes)
    objective = losses.plan(opts, student_model, teacher_model, module, x, say)
    if not opts.batch:
        opts = dataclasses.replace(opts, batch=DEFAULT_BATCH[objective.kind])
    if opts.batch % dist.world:
        raise OptionError("--batch", f"{opts.batch} (the default for this loss) must be a "
                          f"multiple of the {dist.world} torchrun processes")
    rng = np.random.default_rng(opts.seed)
    order = rng.permutation(len(x))
    n_val = min(int(len(x) * opts.val_fraction), len(x) - 1)
    val, train = order[:n_val], order[n_val:]
    model = dist.wrap(module)
    optimizer, base_lr, build = make_optimizer(opts, objective.kind, module.parameters(), say)
    first = np.sort(train[:opts.batch])  # the lr check's batch: no draw from the run's rng
    base_lr = checked_lr(module, objective, build, x[first], None if y is None else y[first],
                         base_lr, opts.lr_check, opts.clip_grad, say)
    steps_per_epoch = max(1, len(train) // opts.batch)
    total = steps_per_epoch * opts.epochs
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    judge = HeldOut(objective, x[val], None if y is None else y[val]) if n_val else None
    start_score = judge.score(module) if judge else None
    if judge:
        say(f"held-out {judge.name} ({n_val} images) at the start: "
            f"{judge.text(start_score).split(' ', 1)[1]}")
    elif dist.main:
        log("no held-out split (--val-fraction 0 or too few images): the last epoch is "
            "written, unchecked against the input")
    ckpt_dir = Path(f"{output}.ckpt")
    ckpt = ckpt_dir / "last.pt"
    start_epoch, best_score, best_state, best_epoch = 0, start_score, None, 0
    if resume and ckpt.exists():
        start_epoch, saved_score, best_state, best_epoch = load_checkpoint(ckpt, module,
                                                                           optimizer)
        if best_state is not None and saved_score is not None:
            best_score = saved_score
        say(f"resumed from {ckpt} at epoch {start_epoch}")
    good_state = {k: v.clone() for k, v in module.state_dict().items()}
    history, diverged = [], None
    run = EpochRunner(model, module, optimizer, objective, x, y, train, opts, data, dist, say)
    for epoch in range(start_epoch, opts.epochs):
        t0 = time.perf_counter()
        fallback = good_state if judge is None else best_state or initial  # on a NaN
        try:
            step_losses = run.epoch(epoch, lambda step, e=epoch: learning_rate(
                opts, base_lr, e * steps_per_epoch + step, total), fallback)
        except Diverged as exc:
            if judge is None:  # nothing measured to fall back on: stop with an error
                raise ModelError(f"{exc}; nothing was written to {output} (finished epochs "
                                 f"are in {output}.ckpt/, see --resume)") from exc
            if dist.main:
                log(f"{exc}: training stopped, the best measured state is kept")
            diverged = str(exc)
            break
        good_state = {k: v.clone() for k, v in module.state_dict().items()}
        record = {"epoch": epoch + 1, "loss": float(np.mean(step_losses)),
                  "seconds": time.perf_counter() - t0}
        shown = ""
        if judge:
            score = judge.score(module)
            record[f"val_{judge.name}"] = judge.shown(score)
            shown = f", held-out {judge.text(score)}"
            if score > best_score:
                best_score, best_state, best_epoch = score, good_state, epoch + 1
        history.append(record)
        if dist.main:
            say(f"epoch {epoch + 1}/{opts.epochs}: loss {record['loss']:.4g}, "
                f"{record['seconds']:.1f} s{shown}")
            ckpt_dir.mkdir(exist_ok=True)
            state = {"module": good_state, "optimizer": optimizer.state_dict(),
                     "optimizer_type": type(optimizer).__name__, "epoch": epoch + 1,
                     "best_score": best_score, "best": best_state, "best_epoch": best_epoch}
            _save_checkpoint(ckpt_dir / f"epoch_{epoch + 1:03d}.pt", state)
            _save_checkpoint(ckpt, state)
        dist.barrier()
    kept_input = judge is not None and best_state is None
    if best_state is not None:
        module.load_state_dict(best_state)
    elif kept_input:
        module.load_state_dict(initial)
    result = {"history": history, "loss": objective.describe(), "kept_input": kept_input,
              "diverged": diverged,
              "best_val_accuracy": best_score[0] if judge and judge.name == "accuracy"
              else None}
    if judge:
        result["held_out"] = {"measure": judge.name, "images": int(n_val),
                              "start": judge.shown(start_score),
                              "best": judge.shown(best_score), "best_epoch": best_epoch}
        if kept_input:
            result["selection"] = (f"no epoch beat the input on the held-out split "
                                   f"({judge.text(start_score)} at the start): wrote the "
                                   "input's weights unchanged")
        else:
            result["selection"] = (f"kept epoch {best_epoch}: held-out "
                                   f"{judge.text(start_score)} -> {judge.text(best_score)}")
        if dist.main:
            (log if kept_input else say)(result["selection"])
    if quantize is not None and quantize.active:
        from .qat import quantize_tuned  # every rank: the same decision, the same epochs

        images = x[:CalibrationOptions().calibration_images] if calibration is None else \
            calibration
        tuned, result["int8"] = quantize_tuned(run, quantize, images, val, output)
    else:
        tuned = student_model if kept_input else module.export()
    if dist.main:
        save_model(tuned, output)
    dist.barrier()
    return result
