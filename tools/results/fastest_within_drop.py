"""The fastest model within D points of the Fashion-MNIST ResNet-20 (or any classifier
with IDX/npz test data): ``optimize --max-drop D --minimize latency``, then scored on the
test set and timed side by side with the original.

    python -m tools.results.fastest_within_drop [--model models/fmnist_resnet20.onnx]
        [--max-drop 1.5] [--images 1024] [--validation-images 0] [--budget-blocks]
        [--out fastest.json]
    python -m tools.results.fastest_within_drop --dataset cifar10   # the authors' ResNet-56

Calibration: the first ``--images`` training images, labels unused. Without
``--validation-images`` the guard holds out the last half of them (a quarter selects, a
quarter confirms) and the drop is by top-1 agreement; with N, the N training images after
the calibration ones, with their labels, are ``--validation`` (half select, half confirm)
and the drop is accuracy lost, the test set's own measure. Compact lowering, default refit
(act), the budget timed at batch 1 and 64, 1 thread (``--budget-blocks``: whole residual
blocks removed first, docs/budget.md). Accuracy: top-1 on the 10,000 test
images (onnxruntime, 1 thread). Latency: ratio of the written model to the original,
medians of interleaved runs at batch 1 and 64, 1 thread (``tools.common.ratios``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import kse_onnx
from kse_onnx.errors import KSEError
from kse_onnx.graph.count import conv_counts
from kse_onnx.graph.io import load_model
from kse_onnx.guard.measure import outputs
from kse_onnx.options import BudgetOptions, GuardOptions, LowerOptions, RefitOptions
from kse_onnx.options.fields import REFIT_MODES
from tools import common
from tools.results.max_drop_table import (
    accuracy,
    agreement_drop,
    classifier_data,
    guard_parser,
    validation_file,
)


def main() -> None:
    parser = guard_parser(__doc__, 1.5)
    parser.add_argument("--refit", choices=REFIT_MODES, default=RefitOptions().refit,
                        help="the refit of every candidate (distill: slower, stronger)")
    parser.add_argument("--budget-blocks", action="store_true",
                        help="the budget removes whole residual blocks first")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    common.print_header()
    model_path, x_train, y_train, x_test, y_test = classifier_data(args)
    x_cal = x_train[:args.images]
    validation = validation_file(args, x_train, y_train)
    original = load_model(model_path)
    base = accuracy(original, x_test, y_test)
    reference = outputs(original, x_test)[0].argmax(1)
    start = time.perf_counter()
    try:
        fastest = kse_onnx.optimize(original, calibration=x_cal, refit=RefitOptions(args.refit),
                                    budget=BudgetOptions(budget_blocks=args.budget_blocks),
                                    lower_options=LowerOptions("compact", batches="1,64"),
                                    guard=GuardOptions(max_drop=args.max_drop,
                                                       minimize="latency",
                                                       validation=validation))
    except KSEError as exc:  # no R holds the drop: the one-line error is the result
        print(f"no model within {args.max_drop:g}: {exc}", flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps({
                "environment": common.environment(), "model": model_path,
                "max_drop": args.max_drop, "validation_images": args.validation_images,
                "error": str(exc)}, indent=2) + "\n")
        return
    seconds = time.perf_counter() - start
    search = fastest.report.extra["max_drop_search"]
    acc = accuracy(fastest.model, x_test, y_test)
    timed = {f"b{batch}t1": round(common.ratios(
        {"original": original.SerializeToString(),
         "fastest": fastest.model.SerializeToString()}, batch, 1, repeats=200,
        budget_s=8.0)["fastest"], 3) for batch in (1, 64)}
    macs = conv_counts(fastest.model)["macs"] / conv_counts(original)["macs"]
    row = {"max_drop": args.max_drop, "refit": args.refit, "budget_blocks": args.budget_blocks,
           "measure": fastest.report.extra["accuracy"]["measure"],
           "validation_images": args.validation_images, "R": search["chosen"]["R"],
           "search_ratio": search["chosen"]["ratio"], "latency_ratio": timed,
           "macs_ratio": round(macs, 3), "file_size": fastest.report.file_size_after,
           "original_file_size": os.path.getsize(model_path),
           "test_accuracy_original": base, "test_accuracy": acc,
           "test_drop": 100 * (base - acc),
           "test_agreement_drop": agreement_drop(fastest.model, x_test, reference),
           "reported_drop": fastest.report.extra["accuracy"]["points"],
           "tried": [{k: t[k] for k in ("R", "ratio")} | {"drop": (t["drop"] or {}).get(
               "points")} for t in search["tried"]],
           "seconds": round(seconds, 1)}
    print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"environment": common.environment(),
                                              "model": model_path, "row": row}, indent=2) + "\n")


if __name__ == "__main__":
    main()
