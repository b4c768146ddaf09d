"""Post-training recovery after a latency budget: the refit alone (``--refit act``) against
``--refit distill`` at several epoch counts, learning rates and calibration sizes, on the
Fashion-MNIST ResNet-20 (10,000 test images, labels used only to score).

    python tools/distill_study.py [--r 0.6] [--images 256,1024,4096] [--epochs 0,2,4,8,16]
                                  [--lr 1e-4,3e-4,1e-3]

The budget is searched once (float, ``--target-latency R``, batches 1 and 64, 1 thread)
and every row replays its kept channels (``--choices``), so rows differ only in the
refit. ``epochs 0`` is ``--refit act``. Rows go to ``out/distill_study/rows.jsonl`` as
they finish; the table is printed at the end with the machine and the date.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from kse_onnx.api import optimize
from kse_onnx.data import FASHION_MNIST, load_data
from kse_onnx.evaluate import evaluate
from kse_onnx.options import (
    BudgetOptions,
    CalibrationOptions,
    DataOptions,
    LowerOptions,
    ProgressOptions,
    RefitOptions,
)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "out" / "distill_study"
TEACHER = ROOT / "models" / "fmnist_resnet20.onnx"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--r", type=float, default=0.6)
    parser.add_argument("--images", default="1024")
    parser.add_argument("--epochs", default="0,2,4,8")
    parser.add_argument("--lr", default="1e-4,3e-4,1e-3")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    x_train, _ = load_data(FASHION_MNIST / "train-images-idx3-ubyte.gz", DataOptions())
    x_test, y_test = load_data(FASHION_MNIST / "t10k-images-idx3-ubyte.gz", DataOptions())
    original = evaluate(TEACHER, x_test, y_test).top1
    quiet = ProgressOptions(quiet=True)
    budget = BudgetOptions(args.r)
    searched = OUT / f"budget_{args.r:g}.onnx"
    calibration = OUT / "calibration_1024.npz"
    np.savez(calibration, x=x_train[:1024])
    if not searched.exists():
        optimize(TEACHER, searched, lower_options=LowerOptions("compact", batches="1,64"),
                 calibration=CalibrationOptions(str(calibration)), budget=budget,
                 refit=RefitOptions("act"), progress=quiet, log=lambda line: None)
    replay = LowerOptions("compact", batches="1,64", choices=str(searched))
    rows = []
    for n in [int(v) for v in args.images.split(",")]:
        calibration = OUT / f"calibration_{n}.npz"
        np.savez(calibration, x=x_train[:n])
        for epochs in [int(v) for v in args.epochs.split(",")]:
            for lr in [float(v) for v in args.lr.split(",")] if epochs else [0.0]:
                mode = RefitOptions("distill", refit_distill_epochs=epochs,
                                    refit_distill_lr=lr) if epochs else RefitOptions("act")
                out = OUT / f"n{n}_e{epochs}_lr{lr:g}.onnx"
                start = time.perf_counter()
                report = optimize(TEACHER, out, lower_options=replay, overwrite=True,
                                  calibration=CalibrationOptions(str(calibration),
                                                                 calibration_images=n),
                                  budget=budget, refit=mode, progress=quiet,
                                  log=lambda line: None)
                seconds = time.perf_counter() - start
                distilled = report.extra["refit"].get("distill") or {}
                row = {"images": n, "epochs": epochs, "lr": lr,
                       "accuracy": evaluate(out, x_test, y_test).top1,
                       "original": original, "seconds": round(seconds, 1),
                       "distill_seconds": distilled.get("seconds"),
                       "kept": distilled.get("kept"),
                       "held_before": distilled.get("held_before"),
                       "held_after": distilled.get("held_after")}
                rows.append(row)
                with open(OUT / "rows.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    print(f"\n{platform.node()} ({os.cpu_count()} cores), {datetime.date.today()}, "
          f"torch threads {args.threads}, R = {args.r:g}, original {original:.4f}")
    print("| images | epochs | lr | accuracy | drop | seconds (distill) | kept |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['images']} | {r['epochs']} | {r['lr']:g} | {r['accuracy']:.4f} | "
              f"{100 * (r['original'] - r['accuracy']):.2f} | {r['seconds']} "
              f"({r['distill_seconds']}) | {r['kept']} |")


if __name__ == "__main__":
    main()
