"""The README's KSE + INT8 table, measured side by side in one run.

    apt-get install dataset-fashion-mnist
    python -m tools.results.int8_table [--models fmnist,resnet56] [--epochs 2] [--budget 15]
        [--auto-batches 1 --auto-threads 1] [--out zoo/int8]

Rows per model: the original; onnxruntime's static INT8 of the original (its quantizer
as a user runs it: QDQ, per-channel weights, uint8 activations, 256 calibration
images); KSE at G=4,T=0 and G=5,T=1 (``auto`` lowering; Fashion-MNIST: fine-tuned
``--epochs`` epochs by distillation + labels); the same + INT8 (``--quantize
int8-static``). Accuracy on the 10k Fashion-MNIST test images; for the authors'
ResNet-56 (no CIFAR-10 offline) top-1 agreement with the original on 512 crops of
scikit-learn's sample photographs, normalised as CIFAR-10. Latency: all rows of a model
interleaved, median of the repeats that fit in ``--budget`` seconds per (batch,
threads), as a ratio to the original.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx

from kse_onnx import options as opts
from kse_onnx.api import optimize
from kse_onnx.calibration import training_data
from kse_onnx.data import FASHION_MNIST, load_data
from kse_onnx.evaluate import logits
from kse_onnx.graph.count import conv_counts
from kse_onnx.graph.io import save_model
from kse_onnx.quantize.apply import quantize_output
from kse_onnx.quantize.inspect import integer_convs
from kse_onnx.quantize.ptq import quantize_int8
from kse_onnx.runtime.bench import interleaved_latency
from tools import common
from tools.common import ROOT

SETTINGS = ((4, 0), (5, 1))
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def photo_crops(count: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Random crops of scikit-learn's two sample photographs, CIFAR-10 normalised."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = load_sample_images().images
    out = np.empty((count, 3, size, size), np.float32)
    for i in range(count):
        img = photos[i % 2]
        step = int(rng.integers(1, 8))
        y = rng.integers(0, img.shape[0] - step * size)
        x = rng.integers(0, img.shape[1] - step * size)
        crop = img[y:y + step * size:step, x:x + step * size:step].astype(np.float32) / 255
        out[i] = ((crop - CIFAR_MEAN) / CIFAR_STD).transpose(2, 0, 1)
    return out


def plain_int8(src: Path, dst: Path, calibration: np.ndarray) -> None:
    """onnxruntime's static INT8 of a float model, as its quantizer gives it."""
    model, _ = quantize_int8(onnx.load(src), "int8-static", set(), calibration)
    save_model(model, dst)


