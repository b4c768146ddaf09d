"""Post-training refit on Fashion-MNIST: accuracy and seconds of every refit mode, of
refit + fine-tuning, of fine-tuning alone, and of onnxruntime's INT8 with the same images.

    apt-get install dataset-fashion-mnist
    python -m tools.scripts.train_fmnist_resnet20                      # models/fmnist_resnet20.onnx
    python -m tools.scripts.train_fmnist_resnet20 --arch vgg --epochs 6 --out models/fmnist_vgg.onnx
    python -m tools.results.refit_table [--models fmnist_resnet20,fmnist_vgg] [--no-finetune]

Calibration images are the first N of the training split, labels unused; accuracy is on
the 10,000 test images with onnxruntime. Compression uses the compact lowering (the
refit does not depend on the lowering). Fine-tuning: distillation + labels, lr 0.01
cosine, batch 128, pad-crop 2 and flip, 5% held out, 2 torch threads.
"""

from __future__ import annotations

import json
import time

import numpy as np
import onnx

from kse_onnx import options as opts
from kse_onnx.api import optimize
from kse_onnx.data import FASHION_MNIST, load_data
from kse_onnx.evaluate import evaluate
from kse_onnx.finetune.train import finetune
from kse_onnx.graph.io import save_model
from kse_onnx.quantize.ptq import quantize_int8
from tools import common
from tools.common import ROOT

MODES = ("ls", "act", "block")
DEFAULT_MODE = opts.RefitOptions().refit


def timed(fn, *args, **kwargs):
    """(result of ``fn``, seconds it took)."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    parser = common.parser(__doc__, out="refit_table")
    parser.add_argument("--models", default="fmnist_resnet20,fmnist_vgg")
    parser.add_argument("--images", default="256,1024,4096",
                        help="calibration sizes for the default mode (1024: every mode)")
    parser.add_argument("--settings", default="4,0;5,1", help="G,T pairs")
    parser.add_argument("--no-finetune", action="store_true")
    parser.add_argument("--modes", default=",".join(MODES), help="refit modes, comma-separated")
    parser.add_argument("--positions", type=int, default=opts.RefitOptions().refit_positions,
                        help="--refit-positions of every refit (0 = all)")
    args = common.parse(parser)
    train = FASHION_MNIST / "train-images-idx3-ubyte.gz"
    x_train, _ = load_data(train, opts.DataOptions())
    x_test, y_test = load_data(FASHION_MNIST / "t10k-images-idx3-ubyte.gz", opts.DataOptions())
    sizes = [int(v) for v in args.images.split(",")]
    calibration = {}
    for n in sorted(set(sizes) | {1024}):
        calibration[n] = args.out / f"calibration_{n}.npz"
        np.savez(calibration[n], x=x_train[:n])
    common.print_header(
        f"default refit mode: {DEFAULT_MODE}; refit positions: {args.positions}")
    results = []

    def row(model, setting, what, path, seconds, images=""):
        acc = evaluate(path, x_test, y_test).top1
        results.append({"model": model, "G,T": setting, "what": what, "images": images,
                        "accuracy": acc, "seconds": None if seconds is None else
                        round(seconds, 1)})
        shown = "-" if seconds is None else f"{seconds:.1f}"
        print(f"| {model} | {setting} | {what} | {images} | {acc:.4f} | {shown} |", flush=True)

    print("| model | G,T | model / method | calibration images | test accuracy | seconds |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        teacher = ROOT / "models" / f"{name}.onnx"
        row(name, "-", "original", teacher, None)
        int8 = args.out / f"{name}_int8.onnx"
        (model, _), seconds = timed(quantize_int8, onnx.load(teacher), "int8-static", set(),
                                    x_train[:1024])
        save_model(model, int8)
        row(name, "-", "onnxruntime INT8 (static, QDQ)", int8, seconds, 1024)
        for G, T in (tuple(int(v) for v in pair.split(",")) for pair in
                     args.settings.split(";")):
            setting, kse = f"{G},{T}", opts.KSEOptions(G=G, T=T)
            lower = opts.LowerOptions("compact")
            plain = args.out / f"{name}_G{G}T{T}.onnx"
            _, seconds = timed(optimize, teacher, plain, kse, lower_options=lower,
                               overwrite=True)
            row(name, setting, "compressed, no refit", plain, seconds)
            refitted = {}
            for mode in args.modes.split(","):
                for n in (sizes if mode == DEFAULT_MODE else [1024]):
                    out = args.out / f"{name}_G{G}T{T}_{mode}_{n}.onnx"
                    report = optimize(teacher, out, kse, lower_options=lower, overwrite=True,
                                      calibration=opts.CalibrationOptions(str(calibration[n]), n),
                                      refit=opts.RefitOptions(mode, refit_positions=args.positions),
                                      log=lambda line: None)
                    refitted[mode, n] = out
                    row(name, setting, f"refit {mode}", out, report.extra["refit"]["seconds"],
                        n)
            out = args.out / f"{name}_G{G}T{T}_{DEFAULT_MODE}_int8.onnx"
            _, seconds = timed(optimize, teacher, out, kse, lower_options=lower,
                               overwrite=True,
                               calibration=opts.CalibrationOptions(str(calibration[1024])),
                               quantize=opts.QuantizeOptions("int8-static"), log=lambda line: None)
            row(name, setting, f"refit {DEFAULT_MODE} + INT8, one command", out, seconds, 1024)
            if args.no_finetune:
                continue
            for start, epochs, what in ((refitted[DEFAULT_MODE, 1024], 1,
                                         f"refit {DEFAULT_MODE} + 1 epoch"),
                                        (plain, 1, "1 epoch, no refit"),
                                        (plain, 2, "2 epochs, no refit")):
                tuned = args.out / f"{start.stem}_{epochs}ep.onnx"
                tune = opts.FinetuneOptions(epochs=epochs, threads=2, val_fraction=0.05)
                _, seconds = timed(finetune, start, tuned, teacher, train, tune,
                                   opts.DataOptions(pad_crop=2, flip=True), log=lambda text: None)
                row(name, setting, what, tuned, seconds, "60k (labels)")
    (args.out / "refit_table.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
