"""The distillation's rate against the network's depth: one layer-wise refitted (``act``)
student distilled from its original at several effective rates, each judged as
``--refit distill`` judges (held-out images), then scored on test images.

    python -m tools.results.distill_rate --model resnet56 --student STUDENT.onnx \\
        [--rates 0.01,0.00357,0.002,0.001] [--epochs 32] [--test-images 2000]
    python -m tools.results.distill_rate --model fmnist_resnet20 --student STUDENT.onnx

STUDENT: a model written by ``optimize --refit act`` from the original (for example a
``tools.results.distill_study`` row with 0 epochs, ``n1024_e0_lr0*.onnx``). The
calibration images are that study's first 1,024 training images, the last 256 held out
(``refit.holdout``). ``--rates`` are the rates applied, relative to each tensor's RMS:
each is divided by the model's depth factor (``refit.distill.depth_scale``) before it is
passed as ``refit_distill_lr``, so the rows compare rates, not options. One torch thread.
"""

from __future__ import annotations

import json
import time

import numpy as np
import onnx
import torch

from kse_onnx.guard.measure import outputs
from kse_onnx.options import RefitOptions
from kse_onnx.refit.distill import depth_scale, distill
from tools import common
from tools.results.distill_study import MODELS, OUT

HELD = 256


def main() -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--model", choices=sorted(MODELS), default="resnet56")
    parser.add_argument("--student", required=True)
    parser.add_argument("--rates", default="0.01,0.00357,0.002,0.001")
    parser.add_argument("--epochs", type=int, default=32)
    parser.add_argument("--test-images", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out_dir = OUT if args.model == "fmnist_resnet20" else OUT / args.model
    out_dir.mkdir(parents=True, exist_ok=True)
    teacher_path, x_train, x_test, y_test, _ = MODELS[args.model][0](out_dir)
    teacher, student = onnx.load(teacher_path), onnx.load(args.student)
    x_cal = np.ascontiguousarray(x_train[:1024])
    x_test, y_test = x_test[:args.test_images], y_test[:args.test_images]
    reference = outputs(teacher, x_test)[0].argmax(1)

    def scores(model) -> dict:
        predicted = outputs(model, x_test)[0].argmax(1)
        return {"test_top1": float((predicted == y_test).mean()),
                "test_agreement": float((predicted == reference).mean())}

    depth, scale = depth_scale(teacher)
    common.print_header(f"{args.model}, depth {depth} (factor {scale:.3f}), {args.epochs} "
                        f"epochs, {len(x_test)} test images")
    print(json.dumps({"original": scores(teacher), "act": scores(student)}), flush=True)
    for rate in [float(v) for v in args.rates.split(",")]:
        options = RefitOptions("distill", refit_distill_epochs=args.epochs,
                               refit_distill_lr=rate / scale)
        start = time.perf_counter()
        model, report = distill(student, teacher, x_cal, HELD, options, lambda line: None,
                                quiet=True)
        print(json.dumps({"rate": rate, "epochs": args.epochs, **scores(model),
                          "kept": report["kept"], "held_before": report["held_before"],
                          "held_after": report["held_after"],
                          "agreement_before": report.get("agreement_before"),
                          "agreement_after": report.get("agreement_after"),
                          "seconds": round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == "__main__":
    main()
