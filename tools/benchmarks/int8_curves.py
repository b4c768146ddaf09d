"""How onnxruntime's INT8 (static QDQ, as kse_onnx/quantize writes it) Conv time falls as
kept channels fall, at real sizes: per-layer curves and whole ResNet-50s with their
bottleneck inner channels cut by hand.

    python -m tools.benchmarks.int8_curves [--part layers|models|resnet56|all] [--batches 1,8]
        [--layers MobileNetV2] [--quick]

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

import time
from pathlib import Path

import numpy as np
import onnx

from kse_onnx.budget.table import conv_model, int8_conv, interleaved_own_inputs
from kse_onnx.graph.count import conv_counts
from kse_onnx.quantize.ptq import quantize_int8
from kse_onnx.runtime.bench import interleaved_latency
from tools import common

# (label, cin, cout, kernel, stride, H=W, batches): representative Convs of the models
LAYERS = [
    ("ResNet-50 layer1 3x3 64->64 @56", 64, 64, 3, 1, 56, (1, 8)),
    ("ResNet-50 layer2 3x3 128->128 @28", 128, 128, 3, 1, 28, (1, 8)),
    ("ResNet-50 layer3 1x1 1024->256 @14", 1024, 256, 1, 1, 14, (1, 8)),
    ("ResNet-50 layer3 1x1 256->1024 @14", 256, 1024, 1, 1, 14, (1, 8)),
    ("ResNet-50 layer4 3x3 512->512 @7", 512, 512, 3, 1, 7, (1, 8)),
    ("ResNet-56 stage1 3x3 16->16 @32", 16, 16, 3, 1, 32, (64,)),
    ("ResNet-56 stage3 3x3 64->64 @8", 64, 64, 3, 1, 8, (64,)),
    ("MobileNetV2 expand 1x1 24->144 @56", 24, 144, 1, 1, 56, (1,)),
    ("MobileNetV2 project 1x1 576->96 @14", 576, 96, 1, 1, 14, (1,)),
    ("YOLOv8n-width 320 C2f 3x3 64->64 @40", 64, 64, 3, 1, 40, (1,)),
    ("YOLOv8n-width 320 C2f out 1x1 512->256 @10", 512, 256, 1, 1, 10, (1,)),
]


def counts_for(c: int) -> list[int]:
    """Kept counts probed: fractions of c, and c minus small steps (SIMD blocks)."""
    fractions = {max(1, round(c * f)) for f in (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875)}
    near = {c - d for d in (1, 4, 8, 12, 16, 32, 64) if c - d > 0}
    return sorted(fractions | near | {c}, reverse=True)


def layer_curves(quick: bool, only: str = "") -> list[str]:
    lines = ["| layer | batch | side | kept k/c: time ratio (multiply-adds k/c) |",
             "|---|---|---|---|"]
    for label, cin, cout, k, stride, hw, batches in LAYERS[:2] if quick else LAYERS:
        if only and only not in label:
            continue
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


def pruned_uniformly(model: onnx.ModelProto, fraction: float, step: int) -> onnx.ModelProto:
    """``model`` with every budget span (kse_onnx/budget/spans.py: residual group spans
    and layer inputs) keeping ``fraction`` of its channels (a multiple of ``step``, at
    least one step), the most important by the KSE indicator, as the budget builds it."""
    from kse_onnx.analysis.plan import layer_indicator
    from kse_onnx.budget.build import timing_model
    from kse_onnx.budget.search import keeps
    from kse_onnx.budget.spans import find_cuts
    from kse_onnx.graph.core import import_graph
    from kse_onnx.graph.runtime_shapes import fill_conv_shapes
    from kse_onnx.graph.select import conv_sites
    from kse_onnx.options import KSEOptions, LowerOptions, SelectOptions

    graph = import_graph(model)
    fill_conv_shapes(graph, model)
    sites = conv_sites(graph, SelectOptions())
    indicators = {s.name: layer_indicator(s.weight, KSEOptions()) for s in sites
                  if s.reason is None}
    cuts = find_cuts(graph, sites, {k: v for k, v in indicators.items() if v is not None})
    kept = {u.name: min(u.size, max(step, step * round(u.size * fraction / step)))
            for u in cuts.spans}
    layers, streams = keeps(cuts, kept)
    return timing_model(model, SelectOptions(), LowerOptions("compact"), layers, streams)


def resnet56_uniform(batch: int) -> list[str]:
    """The authors' ResNet-56, every unit cut to the same fraction, float and INT8 (the
    input conv kept float, as --quantize writes it), against onnxruntime's INT8."""
    from kse_onnx.quantize.ptq import input_convs
    from models.export import export_kse_resnet56

    path = export_kse_resnet56(common.KSE_RESNET56,
                               Path("/tmp") / "int8_curves_resnet56.onnx")
    original = onnx.load(path)
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    models = {"int8 x1": quantize_int8(original, "int8-static", set(), x, share=False)[0],
              "float x1": original}
    macs = {1.0: conv_counts(original)["macs"]}
    for fraction in (0.75, 0.5, 0.25):
        built = pruned_uniformly(original, fraction, 8)
        macs[fraction] = conv_counts(built)["macs"]
        models[f"int8 x{fraction:g}"] = quantize_int8(built, "int8-static", set(), x,
                                                      share=False,
                                                      float_convs=input_convs(built))[0]
    timings = {t.label: t for t in interleaved_latency(models, batch, 1, repeats=25,
                                                       budget_s=60, min_repeats=7)}
    lines = ["| ResNet-56, every unit kept x (multiple of 8) | Conv multiply-adds | batch | "
             "INT8: ratio to INT8 x1 | INT8: ratio to float x1 |", "|---|---|---|---|---|"]
    for fraction, m in macs.items():
        t = timings[f"int8 x{fraction:g}"]
        lines.append(f"| x{fraction:g} | {m / 1e6:.0f} M ({m / macs[1.0]:.2f}) | {batch} | "
                     f"{t.ratio:.2f} | {t.median_ms / timings['float x1'].median_ms:.2f} |")
        print(lines[-1], flush=True)
    return lines


