"""How onnxruntime's INT8 (static QDQ, as kse_onnx/quantize writes it) Conv time falls as
kept channels fall, at real sizes: per-layer curves and whole ResNet-50s with their
bottleneck inner channels cut by hand.

    python tools/int8_curves.py [--part layers|models|all] [--batches 1,8] [--quick]

Per layer: one Conv (random weights, its real input size) quantized by
``kse_onnx.quantize.ptq.quantize_int8`` (calibrated on 4 random inputs: only time
matters here), timed with k of its c input channels kept (outputs whole) and with k of
its outputs kept (inputs whole), all counts of one layer and batch interleaved
(``kse_onnx.budget.table.interleaved_own_inputs``), 1 thread; printed as the time ratio
to the full layer beside the multiply-add ratio k / c.

Whole models: the zoo's ResNet-50 at 224x224 (random weights) with every bottleneck's
inner width (conv1 out, conv2 in/out, conv3 in) multiplied by 1, 1/2, 1/4, float and
INT8, all interleaved (``kse_onnx.runtime.bench.interleaved_latency``), 1 thread.
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kse_onnx.budget.table import conv_model, int8_conv, interleaved_own_inputs  # noqa: E402
from kse_onnx.graph.count import conv_counts  # noqa: E402
from kse_onnx.quantize.ptq import quantize_int8  # noqa: E402
from kse_onnx.runtime.bench import interleaved_latency  # noqa: E402

# (label, cin, cout, kernel, stride, H=W, batches): representative Convs of the models
LAYERS = [
    ("ResNet-50 layer1 3x3 64->64 @56", 64, 64, 3, 1, 56, (1, 8)),
    ("ResNet-50 layer2 3x3 128->128 @28", 128, 128, 3, 1, 28, (1, 8)),
    ("ResNet-50 layer3 1x1 1024->256 @14", 1024, 256, 1, 1, 14, (1, 8)),
    ("ResNet-50 layer3 1x1 256->1024 @14", 256, 1024, 1, 1, 14, (1, 8)),
    ("ResNet-50 layer4 3x3 512->512 @7", 512, 512, 3, 1, 7, (1, 8)),
    ("ResNet-56 stage1 3x3 16->16 @32", 16, 16, 3, 1, 32, (64,)),
    ("ResNet-56 stage3 3x3 64->64 @8", 64, 64, 3, 1, 8, (64,)),
]


def counts_for(c: int) -> list[int]:
    """Kept counts probed: fractions of c, and c minus small steps (SIMD blocks)."""
    fractions = {max(1, round(c * f)) for f in (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875)}
    near = {c - d for d in (1, 4, 8, 12, 16, 32, 64) if c - d > 0}
    return sorted(fractions | near | {c}, reverse=True)


def layer_curves(quick: bool) -> list[str]:
    lines = ["| layer | batch | side | kept k/c: time ratio (multiply-adds k/c) |",
             "|---|---|---|---|"]
    for label, cin, cout, k, stride, hw, batches in LAYERS[:2] if quick else LAYERS:
        attrs = {"pads": [k // 2] * 4, "strides": [stride, stride]}
        for side, size in (("in", cin), ("out", cout)):
            models = {}
            for n in counts_for(size):
                ci, co = (n, cout) if side == "in" else (cin, n)
                models[n] = int8_conv(conv_model(ci, co, [k, k], attrs, (hw, hw), 17), ci,
                                      (hw, hw))
            for batch in batches:
                ms = interleaved_own_inputs(models, batch, 1, ["CPUExecutionProvider"],
                                            budget_s=4.0, repeats=60)
                full = ms[size]
                cells = " ".join(f"{n}: {ms[n] / full:.2f} ({n / size:.2f})," for n in models)
                lines.append(f"| {label} | {batch} | {side} | full {full:.2f} ms; {cells} |")
                print(lines[-1], flush=True)
    return lines


def resnet50(inner: float) -> onnx.ModelProto:
    """The zoo's ResNet-50 (seed 0) with each bottleneck's inner width times ``inner``."""
    from torch import nn

    from models.export import export
    from models.zoo import Bottleneck, build

    model, shape = build("resnet50", seed=0)
    for module in model.modules():
        if isinstance(module, Bottleneck) and inner != 1:
            width = module.conv1.out_channels
            w = max(1, int(round(width * inner)))
            stride = module.conv2.stride
            module.conv1 = nn.Conv2d(module.conv1.in_channels, w, 1, bias=False)
            module.bn1 = nn.BatchNorm2d(w)
            module.conv2 = nn.Conv2d(w, w, 3, stride, 1, bias=False)
            module.bn2 = nn.BatchNorm2d(w)
            module.conv3 = nn.Conv2d(w, module.conv3.out_channels, 1, bias=False)
    model.eval()
    return export(model, shape, 17)


def whole_models(batches, quick: bool) -> list[str]:
    x = np.random.default_rng(0).standard_normal((4, 3, 224, 224)).astype(np.float32)
    models, macs = {}, {}
    for inner in (1.0, 0.5) if quick else (1.0, 0.5, 0.25):
        floating = resnet50(inner)
        models[f"float x{inner:g}"] = floating
        models[f"int8 x{inner:g}"] = quantize_int8(floating, "int8-static", set(), x,
                                                   share=False)[0]
        macs[inner] = conv_counts(floating)["macs"]
    order = ["int8 x1"] + [k for k in models if k != "int8 x1"]
    lines = ["| ResNet-50 224, bottleneck inner width | Conv multiply-adds | batch | "
             "float: ratio to INT8 x1 | INT8: ratio to INT8 x1 | INT8: ratio to float x1 |",
             "|---|---|---|---|---|---|"]
    for batch in batches:
        timings = {t.label: t for t in interleaved_latency(
            {k: models[k] for k in order}, batch, 1, repeats=25, budget_s=60, min_repeats=7)}
        for inner in macs:
            f, q = timings[f"float x{inner:g}"], timings[f"int8 x{inner:g}"]
            lines.append(f"| x{inner:g} | {macs[inner] / 1e9:.2f} G ({macs[inner] / macs[1.0]:.2f})"
                         f" | {batch} | {f.ratio:.2f} | {q.ratio:.2f} | "
                         f"{q.median_ms / timings['float x1'].median_ms:.2f} |")
            print(lines[-1], flush=True)
        lines.append(f"| (INT8 x1 median {timings['int8 x1'].median_ms:.1f} ms, float x1 "
                     f"{timings['float x1'].median_ms:.1f} ms at batch {batch}) | | | | | |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("layers", "models", "all"), default="all")
    parser.add_argument("--batches", default="1,8", help="whole-model batches")
    parser.add_argument("--quick", action="store_true", help="two layers, two widths")
    args = parser.parse_args()
    import onnxruntime

    start = time.time()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, "
          f"onnxruntime {onnxruntime.__version__}, 1 thread", flush=True)
    out = []
    if args.part in ("layers", "all"):
        out += layer_curves(args.quick) + [""]
    if args.part in ("models", "all"):
        out += whole_models([int(b) for b in args.batches.split(",")], args.quick)
    print("\n".join(out))
    print(f"took {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
