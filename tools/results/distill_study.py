"""Post-training recovery after a latency budget: the refit alone (``--refit act``) against
``--refit distill`` at several epoch counts, learning rates and calibration sizes, on the
Fashion-MNIST ResNet-20 (10,000 test images, labels used only to score), or the KSE
authors' CIFAR-10 ResNet-56 (``--model resnet56``: budget timed at batch 64, the 10,000
images of the JPEG test split, ../shared/data/README.md; calibration drawn from train/).

    python -m tools.results.distill_study [--model fmnist_resnet20|resnet56] [--r 0.6]
        [--images 256,1024,4096] [--epochs 0,2,4,8,16] [--lr 1e-4,3e-4,1e-3]
        [--importance indicator|sensitivity] [--tag NAME] [--choices EARLIER.onnx]

The budget is searched once (float, ``--target-latency R``, batches 1 and 64, 1 thread;
``--importance``: ``--budget-importance``) and every row replays its kept channels
(``--choices``), so rows differ only in the refit; ``--choices EARLIER.onnx`` replays an
earlier run's kept channels instead of searching. ``epochs 0`` is ``--refit act``.
Each row also gives the search's measured ratio of the chosen kept set (``search``) and
the written model's latency against the original afterwards (interleaved medians, 1
thread, at batch 1 for Fashion-MNIST and 64 for ResNet-56: ``bench``). Rows go to
``out/distill_study/rows.jsonl`` as they finish; the table is printed at the end with
the machine and the date.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from kse_onnx.api import optimize
from kse_onnx.data import FASHION_MNIST, load_data
from kse_onnx.evaluate import evaluate
from kse_onnx.options import (
    BUDGET_IMPORTANCES,
    BudgetOptions,
    CalibrationOptions,
    DataOptions,
    LowerOptions,
    ProgressOptions,
    RefitOptions,
)
from tools import common
from tools.common import ROOT

OUT = ROOT / "out" / "distill_study"
SHARED = ROOT.parent / "shared"


def fmnist_resnet20(out: Path):
    """(teacher, training images, test images, test labels, data options)."""
    x_train, _ = load_data(FASHION_MNIST / "train-images-idx3-ubyte.gz", DataOptions())
    x_test, y_test = load_data(FASHION_MNIST / "t10k-images-idx3-ubyte.gz", DataOptions())
    return ROOT / "models" / "fmnist_resnet20.onnx", x_train, x_test, y_test, DataOptions()


def resnet56(out: Path):
    """The KSE authors' ResNet-56 exported once; CIFAR-10 JPEG train/test, uint8 images
    normalised on reading (the graph takes the normalised input)."""
    from models.export import export_kse_resnet56
    from tools.results.cifar10_table import NORMALISE, prepare_data  # the CIFAR table's data

    teacher = export_kse_resnet56(SHARED / "models" / "kse_resnet56_cifar10.pth",
                                  out / "resnet56.onnx")
    files = prepare_data(SHARED / "data" / "cifar10-jpeg.tar.gz", out / "cifar", 50000, 4096, 0)
    data = DataOptions(**NORMALISE)
    x_train, _ = load_data(files["train"], data)
    x_test, y_test = load_data(files["test"], data)
    return teacher, x_train, x_test, y_test, data


MODELS = {"fmnist_resnet20": (fmnist_resnet20, "1,64", 1), "resnet56": (resnet56, "64", 64)}


def chosen_ratio(report: dict) -> dict:
    """The search's measured ratios of the kept set it chose (a round or a refinement)."""
    kept = report["kept_counts"]
    return next((r["ratio"] for r in report["measured"] if r["kept_counts"] == kept),
                report["smallest_model"]["ratio"])  # no round beat the smallest model


def bench(teacher, model, batch: int) -> float:
    """The written model's latency over the original's, interleaved, 1 thread."""
    import onnx

    timings = common.ratios({"original": onnx.load(teacher), "pruned": onnx.load(model)},
                            batch, 1, repeats=50, budget_s=20.0)
    return round(timings["pruned"], 4)


