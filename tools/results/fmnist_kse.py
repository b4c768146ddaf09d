"""KSE on the Fashion-MNIST ResNet-20: compress at G=4,T=0 and G=5,T=1, fine-tune by
distillation from the original, and print the README's table.

    apt-get install dataset-fashion-mnist
    python -m tools.scripts.train_fmnist_resnet20          # once: models/fmnist_resnet20.onnx
    python -m tools.results.fmnist_kse [--epochs 2] [--threads 2] [--out zoo/fmnist]
"""

from __future__ import annotations

import time
from pathlib import Path

import onnx

from kse_onnx.api import optimize
from kse_onnx.calibration import training_data
from kse_onnx.data import FASHION_MNIST, load_data
from kse_onnx.evaluate import evaluate
from kse_onnx.finetune.train import finetune
from kse_onnx.options import (
    DataOptions,
    FinetuneOptions,
    KSEOptions,
    LowerOptions,
)
from tools import common
from tools.common import ROOT

TEACHER = ROOT / "models" / "fmnist_resnet20.onnx"


def main() -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--out", type=Path, default=ROOT / "zoo" / "fmnist")
    parser.add_argument("--settings", default="4,0;5,1")
    args = common.parse(parser)
    train = FASHION_MNIST / "train-images-idx3-ubyte.gz"
    test = FASHION_MNIST / "t10k-images-idx3-ubyte.gz"
    x_test, y_test = load_data(test, DataOptions())
    teacher_acc = evaluate(TEACHER, x_test, y_test).top1
    common.print_header(
        f"torch threads {args.threads}; fine-tuning {args.epochs} epoch(s) of distillation "
        f"(+ labels), lr {args.lr}, batch 128")
    print("| G,T | teacher | compressed | fine-tuned | conv weights (KSE count) | "
          "conv MACs (KSE count / graph) | file | compress s | fine-tune s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for setting in args.settings.split(";"):
        G, T = (int(v) for v in setting.split(","))
        compressed = args.out / f"fmnist_resnet20_G{G}T{T}.onnx"
        tuned = args.out / f"fmnist_resnet20_G{G}T{T}_tuned.onnx"
        start = time.perf_counter()
        report = optimize(TEACHER, compressed, KSEOptions(G=G, T=T),
                          lower_options=LowerOptions("compact"))
        compress_s = time.perf_counter() - start
        after = evaluate(compressed, x_test, y_test).top1
        start = time.perf_counter()
        data = DataOptions(pad_crop=2, flip=True)
        finetune(compressed, tuned, TEACHER,
                 training_data(train, data, onnx.load(str(compressed))),
                 FinetuneOptions(epochs=args.epochs, lr=args.lr, threads=args.threads,
                                 val_fraction=0.05),
                 data, log=lambda text: None)
        tune_s = time.perf_counter() - start
        tuned_acc = evaluate(tuned, x_test, y_test).top1
        t = report.totals()
        graph = report.extra["graph_counts"]
        print(f"| {G},{T} | {teacher_acc:.4f} | {after:.4f} | {tuned_acc:.4f} | "
              f"{t['params_factored'] / t['params_before']:.3f}x | "
              f"{t['macs_factored'] / t['macs_before']:.3f}x / "
              f"{graph['after']['macs'] / graph['before']['macs']:.3f}x | "
              f"{report.file_size_after / report.file_size_before:.3f}x | "
              f"{compress_s:.1f} | {tune_s:.0f} |", flush=True)


if __name__ == "__main__":
    main()
