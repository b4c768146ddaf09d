"""Does one epoch of ``finetune --loss mse`` / ``--loss features`` bring a compressed
detector and U-Net at least twice closer to their original? (issue #13, "done when")

    apt-get install dataset-fashion-mnist
    python -m tools.results.finetune_losses [--models yolo_tiny,unet_tiny] [--settings "4,0;5,1"]
        [--losses mse,features] [--images 4096] [--batch 32] [--data fmnist|random]
        [--refit-images 1024] [--threads 1] [--lr 0] [--optimizer auto] [--json rows.json]

The teachers are the zoo's TinyYOLO (3x64x64) and TinyUNet (3x32x32) with seeded random
weights and BatchNorm statistics (models/zoo.py), exported at opset 17. Inputs: the
Fashion-MNIST training images (the first ``--images``; one epoch is one pass over them)
resized bilinearly to the model's input, the grey channel repeated three times,
normalised to mean 0 and std 1; or, with ``--data random``, Gaussian noise images. The
error is what ``kse-onnx verify --inputs`` reports, the relative error of the output
against the teacher's on 256 held-out inputs (the first Fashion-MNIST test images, or
other noise images); the ratio after/before must be <= 0.5. Everything else is
``finetune``'s default but ``--batch 32`` (128 steps). With ``--refit-images N``
(default 1024; 0 = off) a row per setting also gives the post-training refit
(``optimize --calibration``, default ``--refit``) on the first N training inputs, which
must lower the error (ratio < 1).
Prints a Markdown table; ``--json`` writes the rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from kse_onnx.api import optimize
from kse_onnx.calibration import training_data
from kse_onnx.data import fashion_mnist
from kse_onnx.finetune.train import finetune
from kse_onnx.options import (
    CalibrationOptions,
    DataOptions,
    FinetuneOptions,
    KSEOptions,
    LowerOptions,
    RefitOptions,
)
from kse_onnx.verify import verify
from models.export import export
from models.zoo import build
from tools import common

RATIO = 0.5
CHECK_IMAGES = 256


def images(kind: str, split: str, n: int, size: int, seed: int) -> np.ndarray:
    """(n, 3, size, size) float32 inputs, mean 0 and std 1."""
    if kind == "random":
        rng = np.random.default_rng(seed)
        return rng.standard_normal((n, 3, size, size)).astype(np.float32)
    x, _ = fashion_mnist(split)
    x = torch.from_numpy(x[:n].astype(np.float32) / 255.0)[:, None]
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                        align_corners=False).numpy()
    x = (x - x.mean()) / x.std()
    return np.ascontiguousarray(np.repeat(x, 3, axis=1), dtype=np.float32)


def prepare(name: str, net, shape, data: str, count: int, out: Path,
            inputs=None) -> tuple[Path, Path, Path]:
    """The teacher ``net`` exported to OUT/NAME.onnx, ``count`` training inputs and the
    check inputs: ``images`` of ``data``, or ``inputs(split, n, size, seed)`` when given."""
    if inputs is None:
        def inputs(split, n, size, seed):
            return images(data, split, n, size, seed)
    teacher = out / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx.save(export(net, shape, 17), teacher)
    train, check = out / f"{name}_train.npz", out / f"{name}_check.npz"
    np.savez(train, x=inputs("train", count, shape[-1], 1))
    np.savez(check, input=inputs("test", CHECK_IMAGES, shape[-1], 2))
    return teacher, train, check


def parse_run(parser, describe) -> argparse.Namespace:
    """Both fine-tuning studies: ``--threads`` (torch) and ``--json`` (the rows) added,
    the arguments parsed, the header printed with ``describe(args)``."""
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = common.parse(parser)
    common.print_header(describe(args))
    return args


def finish(rows: list[dict], failed: int, json_path: Path | None) -> int:
    """The rows as JSON to ``json_path`` (if given), the count of runs within RATIO, and
    the exit status: 1 if any run failed."""
    if json_path:
        json_path.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"{len(rows) - failed} of {len(rows)} runs at most {RATIO} of the error before")
    return 1 if failed else 0


def error(teacher: Path, model: Path, check: Path) -> float:
    """verify --inputs: the relative error on the given inputs (the last comparison)."""
    return verify(teacher, model, inputs=check).approximation[-1].rel_error


def main() -> int:
    parser = common.parser(__doc__, out="finetune_losses")
    parser.add_argument("--models", default="yolo_tiny,unet_tiny")
    parser.add_argument("--settings", default="4,0;5,1", help="G,T pairs")
    parser.add_argument("--losses", default="mse,features")
    parser.add_argument("--images", type=int, default=4096, help="training inputs (1 epoch)")
    parser.add_argument("--data", choices=("fmnist", "random"), default="fmnist")
    defaults = FinetuneOptions()
    parser.add_argument("--batch", type=int, default=32,
                        help=f"finetune --batch (its default, {defaults.batch}, gives 32 steps "
                             "on 4096 inputs)")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="0: the optimizer's")
    parser.add_argument("--optimizer", default=defaults.optimizer)
    parser.add_argument("--refit-images", type=int, default=1024)
    args = parse_run(parser, lambda a: (
        f"inputs: {a.data}, {a.images} training / {CHECK_IMAGES} check; finetune: batch "
        f"{a.batch}, optimizer {a.optimizer}, lr {a.lr or 'auto'}, otherwise the defaults"))
    print("| model | G,T | loss | error before | error after | ratio | seconds | ok |")
    print("|---|---|---|---|---|---|---|---|")
    rows, failed = [], 0
    for name in args.models.split(","):
        net, shape = build(name)
        teacher, train, check = prepare(name, net, shape, args.data, args.images, args.out)
        for pair in args.settings.split(";"):
            G, T = (int(v) for v in pair.split(","))
            student = args.out / f"{name}_G{G}T{T}.onnx"
            optimize(teacher, student, KSEOptions(G=G, T=T),
                     lower_options=LowerOptions("compact"), overwrite=True)
            before = error(teacher, student, check)
            if args.refit_images:
                refitted = args.out / f"{name}_G{G}T{T}_refit.onnx"
                start = time.perf_counter()
                optimize(teacher, refitted, KSEOptions(G=G, T=T),
                         lower_options=LowerOptions("compact"), overwrite=True,
                         calibration=CalibrationOptions(str(train), args.refit_images),
                         refit=RefitOptions(), log=lambda line: None)
                seconds = time.perf_counter() - start
                after = error(teacher, refitted, check)
                ok = bool(after < before)
                failed += not ok
                what = f"refit {RefitOptions().refit} ({args.refit_images} images)"
                rows.append({"model": name, "G": G, "T": T, "loss": what, "before": before,
                             "after": after, "ratio": after / before,
                             "seconds": round(seconds, 1), "ok": ok})
                print(f"| {name} | {G},{T} | {what} | {before:.4f} | {after:.4f} | "
                      f"{after / before:.3f} | {seconds:.0f} | {'yes' if ok else 'NO'} |",
                      flush=True)
            for loss in [v for v in args.losses.split(",") if v]:
                tuned = args.out / f"{name}_G{G}T{T}_{loss}.onnx"
                start = time.perf_counter()
                data = training_data(train, DataOptions(), onnx.load(str(student)))
                result = finetune(student, tuned, teacher, data,
                                  FinetuneOptions(loss=loss, threads=args.threads, quiet=True,
                                                  batch=args.batch, lr=args.lr,
                                                  optimizer=args.optimizer),
                                  DataOptions(), log=lambda text: None)
                seconds = time.perf_counter() - start
                after = error(teacher, tuned, check)
                ratio = after / before
                ok = bool(np.isfinite(ratio) and ratio <= RATIO)
                failed += not ok
                rows.append({"model": name, "G": G, "T": T, "loss": loss,
                             "objective": result["loss"], "before": before, "after": after,
                             "ratio": ratio, "seconds": round(seconds, 1), "ok": ok})
                print(f"| {name} | {G},{T} | {loss} | {before:.4f} | {after:.4f} | "
                      f"{ratio:.3f} | {seconds:.0f} | {'yes' if ok else 'NO'} |", flush=True)
    return finish(rows, failed, args.json)


if __name__ == "__main__":
    sys.exit(main())
