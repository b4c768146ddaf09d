"""Options of the other commands (finetune, verify, bench), of every command, and the
files each command reads or writes besides its positional models.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..errors import OptionError
from .fields import (
    LOSSES,
    OPTIMIZERS,
    PROVIDER_NAMES,
    SCHEDULES,
    batch_list,
    check_choice,
    check_int,
    option,
)


@dataclass(frozen=True)
class DataOptions:
    """Training and evaluation data: preprocessing and augmentation."""

    resize: int = option(0, "resize the shorter side to this many pixels (0 = off)")
    crop: int = option(0, "centre-crop to this size (0 = off)")
    mean: tuple[str, ...] = option((), "per-channel mean to subtract (repeat per channel)",
                                   metavar="MEAN")
    std: tuple[str, ...] = option((), "per-channel std to divide by (repeat per channel)",
                                  metavar="STD")
    pad_crop: int = option(0, "augmentation: random crop after zero padding by this much")
    flip: bool = option(False, "augmentation: random horizontal flip")

    def __post_init__(self) -> None:
        for name in ("resize", "crop", "pad_crop"):
            check_int(self, name, low=0)
        for flag, values in (("--mean", self.mean), ("--std", self.std)):
            try:
                numbers = [float(v) for v in values]
            except ValueError as exc:
                raise OptionError(flag, f"expected numbers, got {values!r}") from exc
            if flag == "--std" and any(v <= 0 for v in numbers):
                raise OptionError(flag, "values must be > 0")


@dataclass(frozen=True)
class FinetuneOptions:
    """Fine-tuning by distillation from the original model (docs/algorithm.md, section 8)."""

    epochs: int = option(1, "passes over the training data")
    batch: int = option(0, "global batch size (split across torchrun processes); 0 = 128 for "
                           "--loss kd, 32 for mse and features (a dense target gives each image "
                           "many targets: smaller batches, more steps)")
    lr: float = option(0.0, "learning rate; 0 = the optimizer's default: 0.01 for SGD (the "
                            "authors' CIFAR setting), 0.003 for Adam (measured on dense losses)")
    lr_check: int = option(2, "steps of the one-batch learning-rate check before training: "
                              "if that many steps at the peak rate raise the loss of the "
                              "first batch, the rate is divided by 3 (up to 4 times; 0 = "
                              "off)")
    warmup: float = option(0.1, "fraction of all steps over which the learning rate rises "
                                "linearly from 0 (0 = off), so the first steps do not throw a "
                                "good start away")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(1e-5, "weight decay (the authors' setting)")
    optimizer: str = option("auto", "'sgd' (with --momentum) or 'adam'; 'auto' = SGD for --loss "
                                    "kd, Adam for mse and features (dense targets, whose "
                                    "gradients differ in scale from layer to layer)",
                            choices=OPTIMIZERS)
    schedule: str = option("cosine", "learning-rate schedule", choices=SCHEDULES)
    clip_grad: float = option(5.0, "clip the gradient norm to this (0 = off): exported models "
                                   "have BatchNorm folded into the convs and diverge without it")
    temperature: float = option(4.0, "distillation temperature")
    label_weight: float = option(0.5, "weight of cross-entropy on labels (when labels exist); "
                                      "the rest is distillation")
    val_fraction: float = option(0.1, "held-out fraction of the images: the student is measured "
                                      "on it at the start and after every epoch (accuracy, or "
                                      "agreement with the teacher, for logits; the loss's "
                                      "normalised error otherwise) and the best is written, the "
                                      "input unchanged if no epoch beats it (0 = off)")
    seed: int = option(0, "seed of shuffling and augmentation")
    threads: int = option(0, "torch threads per process (0 = torch's default)")
    qat_epochs: int = option(1, "with --quantize int8-static: quantization-aware epochs (fake "
                                "int8 shared kernels) when the INT8 model loses more than 0.3 "
                                "point on the held-out split (0 = never)")
    qat_lr: float = option(0.001, "learning rate of the quantization-aware epochs (constant)")
    loss: str = option("auto", "what the student matches: 'kd' (softened classifier logits), "
                               "'mse' (every output, each divided by the teacher's variance), "
                               "'features' (the compressed Convs' outputs, likewise, averaged "
                               "with the mse term; any model type, no labels); 'auto' = kd for "
                               "one 2-D logits output, else mse", choices=LOSSES)
    quiet: bool = option(False, "no progress bar and no per-epoch lines on stderr")

    def __post_init__(self) -> None:
        for name, low in (("epochs", 1), ("batch", 0), ("seed", 0), ("threads", 0),
                          ("qat_epochs", 0), ("lr_check", 0)):
            check_int(self, name, low=low)
        checks = (("lr", 0 <= self.lr < math.inf), ("qat_lr", 0 < self.qat_lr < math.inf),
                  ("momentum", 0 <= self.momentum < 1),
                  ("weight_decay", 0 <= self.weight_decay < math.inf),
                  ("clip_grad", 0 <= self.clip_grad < math.inf),
                  ("temperature", 0 < self.temperature < math.inf),
                  ("label_weight", 0 <= self.label_weight <= 1),
                  ("val_fraction", 0 <= self.val_fraction < 1),
                  ("warmup", 0 <= self.warmup <= 1))
        for name, ok in checks:
            if not ok:
                raise OptionError(f"--{name.replace('_', '-')}",
                                  f"out of range: {getattr(self, name)!r}")
        check_choice("--schedule", self.schedule, SCHEDULES)
        check_choice("--loss", self.loss, LOSSES)
        check_choice("--optimizer", self.optimizer, OPTIMIZERS)


@dataclass(frozen=True)
class VerifyOptions:
    """Checks of an optimized model against its original."""

    inputs: str = option("", "real inputs (.npz, one array per graph input), checked besides "
                             "the random ones", metavar="NPZ")
    batch: int = option(2, "batch of the random inputs")
    seed: int = option(0, "seed of the random inputs")
    rtol: float = option(0.0, "relative error allowed for rewrite exactness; 0 = "
                              "from the weights' dtype: 1e-4 float32/float64, 1e-2 "
                              "float16, 5e-2 bfloat16. Non-finite outputs always "
                              "fail")
    max_drop: float = option(0.0, "CI gate: exit 1 when the drop against the original on "
                                  "--inputs (then read as images: .npz x with optional y, IDX "
                                  "or an image folder) exceeds D points: accuracy lost with "
                                  "labels, else 100 x (1 - top-1 agreement), or 100 x the "
                                  "relative error for outputs that are not logits (0 = off)",
                             metavar="D")

    def __post_init__(self) -> None:
        check_int(self, "batch", low=1)
        check_int(self, "seed", low=0)
        if not (isinstance(self.rtol, (int, float)) and 0 <= self.rtol < math.inf):
            raise OptionError("--rtol", f"must be a number >= 0, got {self.rtol!r}")
        if isinstance(self.max_drop, bool) or not (isinstance(self.max_drop, (int, float))
                                                   and 0 <= self.max_drop <= 100):
            raise OptionError("--max-drop", f"must be a number in [0, 100] (0 = off), got "
                              f"{self.max_drop!r}")
        if self.max_drop and not self.inputs:
            raise OptionError("--max-drop", "needs --inputs DATA (images to measure on)")


@dataclass(frozen=True)
class BenchOptions:
    """Latency of models side by side."""

    provider: str = option("cpu", "onnxruntime provider to time on",
                           metavar="{" + ",".join(PROVIDER_NAMES) + "}")  # checked below
    batch: str = option("1", "comma-separated batch sizes", metavar="B[,B...]")
    threads: int = option(1, "intra-op threads")
    repeats: int = option(30, "timed runs per model")

    def __post_init__(self) -> None:
        check_choice("--provider", self.provider, PROVIDER_NAMES)
        batch_list(self.batch, "--batch")
        check_int(self, "threads", low=1)
        check_int(self, "repeats", low=1)

@dataclass(frozen=True)
class ProgressOptions:
    """Progress on stderr (score, optimize, refit): a bar on a terminal, a line per tenth
    of the work in logs."""

    quiet: bool = option(False, "no progress bars and no progress lines on stderr")


@dataclass(frozen=True)
class GlobalOptions:
    """Options of every command."""

    debug: bool = option(False, "show tracebacks on errors")



def files(name: str, doc: str, **fields) -> type:
    """A frozen option class ``name`` of the files a command reads or writes besides its
    positional models: one field per keyword, each an :func:`option` (a path, or a
    switch about them)."""
    cls = dataclasses.make_dataclass(name, [  # a field of its own per class
        (key, type(f.default), dataclasses.field(default=f.default, metadata=f.metadata))
        for key, f in fields.items()], frozen=True)
    cls.__doc__, cls.__module__ = doc, __name__
    return cls


TEACHER = option("", "the original .onnx model", metavar="MODEL", required=True)
DATA = option("", ".npz (x, optional y), IDX images file or an image folder", metavar="DATA",
              required=True)
REPORT = option("", "write the JSON report here", metavar="PATH")

ScoreFiles = files("ScoreFiles", "Files score writes.", json=option(
    "", "also write the table, with every channel's plan, as JSON", metavar="PATH"))
OptimizeFiles = files("OptimizeFiles", "Files optimize writes besides OUTPUT.", report=REPORT,
                      overwrite=option(False, "allow OUTPUT to be the same file as INPUT"))
RefitFiles = files("RefitFiles", "Files refit reads and writes besides its models.",
                   teacher=TEACHER, report=REPORT)
FinetuneFiles = files("FinetuneFiles", "Files finetune reads.", teacher=TEACHER, data=DATA,
                      resume=option(False, "continue from OUTPUT.ckpt/last.pt"))
EvalFiles = files("EvalFiles", "Files eval reads.", data=DATA, compare=option(
    "", "report top-1 agreement with this model", metavar="MODEL"))
