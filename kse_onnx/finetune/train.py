"""Fine-tuning a compressed model by distillation from the original ONNX model.

Loss per batch (``--loss``, :mod:`.losses`): for classifier logits
``w * CE(student, labels) + (1 - w) * T^2 * KL(teacher_T || student_T)`` (distillation
only when there are no labels); for other outputs (and, with ``--loss features``, the
compressed Convs' outputs too) the mean squared error divided by the teacher's variance.
The teacher runs in onnxruntime on the same augmented batch. ``--optimizer auto``: SGD
with momentum for ``kd``, Adam for the dense targets of ``mse`` and ``features``.
Under ``torchrun`` each process takes its slice of every global batch and
DistributedDataParallel averages gradients, so K processes follow the same trajectory
as one (up to float summation order).
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .. import paths
from ..data import ModelInput, check_labels, load_data
from ..errors import OptionError
from ..graph.io import load_model, model_files, save_model
from ..options import (
    DEFAULT_LR,
    CalibrationOptions,
    DataOptions,
    FinetuneOptions,
    QuantizeOptions,
)
from ..runtime.ort import session
from . import losses
from .checkpoint import load_checkpoint
from .epochs import EpochRunner, accuracy
from .importer import import_model


def learning_rate(opts: FinetuneOptions, base: float, step: int, total: int) -> float:
    """The rate at ``step`` of ``total`` under ``opts.schedule``, from ``base``."""
    if opts.schedule == "cosine":
        return base * 0.5 * (1 + math.cos(math.pi * step / max(1, total)))
    if opts.schedule == "step":  # x0.1 at half and three quarters, as the authors did
        return base * (0.1 ** (int(step >= total / 2) + int(step >= 3 * total / 4)))
    return base


def make_optimizer(opts: FinetuneOptions, loss: str, params, log):
    """(optimizer, base learning rate) of ``--optimizer``/``--lr`` for the chosen loss;
    says which it picked."""
    kind = opts.optimizer
    if kind == "auto":
        kind = "sgd" if loss == "kd" else "adam"
    lr = opts.lr or DEFAULT_LR[kind]
    if kind == "sgd":
        optimizer = torch.optim.SGD(params, lr=lr, momentum=opts.momentum,
                                    weight_decay=opts.weight_decay)
    else:
        optimizer = torch.optim.Adam(params, lr=lr, weight_decay=opts.weight_decay)
    note = f" (auto: loss {loss})" if opts.optimizer == "auto" else ""
    log(f"optimizer: {kind}, lr {lr:g} ({opts.schedule}){note}")
    return optimizer, lr


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


def finetune(compressed, output, teacher, data_path, opts: FinetuneOptions,
             data: DataOptions, resume: bool = False, log=None,
             quantize: QuantizeOptions | None = None,
             calibration: CalibrationOptions | None = None) -> dict:
    """Train ``compressed`` toward ``teacher`` on ``data_path``; write ``output``."""
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    dist = Distributed()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    output = Path(output)
    if opts.batch % dist.world:
        raise OptionError("--batch", f"{opts.batch} must be a multiple of the {dist.world} "
                                          "torchrun processes")
    paths.check_paths({"COMPRESSED": model_files(compressed),
                       "--teacher": model_files(teacher), "--data": data_path,
                       "--calibration": calibration.calibration if calibration else ""},
                      {"OUTPUT": output, "OUTPUT's weights file": f"{output}.data",
                       "checkpoint folder/": f"{output}.ckpt"})
    say = (lambda text: None) if opts.quiet or not dist.main else log
    student_model = load_model(compressed)
    module = import_model(student_model, str(compressed))  # unmappable ops: refused here
    x, y = load_data(data_path, data, ModelInput.of(student_model))
    teacher_model = load_model(teacher)
    if y is not None:  # every label one of the teacher's classes
        sess = session(teacher_model)
        classes = sess.run(None, {sess.get_inputs()[0].name: x[:1]})[0].shape[-1]
        y = check_labels(y, len(x), data_path, classes)
    objective = losses.plan(opts, student_model, teacher_model, module, x, say)
    rng = np.random.default_rng(opts.seed)
    order = rng.permutation(len(x))
    n_val = int(len(x) * opts.val_fraction) if y is not None and objective.classifier else 0
    val, train = order[:n_val], order[n_val:]
    model = dist.wrap(module)
    optimizer, base_lr = make_optimizer(opts, objective.kind, module.parameters(), say)
    steps_per_epoch = max(1, len(train) // opts.batch)
    total = steps_per_epoch * opts.epochs
    ckpt_dir = Path(f"{output}.ckpt")
    ckpt = ckpt_dir / "last.pt"
    start_epoch, best_acc, best_state = 0, -1.0, None
    if resume and ckpt.exists():
        start_epoch, best_acc, best_state = load_checkpoint(ckpt, module, optimizer)
        say(f"resumed from {ckpt} at epoch {start_epoch}")
    good_state = {k: v.clone() for k, v in module.state_dict().items()}
    history = []
    run = EpochRunner(model, module, optimizer, objective, x, y, train, opts, data, dist, say)
    for epoch in range(start_epoch, opts.epochs):
        t0 = time.perf_counter()
        step_losses = run.epoch(epoch, lambda step, e=epoch: learning_rate(
            opts, base_lr, e * steps_per_epoch + step, total), good_state, output)
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
                     "optimizer_type": type(optimizer).__name__,
                     "epoch": epoch + 1, "best_acc": best_acc, "best": best_state}
            _save_checkpoint(ckpt_dir / f"epoch_{epoch + 1:03d}.pt", state)
            _save_checkpoint(ckpt, state)
        dist.barrier()
    if best_state is not None:
        module.load_state_dict(best_state)
    result = {"history": history, "best_val_accuracy": best_acc if n_val else None,
              "loss": objective.describe()}
    if quantize is not None and quantize.active:
        from ..quantize.apply import calibration_inputs
        from .qat import quantize_tuned  # every rank: the same decision, the same epochs

        images = calibration_inputs(calibration, data, default=str(data_path),
                                    model=student_model)
        tuned, result["int8"] = quantize_tuned(run, quantize, images, val, output)
    else:
        tuned = module.export()
    if dist.main:
        save_model(tuned, output)
    dist.barrier()
    return result