def profile(model: onnx.ModelProto, batch: int, label: str) -> str:
    """Share of onnxruntime's profiled kernel time by op type and by stage (node names
    containing layer1..layer4), INT8 (4 random calibration inputs), 1 thread, 5 runs."""
    import json
    from collections import Counter

    import onnxruntime as ort

    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    x = np.random.default_rng(0).standard_normal((4, *shape)).astype(np.float32)
    quantized = quantize_int8(model, "int8-static", set(), x, share=False)[0]
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.enable_profiling = 1, True
    options.profile_file_prefix = f"/tmp/int8_curves_profile_{label}"
    sess = ort.InferenceSession(quantized.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: np.random.default_rng(1).standard_normal(
        (batch, *shape)).astype(np.float32)}
    for _ in range(5):
        sess.run(None, feed)
    with open(sess.end_profiling()) as f:
        events = [e for e in json.load(f) if e.get("cat") == "Node"
                  and e["name"].endswith("_kernel_time")]
    ops, stages = Counter(), Counter()
    for e in events:
        ops[e["args"]["op_name"]] += e["dur"]
        if "Conv" in e["args"]["op_name"]:
            stages[next((s for s in ("layer1", "layer2", "layer3", "layer4")
                         if s in e["name"]), "stem/head")] += e["dur"]
    total = sum(ops.values())
    return (f"| {label} | {batch} | {total / 5e3:.1f} ms | "
            + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in ops.most_common(4)) + " | "
            + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in sorted(stages.items())) + " |")


def main() -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--part", choices=("layers", "models", "resnet56", "all"),
                        default="all")
    parser.add_argument("--batches", default="1,8", help="whole-model batches")
    parser.add_argument("--quick", action="store_true", help="two layers, two widths")
    parser.add_argument("--layers", default="", help="only the layers whose label has this")
    args = parser.parse_args()

    start = time.time()
    common.print_header("1 thread")
    out = []
    if args.part in ("layers", "all"):
        out += layer_curves(args.quick, args.layers) + [""]
    if args.part in ("models", "all"):
        out += whole_models([int(b) for b in args.batches.split(",")], args.quick) + [""]
    if args.part in ("resnet56", "all"):
        out += resnet56_uniform(64) + [""]
        from models.export import export_kse_resnet56

        out += ["| INT8 model (profiled) | batch | kernel time / run | by op type | "
                "Conv time by stage |", "|---|---|---|---|---|"]
        r56 = export_kse_resnet56(common.KSE_RESNET56,
                                  Path("/tmp") / "int8_curves_resnet56.onnx")
        out.append(profile(onnx.load(r56), 64, "ResNet-56"))
        out.append(profile(resnet50(1.0), 1, "ResNet-50 224"))
    print("\n".join(out))
    print(f"took {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
