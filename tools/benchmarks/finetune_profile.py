"""Where the time of a ``finetune`` step goes on the authors' ResNet-56 (CIFAR-10 JPEG).

    python -m tools.benchmarks.finetune_profile [--steps 8 --batch 128 --threads 2]
        [--out out/cifar10]

One training step, as ``finetune`` runs it (kse_onnx/finetune/epochs.py), is cut into
phases timed separately: batch gathering + augmentation (pad-crop 4, flip), the
teacher's logits (onnxruntime), the student's forward + loss, backward, gradient clip
+ SGD step. Three students run interleaved step by step, so load drifts hit them alike:
the original ONNX imported by ``finetune``, KSE G=4,T=0 (compact) imported likewise,
and the authors' native torch module (train mode, BatchNorm unfolded) doing the same
step. Reported: the median seconds per phase and each student's share, and the
imported original's step time over the native module's. The phases run one after the
other here; ``finetune`` itself prepares the next batch and its teacher logits on a worker
thread during the current step, so with a free core a step costs about the step less the
teacher.
"""

from __future__ import annotations

import time

import numpy as np
import onnx
import torch

from kse_onnx.api import optimize
from kse_onnx.data import load_data
from kse_onnx.finetune import losses
from kse_onnx.finetune.epochs import augment
from kse_onnx.finetune.importer import import_model
from kse_onnx.options import (
    DataOptions,
    FinetuneOptions,
    KSEOptions,
    LowerOptions,
)
from models.export import export_kse_resnet56
from models.zoo import load_kse_resnet56
from tools import common
from tools.results.cifar10_table import NORMALISE, prepare_data

TRAIN_DATA = DataOptions(**NORMALISE, pad_crop=4, flip=True)  # the heavier augmentation
PHASES = ("data + augmentation", "teacher (onnxruntime)", "forward + loss", "backward",
          "clip + SGD step")


def main() -> None:
    parser = common.parser(__doc__, out="cifar10")
    common.add_shared_inputs(parser, data=True)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per student")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = common.parse(parser)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    files = prepare_data(args.data, args.out, 3072, 1024, 0)
    x, y = load_data(files["train"], TRAIN_DATA)
    original = export_kse_resnet56(args.weights, args.out / "original.onnx")
    kse = args.out / "profile_G4T0.onnx"
    optimize(original, kse, KSEOptions(G=4, T=0), lower_options=LowerOptions("compact"),
             overwrite=True)
    opts = FinetuneOptions(threads=args.threads, quiet=True)
    teacher = onnx.load(original)
    students = {"imported original": import_model(original),
                "imported KSE G=4,T=0": import_model(kse),
                "native torch module": load_kse_resnet56(args.weights)}
    objectives, optimizers = {}, {}
    for name, module in students.items():
        module.train()
        student = teacher if "native" in name else onnx.load(kse if "KSE" in name else original)
        objectives[name] = losses.plan(opts, student, teacher, module, x, lambda s: None)
        optimizers[name] = torch.optim.SGD(module.parameters(), lr=opts.lr,
                                           momentum=opts.momentum,
                                           weight_decay=opts.weight_decay)
    rng = np.random.default_rng(0)
    times = {name: {p: [] for p in PHASES} for name in students}
    for step in range(args.steps + 1):  # step 0: warm-up, not counted
        idx = rng.permutation(len(x))[:args.batch]
        for name, module in students.items():
            t = [time.perf_counter()]
            xb = augment(x[idx], TRAIN_DATA, rng)
            labels = torch.from_numpy(y[idx])
            t.append(time.perf_counter())
            targets = objectives[name].targets(xb)
            t.append(time.perf_counter())
            loss = objectives[name].loss(module, module, torch.from_numpy(xb), targets, labels)
            t.append(time.perf_counter())
            optimizers[name].zero_grad()
            loss.backward()
            t.append(time.perf_counter())
            torch.nn.utils.clip_grad_norm_(module.parameters(), opts.clip_grad)
            optimizers[name].step()
            t.append(time.perf_counter())
            if step:
                for phase, a, b in zip(PHASES, t, t[1:], strict=False):
                    times[name][phase].append(b - a)
    common.print_header(
        f"{args.threads} threads, batch {args.batch}, median of {args.steps} "
        "interleaved steps")
    names = list(students)
    print("| phase | " + " | ".join(f"{n}: s (share)" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    medians = {n: {p: float(np.median(times[n][p])) for p in PHASES} for n in names}
    steps = {n: float(np.median(np.sum([times[n][p] for p in PHASES], axis=0))) for n in names}
    for p in PHASES:
        print(f"| {p} | " + " | ".join(f"{medians[n][p]:.3f} ({medians[n][p] / steps[n]:.0%})"
                                       for n in names) + " |")
    print("| step | " + " | ".join(f"{steps[n]:.3f} (100%)" for n in names) + " |")
    native = steps["native torch module"]
    print(f"# step time over the native module's: imported original "
          f"{steps['imported original'] / native:.2f}x, imported KSE G=4,T=0 "
          f"{steps['imported KSE G=4,T=0'] / native:.2f}x; images/s: "
          + ", ".join(f"{n} {args.batch / steps[n]:.1f}" for n in names))


if __name__ == "__main__":
    main()