def main() -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--model", choices=sorted(MODELS), default="fmnist_resnet20")
    parser.add_argument("--r", type=float, default=0.6)
    parser.add_argument("--images", default="1024")
    parser.add_argument("--epochs", default="0,2,4,8")
    parser.add_argument("--lr", default="1e-4,3e-4,1e-3")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=RefitOptions().refit_distill_batch)
    parser.add_argument("--mixup", type=int, choices=(0, 1), default=1)
    parser.add_argument("--tag", default="", help="added to the output names")
    parser.add_argument("--importance", default="indicator", choices=BUDGET_IMPORTANCES,
                        help="--budget-importance of the search")
    parser.add_argument("--choices", type=Path, default=None,
                        help="replay this earlier budget model's kept channels (its JSON "
                             "report beside it) instead of searching")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out_dir = OUT if args.model == "fmnist_resnet20" else OUT / args.model
    out_dir.mkdir(parents=True, exist_ok=True)
    load, batches, bench_batch = MODELS[args.model]
    teacher, x_train, x_test, y_test, data = load(out_dir)
    original = evaluate(teacher, x_test, y_test).top1
    quiet = ProgressOptions(quiet=True)
    budget = BudgetOptions(args.r, budget_importance=args.importance)
    searched = out_dir / f"budget_{args.r:g}{args.tag}.onnx"
    found = out_dir / f"budget_{args.r:g}{args.tag}.json"
    calibration = out_dir / "calibration_1024.npz"
    np.savez(calibration, x=x_train[:1024])
    if args.choices:  # an earlier search's model and its report's budget section
        searched, found = args.choices, out_dir / f"budget_{args.r:g}{args.tag}.json"
        found.write_text(json.dumps(json.loads(searched.with_suffix(".json").read_text())[
            "budget"] | {"table": None}))
    if not searched.exists():
        start = time.perf_counter()
        report = optimize(teacher, searched, calibration=CalibrationOptions(str(calibration)),
                          lower_options=LowerOptions("compact", batches=batches), budget=budget,
                          refit=RefitOptions("act"), progress=quiet, log=lambda line: None)
        found.write_text(json.dumps({**report.extra["budget"], "table": None,
                                     "seconds": round(time.perf_counter() - start, 1)}))
    searched_report = json.loads(found.read_text())
    search_ratio = chosen_ratio(searched_report)
    replay = LowerOptions("compact", batches=batches, choices=str(searched))
    rows = []
    for n in [int(v) for v in args.images.split(",")]:
        calibration = out_dir / f"calibration_{n}.npz"
        np.savez(calibration, x=x_train[:n])
        for epochs in [int(v) for v in args.epochs.split(",")]:
            for lr in [float(v) for v in args.lr.split(",")] if epochs else [0.0]:
                mode = RefitOptions("distill", refit_distill_epochs=epochs,
                                    refit_distill_lr=lr, refit_distill_batch=args.batch,
                                    refit_distill_mixup=bool(args.mixup)
                                    ) if epochs else RefitOptions("act")
                out = out_dir / f"n{n}_e{epochs}_lr{lr:g}{args.tag}.onnx"
                start = time.perf_counter()
                report = optimize(teacher, out, lower_options=replay, overwrite=True,
                                  calibration=CalibrationOptions(str(calibration),
                                                                 calibration_images=n),
                                  budget=budget, refit=mode, progress=quiet,
                                  log=lambda line: None)
                seconds = time.perf_counter() - start
                distilled = report.extra["refit"].get("distill") or {}
                row = {"images": n, "epochs": epochs, "lr": lr, "batch": args.batch,
                       "mixup": args.mixup,
                       "accuracy": evaluate(out, x_test, y_test).top1,
                       "original": original, "seconds": round(seconds, 1),
                       "distill_seconds": distilled.get("seconds"),
                       "kept": distilled.get("kept"),
                       "held_before": distilled.get("held_before"),
                       "held_after": distilled.get("held_after"),
                       "importance": args.importance, "tag": args.tag,
                       "search": search_ratio, "bench": bench(teacher, out, bench_batch),
                       "mass": searched_report["indicator_mass_kept"]}
                rows.append(row)
                with open(out_dir / "rows.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    common.print_header(
        f"torch threads {args.threads}, {args.model}, R = {args.r:g}, "
        f"original {original:.4f}")
    print("| importance | images | epochs | lr | accuracy | drop | search ratio | bench "
          f"b{bench_batch} | seconds (distill) | kept |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        search = " / ".join(f"{k} {v:.3f}" for k, v in r["search"].items())
        print(f"| {r['importance']} | {r['images']} | {r['epochs']} | {r['lr']:g} | "
              f"{r['accuracy']:.4f} | {100 * (r['original'] - r['accuracy']):.2f} | {search} "
              f"| {r['bench']:.3f} | {r['seconds']} ({r['distill_seconds']}) | {r['kept']} |")


if __name__ == "__main__":
    main()