def build_rows(name: str, args) -> tuple[dict, dict, np.ndarray, np.ndarray | None, Path]:
    """Paths of every row's model and notes; test inputs, labels; the original."""
    out = args.out
    if name == "fmnist":
        original = ROOT / "models" / "fmnist_resnet20.onnx"
        train = FASHION_MNIST / "train-images-idx3-ubyte.gz"
        x_test, y_test = load_data(FASHION_MNIST / "t10k-images-idx3-ubyte.gz", opts.DataOptions())
        calibration = load_data(train, opts.DataOptions())[0][:256]
    else:
        from models.export import export_kse_resnet56

        original = export_kse_resnet56(args.weights, out / "kse_resnet56_op17.onnx")
        train, x_test, y_test = None, photo_crops(512, seed=1), None
        calibration = photo_crops(256, seed=0)
    rows, notes = {"original": original}, {"original": ""}
    rows["onnxruntime INT8"] = out / f"{name}_ort_int8.onnx"
    start = time.perf_counter()
    plain_int8(original, rows["onnxruntime INT8"], calibration)
    kernels = integer_convs(onnx.load(rows["onnxruntime INT8"]))
    notes["onnxruntime INT8"] = (f"{sum(k.integer for k in kernels)}/{len(kernels)} integer "
                                 f"convs, {time.perf_counter() - start:.0f} s")
    cal_path = out / f"{name}_calibration.npz"
    np.savez(cal_path, x=calibration)
    for G, T in SETTINGS:
        tag = f"KSE G={G},T={T}"
        kse = out / f"{name}_G{G}T{T}.onnx"
        # the README's INT8 flow: layer forms chosen by timing the INT8 builds, float
        # output to fine-tune, then finetune --quantize (here: quantize_output)
        optimize(original, kse, opts.KSEOptions(G=G, T=T), overwrite=True,
                 lower_options=opts.LowerOptions(batches=args.auto_batches,
                                            threads=args.auto_threads),
                 calibration=opts.CalibrationOptions(str(cal_path), calibration_images=256),
                 refit=opts.RefitOptions("none"),
                 quantize=opts.QuantizeOptions("int8-static", float_output=True))
        if train is not None:
            from kse_onnx.finetune.train import finetune

            tuned = out / f"{name}_G{G}T{T}_tuned.onnx"
            start = time.perf_counter()
            data = opts.DataOptions(pad_crop=2, flip=True)
            finetune(kse, tuned, original, training_data(train, data, onnx.load(str(kse))),
                     opts.FinetuneOptions(epochs=args.epochs, threads=2, val_fraction=0.05),
                     data, log=lambda text: None)
            notes[tag] = f"fine-tuned {args.epochs} epochs, {time.perf_counter() - start:.0f} s"
            kse = tuned
        else:
            notes[tag] = "not fine-tuned (no CIFAR-10 offline)"
        rows[tag] = kse
        int8_path = out / f"{name}_G{G}T{T}_int8.onnx"
        int8, report = quantize_output(onnx.load(kse), opts.QuantizeOptions("int8-static"),
                                       calibration)
        save_model(int8, int8_path)
        rows[tag + " + INT8"] = int8_path
        notes[tag + " + INT8"] = (f"{report['integer_convs']}/{report['convs']} integer convs, "
                                  f"{report['shared_int8_weights']} shared int8 weights")
    return rows, notes, x_test, y_test, original


def main() -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--models", default="fmnist,resnet56")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--budget", type=float, default=15.0)
    parser.add_argument("--auto-batches", default="1",
                        help="batches the auto lowering times the INT8 builds at")
    parser.add_argument("--auto-threads", default="1",
                        help="threads the auto lowering times the INT8 builds with")
    parser.add_argument("--weights", type=Path,
                        default=common.KSE_RESNET56)
    parser.add_argument("--out", type=Path, default=ROOT / "zoo" / "int8")
    args = common.parse(parser)
    batches = [int(b) for b in args.batches.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    common.print_header("onnxruntime CPU")
    cols = [f"b{b} t{t}" for t in threads for b in batches]
    for name in args.models.split(","):
        rows, notes, x_test, y_test, original = build_rows(name, args)
        ref = logits(original, x_test)
        size0 = original.stat().st_size
        before = conv_counts(onnx.load(original))
        models = {label: path.read_bytes() for label, path in rows.items()}
        ratios = {}
        for t in threads:
            for b in batches:
                timings = interleaved_latency(models, b, t, repeats=300,
                                              budget_s=args.budget, min_repeats=10)
                ratios[f"b{b} t{t}"] = {x.label: x.ratio for x in timings}
        quality = "test accuracy" if y_test is not None else "top-1 agreement"
        print(f"\n## {name}\n")
        print(f"| model | file | conv MACs (graph) | {quality} | " + " | ".join(
            f"latency {c}" for c in cols) + " | notes |")
        print("|" + "---|" * (5 + len(cols)))
        for label, path in rows.items():
            out = logits(path, x_test)
            score = ((out.argmax(1) == y_test).mean() if y_test is not None
                     else (out.argmax(1) == ref.argmax(1)).mean())
            counts = conv_counts(onnx.load(path))
            macs = "-" if counts["macs"] is None else f"{counts['macs'] / before['macs']:.3f}"
            cells = [label, f"{path.stat().st_size / size0:.3f}", macs, f"{score:.4f}"]
            cells += [f"{ratios[c][label]:.2f}" for c in cols] + [notes[label]]
            print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
