"""Latency budget on Fashion-MNIST ResNet-20: ``optimize --target-latency R`` (float, and
INT8 against onnxruntime's INT8 of the original), refit on 1,024 unlabeled training
images, then 2 epochs of ``finetune``; side by side with Torch-Pruning rows written by
``tools/results/tp_resnet20.py`` (same trained weights, same measured latency, same fine-tune).

    python -m tools.results.latency_budget_table [--rows float:0.6,int8:0.6,float:0.8,...]
    python -m tools.results.latency_budget_table --table      # only print the table from out/

Each row is saved to ``out/latency_budget/rows/*.json`` as soon as it is done, so rows can
run in separate processes; ``--table`` prints every saved row (KSE and Torch-Pruning).
Latency: median of interleaved runs (``kse_onnx.runtime.bench``), ratio to the original
(INT8 rows: to onnxruntime's INT8 of the original), batch 1 and 64, 1 and 2 threads.
Fine-tuning: distillation + labels, lr 0.01 cosine, batch 128, pad-crop 2 and flip, 5%
held out, 2 torch threads (INT8 rows: then the quantization-aware epoch of finetune).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import onnx

from kse_onnx.api import optimize
from kse_onnx.calibration import as_images, training_data
from kse_onnx.data import FASHION_MNIST, load_data
from kse_onnx.evaluate import evaluate
from kse_onnx.graph.count import conv_counts
from kse_onnx.graph.io import save_model
from kse_onnx.options import (
    BudgetOptions,
    CalibrationOptions,
    DataOptions,
    FinetuneOptions,
    LowerOptions,
    QuantizeOptions,
)
from kse_onnx.quantize.ptq import quantize_int8
from kse_onnx.runtime.bench import interleaved_latency
from tools import common
from tools.common import ROOT

OUT = ROOT / "out" / "latency_budget"
TEACHER = ROOT / "models" / "fmnist_resnet20.onnx"
POINTS = [(1, 1), (64, 1), (1, 2), (64, 2)]


def tune_two_epochs(student: Path, tuned: Path, int8_calibration: Path | None) -> None:
    """Both methods' recovery: 2 epochs of ``finetune`` from TEACHER on the Fashion-MNIST
    training set (pad-crop and flip), INT8-static on ``int8_calibration`` when given."""
    from kse_onnx.finetune.train import finetune  # torch: only here

    tune_data = DataOptions(pad_crop=2, flip=True)
    train = training_data(str(FASHION_MNIST / "train-images-idx3-ubyte.gz"), tune_data,
                          onnx.load(str(student)))
    int8 = int8_calibration is not None
    finetune(student, tuned, TEACHER, train,
             FinetuneOptions(epochs=2, threads=2, val_fraction=0.05, quiet=True),
             tune_data, log=lambda text: None,
             quantize=QuantizeOptions("int8-static") if int8 else None,
             calibration=as_images(str(int8_calibration)) if int8 else None)

def data():
    x_train, _ = load_data(FASHION_MNIST / "train-images-idx3-ubyte.gz", DataOptions())
    x_test, y_test = load_data(FASHION_MNIST / "t10k-images-idx3-ubyte.gz", DataOptions())
    calibration = OUT / "calibration_1024.npz"
    if not calibration.exists():
        np.savez(calibration, x=x_train[:1024])
    return x_train, x_test, y_test, calibration


def int8_reference(calibration) -> Path:
    """onnxruntime's static INT8 of the original (the INT8 rows' reference)."""
    path = OUT / "original_int8.onnx"
    if not path.exists():
        model, _ = quantize_int8(onnx.load(TEACHER), "int8-static", set(),
                                 np.load(calibration)["x"])
        save_model(model, path)
    return path


def latency(reference: Path, model: Path, repeats: int = 200) -> dict[str, float]:
    """Ratio of ``model`` to ``reference`` at every point (interleaved medians)."""
    out = {}
    for batch, threads in POINTS:
        t = interleaved_latency({"reference": onnx.load(reference).SerializeToString(),
                                 "model": onnx.load(model).SerializeToString()},
                                batch, threads, repeats, budget_s=8.0)
        out[f"b{batch}t{threads}"] = round(t[1].ratio, 3)
    return out


def describe(path: Path, original_macs: int) -> dict:
    counts = conv_counts(onnx.load(path))
    return {"macs": counts["macs"], "macs_ratio": round(counts["macs"] / original_macs, 3),
            "file": round(os.path.getsize(path) / os.path.getsize(TEACHER), 3)}


def kse_row(kind: str, r: float, x_test, y_test, calibration) -> dict:
    """One KSE row: budget + refit, 2 epochs, accuracy, latency, counts."""
    int8 = kind == "int8"
    tag = f"kse_{kind}_{r:g}"
    budget = OUT / f"{tag}_refit.onnx"
    quantize = QuantizeOptions("int8-static", float_output=True) if int8 else None
    start = time.perf_counter()
    report = optimize(TEACHER, budget, lower_options=LowerOptions("compact", batches="1,64"),
                      overwrite=True, calibration=CalibrationOptions(str(calibration)),
                      quantize=quantize, budget=BudgetOptions(r), log=lambda line: None)
    seconds_optimize = time.perf_counter() - start
    (OUT / f"{tag}_report.json").write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    refit_acc = evaluate(budget, x_test, y_test).top1
    tuned = OUT / f"{tag}_2ep.onnx"
    start = time.perf_counter()
    tune_two_epochs(budget, tuned, calibration if int8 else None)
    seconds_tune = time.perf_counter() - start
    reference = int8_reference(calibration) if int8 else TEACHER
    measured = report.extra["budget"]["measured"]
    return {"method": "KSE budget", "kind": kind, "R": r, "model": str(tuned.relative_to(ROOT)),
            "search_ratios": [m["ratio"] for m in measured],
            "indicator_mass_kept": report.extra["budget"]["indicator_mass_kept"],
            "accuracy_refit": refit_acc, "accuracy": evaluate(tuned, x_test, y_test).top1,
            "latency": latency(reference, tuned), **describe(tuned, conv_counts(
                onnx.load(TEACHER))["macs"]),
            "seconds": {"optimize": round(seconds_optimize, 1), "finetune": round(seconds_tune, 1)}}


def table(rows: list[dict]) -> str:
    lines = ["| method | R | accuracy (refit) | accuracy (2 epochs) | b1 t1 | b64 t1 | b1 t2 | "
             "b64 t2 | multiply-adds | file |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda x: (x["kind"], -x["R"], x["method"])):
        lat = row["latency"]
        refit = row.get("accuracy_refit")
        lines.append(
            f"| {row['method']} ({row['kind']}) | {row['R']:g} | "
            f"{'-' if refit is None else f'{refit:.4f}'} | {row['accuracy']:.4f} | "
            f"{lat['b1t1']:.2f} | {lat['b64t1']:.2f} | {lat['b1t2']:.2f} | {lat['b64t2']:.2f} | "
            f"{row['macs_ratio']:.3f} | {row['file']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--rows", default="float:0.6,int8:0.6,float:0.8,float:0.4,int8:0.8")
    parser.add_argument("--table", action="store_true", help="only print the saved rows")
    args = parser.parse_args()
    (OUT / "rows").mkdir(parents=True, exist_ok=True)
    if not args.table:
        _, x_test, y_test, calibration = data()
        common.print_header()
        for spec in args.rows.split(","):
            kind, r = spec.split(":")
            row = kse_row(kind, float(r), x_test, y_test, calibration)
            row["load"] = round(os.getloadavg()[0], 1)
            (OUT / "rows" / f"kse_{kind}_{r}.json").write_text(json.dumps(row, indent=1) + "\n")
            print(json.dumps(row), flush=True)
    rows = [json.loads(p.read_text()) for p in sorted((OUT / "rows").glob("*.json"))]
    print(table(rows))


if __name__ == "__main__":
    main()
