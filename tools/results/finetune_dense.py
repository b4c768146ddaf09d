"""Do 3 epochs of ``finetune --loss mse`` / ``--loss features`` at least halve the output
error of a compressed detector and U-Net against their original? (issue #32)

    apt-get install dataset-fashion-mnist
    python -m tools.results.finetune_dense [--models yolo_tiny,unet_tiny,unet64]
        [--losses mse,features]
        [--lrs 0] [--warmups 0.1] [--epochs 3] [--images 1024] [--batch 128] [--G 4 --T 0]
        [--lr-checks 2] [--student TUNED.onnx] [--threads 1] [--json rows.json]

The teachers are the zoo's TinyYOLO (3x64x64) and TinyUNet (3x32x32, 3 classes) with
seeded random weights and BatchNorm statistics (models/zoo.py), and ``unet64``: the same
U-Net with a 2-channel mask output on 3x64x64 (the issue's setting), exported at opset
17 and compressed by ``optimize --G 4 --T 0 --lowering compact``. Training inputs: the
first ``--images`` Fashion-MNIST training images resized bilinearly, the grey channel
repeated, normalised to mean 0 and std 1 (``finetune`` holds out its ``--val-fraction``
of them to pick the epoch). The error is what ``kse-onnx verify --inputs`` reports
(relative output error against the teacher) on 256 other images, the first Fashion-MNIST
test images: before, after epoch 1 and after the last epoch (both from the run's
checkpoints), and of the model written (the best held-out epoch, or the input).
``--lrs`` and ``--warmups`` take comma-separated lists (0 = finetune's default lr) for
the learning-rate measurement behind the Adam default, ``--lr-checks`` likewise for
``--lr-check``. ``--student`` starts from a given model (one ``--models`` entry), e.g. the
output of an earlier run: a near start, where a rate that suits a far one does harm.
Prints a Markdown table.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import onnx
import torch

from kse_onnx.api import optimize
from kse_onnx.finetune.importer import import_model
from kse_onnx.finetune.train import finetune
from kse_onnx.options import DataOptions, FinetuneOptions, KSEOptions, LowerOptions
from models.zoo import TinyUNet, build
from tools import common
from tools.results.finetune_losses import (
    CHECK_IMAGES,
    RATIO,
    error,
    finish,
    parse_run,
    prepare,
)


def teacher_net(name: str):
    """(torch model, input shape): a zoo model, or ``unet64``, the zoo U-Net with a
    2-channel output on 64x64 inputs (same seeded weights and BN statistics)."""
    if name != "unet64":
        return build(name)
    net, _ = build("unet_tiny")
    two = TinyUNet(classes=2)
    state = {k: v[:2] if k.startswith("out.") else v for k, v in net.state_dict().items()}
    two.load_state_dict(state)
    return two.eval(), (3, 64, 64)


def checkpoint_error(student: Path, ckpt: Path, teacher: Path, check: Path, tmp: Path) -> float:
    """verify --inputs error of ``student`` with the weights of checkpoint ``ckpt``."""
    module = import_model(onnx.load(student), str(student))
    module.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["module"])
    onnx.save(module.export(), tmp)
    return error(teacher, tmp, check)


def main() -> int:
    parser = common.parser(__doc__, out="finetune_dense")
    parser.add_argument("--models", default="yolo_tiny,unet_tiny,unet64")
    parser.add_argument("--losses", default="mse,features")
    parser.add_argument("--lrs", default="0", help="comma-separated; 0 = finetune's default")
    parser.add_argument("--warmups", default=str(FinetuneOptions().warmup))
    parser.add_argument("--lr-checks", default=str(FinetuneOptions().lr_check))
    parser.add_argument("--student", type=Path, help="start from this model instead")
    parser.add_argument("--optimizer", default="auto")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=FinetuneOptions().batch)
    parser.add_argument("--G", type=int, default=4)
    parser.add_argument("--T", type=int, default=0)
    args = parse_run(parser, lambda a: (
        f"Fashion-MNIST {a.images} training / {CHECK_IMAGES} check images; G={a.G},T={a.T} "
        f"compact; finetune: {a.epochs} epochs, batch {a.batch}, optimizer {a.optimizer}, "
        "otherwise the defaults"))
    print("| model | loss | lr | warm-up | lr check | error before | after 1 epoch | "
          "after last epoch | written (epoch) | ratio | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows, failed = [], 0
    for name in args.models.split(","):
        net, shape = teacher_net(name)
        teacher, train, check = prepare(name, net, shape, "fmnist", args.images, args.out)
        student = args.student or args.out / f"{name}_G{args.G}T{args.T}.onnx"
        if not args.student:
            optimize(teacher, student, KSEOptions(G=args.G, T=args.T),
                     lower_options=LowerOptions("compact"), overwrite=True)
        before = error(teacher, student, check)
        for loss in args.losses.split(","):
            for lr, warmup, check_steps in ((float(a), float(b), int(c))
                                            for a in args.lrs.split(",")
                                            for b in args.warmups.split(",")
                                            for c in args.lr_checks.split(",")):
                tuned = args.out / f"{name}_{loss}_lr{lr:g}_w{warmup:g}_c{check_steps}.onnx"
                start = time.perf_counter()
                lines = []
                result = finetune(student, tuned, teacher, train, FinetuneOptions(
                    loss=loss, threads=args.threads, quiet=True, batch=args.batch, lr=lr,
                    warmup=warmup, lr_check=check_steps, epochs=args.epochs,
                    optimizer=args.optimizer), DataOptions(), log=lines.append)
                seconds = time.perf_counter() - start
                ckpts = Path(f"{tuned}.ckpt")
                tmp = args.out / "epoch.onnx"
                first = checkpoint_error(student, ckpts / "epoch_001.pt", teacher, check, tmp)
                last = checkpoint_error(student, ckpts / f"epoch_{args.epochs:03d}.pt",
                                        teacher, check, tmp)
                written = error(teacher, tuned, check)
                best = result["held_out"]["best_epoch"]
                ratio = written / before
                failed += not ratio <= RATIO
                backed = [line for line in lines if line.startswith("lr check")]
                rows.append({"model": name, "loss": loss, "lr": lr, "warmup": warmup,
                             "lr_check": check_steps, "lr_check_line": backed,
                             "before": before, "after_1": first, "after_last": last,
                             "written": written, "best_epoch": best, "ratio": ratio,
                             "seconds": round(seconds, 1), "held_out": result["held_out"],
                             "history": result["history"]})
                chosen = backed[0].rsplit("lr ", 1)[1] if backed else f"{lr or 'default'}"
                print(f"| {name} | {loss} | {chosen} | {warmup:g} | {check_steps} | "
                      f"{before:.4f} | {first:.4f} | {last:.4f} | {written:.4f} ({best}) "
                      f"| {ratio:.3f} | {seconds:.0f} |", flush=True)
    return finish(rows, failed, args.json)


if __name__ == "__main__":
    sys.exit(main())
