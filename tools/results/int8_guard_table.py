"""INT8 of a YOLOv8-style detector (the zoo's yolov8_tiny): onnxruntime's default static
INT8 flattens the class scores, the guard's per-slice drop sees it, and ``--quantize
int8-static --max-drop D`` leaves the worst nodes float until the drop is within D.

    python -m tools.results.int8_guard_table [--max-drop 15,20] [--int8-only 5] [--images 256]

Rows: the float original; onnxruntime's quantize_static with its defaults; kse-onnx's
int8-static (first conv float); ``optimize --skip '*' --quantize int8-static --max-drop``
at ``--int8-only`` (no Conv compressed: the INT8 guard alone); and ``optimize
--quantize int8-static --max-drop D`` for each D of ``--max-drop`` (KSE searched in
float first, compact lowering, default refit).

yolov8_tiny (seed 0): 3x64x64 input, boxes in 640-frame pixels and 4 sigmoid class
scores joined by one Concat, output (batch, 8, 320). Images: crops of scikit-learn's
sample photographs; ``--images`` calibration images (seed 1; the guard holds out the last
quarter from the refit and the INT8 calibration and measures on it), and as many unseen
ones (seed 2) that nothing was fitted or calibrated on. A detection is an (image, anchor,
class) whose float score is above 0.25 (ultralytics' default confidence); "kept" counts
those the INT8 model also scores above 0.25. Drop: kse_onnx.guard.measure (for this
output, 100 x the larger of the whole and the per-slice relative error).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx

from kse_onnx.guard.measure import drop, outputs
from kse_onnx.options import (
    GuardOptions,
    LowerOptions,
    ProgressOptions,
    QuantizeOptions,
    SelectOptions,
)
from tools import common
from tools.graphs import photo_batch

CONFIDENCE = 0.25


def onnxruntime_default(model: onnx.ModelProto, calibration: np.ndarray) -> onnx.ModelProto:
    """``quantize_static`` with its defaults (QDQ, uint8 activations, int8 weights per
    tensor, MinMax), calibrated on ``calibration``."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"input": calibration[i:i + 32]}
                               for i in range(0, len(calibration), 32)])

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        onnx.save(model, src)
        quantize_static(src, out, Reader())
        return onnx.load(out)


def row(label: str, model: onnx.ModelProto, original: onnx.ModelProto, x: np.ndarray,
        extra: str = "") -> str:
    ref, got = outputs(original, x), outputs(model, x)
    found = ref[0][:, 4:] > CONFIDENCE
    kept = int(np.sum(found & (got[0][:, 4:] > CONFIDENCE)))
    measured = drop(ref, got, source="unseen images")
    return (f"| {label} | {kept} of {int(found.sum())} | {measured.rel_error:.4f} | "
            f"{measured.slice_error:.4f} | {measured.points:.2f} | "
            f"{float(got[0][:, 4:].max()):.3f} | {model.ByteSize():,} | {extra} |")


def main() -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--max-drop", default="15,20", help="D values, comma-separated")
    parser.add_argument("--int8-only", type=float, default=5.0,
                        help="D of the row without KSE")
    parser.add_argument("--images", type=int, default=256)
    args = common.parse(parser)
    import torch

    torch.set_num_threads(1)
    from kse_onnx.quantize.ptq import quantize_int8
    from models.export import export
    from models.zoo import build

    warnings.simplefilter("ignore")
    net, shape = build("yolov8_tiny")
    original = export(net, shape)
    calibration = photo_batch((args.images, *shape), seed=1)
    unseen = photo_batch((args.images, *shape), seed=2)
    fit = calibration[:args.images - args.images // 4]
    common.print_header(f"yolov8_tiny 3x64x64, {args.images} calibration images "
                        f"({len(fit)} fit/calibrate, {args.images // 4} held out), "
                        f"{len(unseen)} unseen")
    print("| model | detections kept (unseen) | relative error | per-slice error | drop "
          "(points) | largest INT8 score | file size (bytes) | notes |")
    print("|---|---|---|---|---|---|---|---|")
    print(row("float original", original, original, unseen))
    print(row("onnxruntime quantize_static, defaults", onnxruntime_default(original, fit),
              original, unseen))
    plain, _ = quantize_int8(original, "int8-static", set(), fit, share=False)
    print(row("kse-onnx int8-static of the original (first conv float)", plain, original,
              unseen))
    print(guarded_row(original, calibration, unseen, args.int8_only, "*"))
    for limit in args.max_drop.split(","):
        print(guarded_row(original, calibration, unseen, float(limit)))


def guarded_row(original, calibration, unseen, limit: float, skip: str = "") -> str:
    from kse_onnx.api import optimize_model

    built = optimize_model(original, calibration=calibration,
                           quantize=QuantizeOptions(quantize="int8-static"),
                           lower_options=LowerOptions(lowering="compact"),
                           select=SelectOptions(skip=(skip,) if skip else ()),
                           guard=GuardOptions(max_drop=limit),
                           progress=ProgressOptions(quiet=True))
    guard = built.report.extra["int8"]["max_drop"]
    first = guard["tried"][0]["drop"]
    floats = built.report.extra["int8"].get("float_nodes") or []
    worst = ", ".join(f"{n} {e:.3f}" for n, e in guard["ranked"][:3])
    label = f"optimize {'--skip * ' if skip else ''}--quantize int8-static --max-drop {limit:g}"
    return row(label, built.model, original, unseen,
               f"float model's drop {guard['float_model_drop']['points']:.2f}, INT8 "
               f"{first['points']:.2f} before leaving nodes float, {guard['drop']['points']:.2f} "
               f"after (held-out images); {len(floats)} of {len(guard['ranked'])} nodes left "
               f"float; worst alone: {worst}; {len(guard['ranked'])} probes, "
               f"{len(guard['tried'])} quantizations")

if __name__ == "__main__":
    main()
