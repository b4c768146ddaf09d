"""--max-drop D on Fashion-MNIST ResNet-20 (or any classifier with IDX/npz test data): the
searched model against every fixed G/T of the search's ladder, each refitted on the same
images, all scored on the test set.

    python -m tools.results.max_drop_table [--model models/fmnist_resnet20.onnx] [--max-drop 1.0]
        [--images 1024] [--out max_drop.json]
    python -m tools.results.max_drop_table --dataset cifar10   # the KSE authors' ResNet-56
    python -m tools.results.max_drop_table --quantize int8-static --no-fixed   # + INT8 guard

With ``--quantize int8-static`` the search's model is quantized and the guard also
leaves the INT8 nodes float that cost the most until the drop is within D (the report's
``int8.max_drop``); the reported drop is then the INT8 model's, on the confirmation images.

With ``--dataset cifar10`` the model is the authors' ResNet-56 (exported from
``../shared/models``) and the data the CIFAR-10 JPEG copy: calibration images drawn
(seeded, without replacement) from the 50,000 training images, the 10,000 test images,
normalised as ``tools.results.cifar10_table`` does; the drop is against the original
(83.32% on the JPEG test split).

Calibration: the first ``--images`` training images, labels unused (the search holds out
the last half: a quarter selects among its candidates, a quarter confirms the choice and
gives the reported drop; the fixed settings refit on all of them, as a user tuning by
hand would). Accuracy: top-1 on the 10,000 test images with onnxruntime
(1 thread). Compact lowering, default refit (act). File sizes are bytes of the written
model. "test drop" is the original's test accuracy minus the model's, in points.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

import kse_onnx
from kse_onnx.data import FASHION_MNIST, load_data
from kse_onnx.errors import KSEError
from kse_onnx.graph.io import load_model
from kse_onnx.guard.measure import outputs
from kse_onnx.guard.search import LADDER
from kse_onnx.options import (
    DataOptions,
    GuardOptions,
    KSEOptions,
    LowerOptions,
    ProgressOptions,
    QuantizeOptions,
)
from kse_onnx.options.fields import QUANTIZE_MODES
from tools import common
from tools.common import ROOT

SHARED = ROOT.parent / "shared"


def accuracy(model, x, y) -> float:
    return float((outputs(model, x)[0].argmax(1) == y).mean())


def agreement_drop(model, x, reference) -> float:
    """100 (1 - top-1 agreement with the original's predictions ``reference``): the
    measure the guard applies to unlabeled images, here on the test images."""
    return 100 * float((outputs(model, x)[0].argmax(1) != reference).mean())


def guard_parser(doc: str, max_drop: float):
    """The arguments of the guard's result tools: the classifier, its training and test
    data, D and the calibration images."""
    parser = common.parser(doc)
    parser.add_argument("--dataset", choices=("fmnist", "cifar10"), default="fmnist",
                        help="cifar10: the authors' ResNet-56 on the CIFAR-10 JPEG copy "
                             "(--model/--train/--test ignored)")
    parser.add_argument("--model", default=str(ROOT / "models" / "fmnist_resnet20.onnx"))
    parser.add_argument("--train", default=str(FASHION_MNIST / "train-images-idx3-ubyte.gz"))
    parser.add_argument("--test", default=str(FASHION_MNIST / "t10k-images-idx3-ubyte.gz"))
    parser.add_argument("--max-drop", type=float, default=max_drop)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--validation-images", type=int, default=0,
                        help="N > 0: the N training images after the calibration ones, with "
                             "their labels, are --validation (the drop is accuracy lost)")
    return parser


def validation_file(args, x_train: np.ndarray, y_train: np.ndarray) -> str:
    """``--validation`` for the guard: a temporary .npz of the ``--validation-images``
    labelled training images after the calibration ones ("" when none), removed when the
    tool exits."""
    if not args.validation_images:
        return ""
    end = args.images + args.validation_images
    folder = tempfile.mkdtemp(prefix="kse_validation_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = Path(folder) / "validation.npz"
    np.savez(path, x=x_train[args.images:end], y=y_train[args.images:end])
    return str(path)


def classifier_data(args) -> tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(model path, training images, their labels, test images, test labels) of
    ``--dataset``: float32 images as the model takes them."""
    if args.dataset == "fmnist":
        x_train, y_train = load_data(args.train, DataOptions())
        x_test, y_test = load_data(args.test, DataOptions())
        return args.model, x_train, y_train, x_test, y_test
    from models.export import export_kse_resnet56
    from tools.results.cifar10_table import NORMALISE, prepare_data

    out = ROOT / "out" / "guard_cifar10"
    out.mkdir(parents=True, exist_ok=True)
    model = out / "resnet56.onnx"
    if not model.exists():
        export_kse_resnet56(SHARED / "models" / "kse_resnet56_cifar10.pth", model)
    files = prepare_data(SHARED / "data" / "cifar10-jpeg.tar.gz", out / "cifar", 50000, 4096, 0)
    data = DataOptions(**NORMALISE)
    x_train, y_train = load_data(files["train"], data)
    x_test, y_test = load_data(files["test"], data)
    return str(model), x_train, y_train, x_test, y_test


def searched_row(args, original, x_cal, validation, shared, test, base, reference) -> dict:
    """The ``--max-drop`` search's row: its choice, file, test scores and reported drop."""
    x_test, y_test = test
    start = time.perf_counter()
    searched = kse_onnx.optimize(original, calibration=x_cal, **shared,
                                 quantize=QuantizeOptions(args.quantize),
                                 guard=GuardOptions(max_drop=args.max_drop,
                                                    validation=validation))
    seconds = time.perf_counter() - start
    acc = accuracy(searched.model, x_test, y_test)
    chosen = searched.report.extra["max_drop_search"]["chosen"]
    reported = searched.report.extra["accuracy"]["points"]
    int8 = (searched.report.extra.get("int8") or {}).get("max_drop") or {}
    return {"model": f"--max-drop {args.max_drop:g}", "quantize": args.quantize,
            "validation_images": args.validation_images,
            "measure": searched.report.extra["accuracy"].get("measure"),
            "int8_guard": {k: v for k, v in int8.items() if k not in ("tried", "ranked")},
            "G": chosen["G"], "T": chosen["T"],
            "layers_left_whole": chosen["layers_left_whole"],
            "layer_gt": chosen["layer_gt"],
            "selection_drop": chosen["drop"]["points"],
            "file_size": searched.report.file_size_after, "test_accuracy": acc,
            "test_drop": 100 * (base - acc), "reported_drop": reported,
            "test_agreement_drop": agreement_drop(searched.model, x_test, reference),
            "candidates": len(searched.report.extra["max_drop_search"]["tried"]),
            "seconds": round(seconds, 1)}


def main() -> None:
    parser = guard_parser(__doc__, 1.0)
    parser.add_argument("--fixed", action=argparse.BooleanOptionalAction, default=True,
                        help="also build every fixed G/T of the ladder")
    parser.add_argument("--quantize", choices=QUANTIZE_MODES, default="none",
                        help="quantize the searched model (its drop guarded too)")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    model_path, x_train, y_train, x_test, y_test = classifier_data(args)
    validation = validation_file(args, x_train, y_train)
    x_cal = x_train[:args.images]
    original = load_model(model_path)
    base = accuracy(original, x_test, y_test)
    reference = outputs(original, x_test)[0].argmax(1)
    shared = dict(lower_options=LowerOptions("compact"), progress=ProgressOptions(quiet=True))
    rows = [{"model": "original", "file_size": os.path.getsize(model_path),
             "test_accuracy": base}]
    print(f"original: test accuracy {base:.4f}", flush=True)
    try:
        rows.append(searched_row(args, original, x_cal, validation, shared, (x_test, y_test),
                                 base, reference))
    except KSEError as exc:  # no setting held D (or was confirmed): the error is the result
        rows.append({"model": f"--max-drop {args.max_drop:g}", "quantize": args.quantize,
                     "validation_images": args.validation_images, "error": str(exc)})
    print(json.dumps(rows[-1]), flush=True)
    if args.fixed:
        for G, T in LADDER:
            kse = dataclasses.replace(KSEOptions(), G=G, T=T)
            fixed = kse_onnx.optimize(original, calibration=x_cal, kse=kse, **shared)
            acc = accuracy(fixed.model, x_test, y_test)
            rows.append({"model": f"fixed G={G} T={T}", "G": G, "T": T,
                         "file_size": fixed.report.file_size_after, "test_accuracy": acc,
                         "test_drop": 100 * (base - acc),
                         "test_agreement_drop": agreement_drop(fixed.model, x_test, reference)})
            print(json.dumps(rows[-1]), flush=True)
        for key, measure in (("test_drop", "on the test set"),
                             ("test_agreement_drop", "of top-1 agreement on the test set")):
            within = [r for r in rows if r["model"].startswith("fixed")
                      and r[key] <= args.max_drop]
            best = min(within, key=lambda r: r["file_size"]) if within else None
            print(f"best fixed G/T within {args.max_drop:g} point(s) {measure}: "
                  f"{best['model'] if best else 'none'}"
                  + (f", {best['file_size']} bytes" if best else ""))
    result = {"environment": common.environment(),
              "model": model_path, "calibration_images": args.images, "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
