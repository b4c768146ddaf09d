"""The README's table for the KSE authors' CIFAR-10 ResNet-56: counts, file sizes and
onnxruntime CPU latency of every lowering at G=4,T=0 and G=5,T=1.

    python -m tools.results.resnet56_table [--weights ../shared/models/kse_resnet56_cifar10.pth]
        [--batches 1,64] [--threads 1] [--repeats 20] [--out zoo/]

Latency: each setting's models (original first) run interleaved, median of
``--repeats`` runs each, reported as a ratio to the original measured in the same loop.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from kse_onnx.api import optimize
from kse_onnx.options import KSEOptions, LowerOptions
from kse_onnx.runtime.bench import interleaved_latency
from models.export import export_kse_resnet56
from tools import common
from tools.common import ROOT

LOWERINGS = {"dense": LowerOptions("dense"), "dense, align 1": LowerOptions("dense", align=1),
             "compact": LowerOptions("compact"), "factored": LowerOptions("factored")}
SETTINGS = ((4, 0), (5, 1))
PUBLISHED = {(4, 0): "0.43M / 60M", (5, 1): "0.36M / 50M"}


def main() -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--weights", type=Path,
                        default=common.KSE_RESNET56)
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "zoo")
    args = common.parse(parser)
    batches = [int(b) for b in args.batches.split(",")]

    original = args.out / "kse_resnet56_op17.onnx"
    original.unlink(missing_ok=True)  # always from --weights
    export_kse_resnet56(args.weights, original)

    common.print_header(f"onnxruntime CPU, {args.threads} thread(s)")
    header = ["G,T", "lowering", "conv weights (graph / KSE count)",
              "conv MACs (graph / KSE factored count)", "file"]
    header += [f"latency b{b}" for b in batches] + ["published (params / FLOPs)"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    size0 = original.stat().st_size
    print(f"| - | original | 0.848M | 125.5M | {size0 / 1e6:.2f} MB |"
          + " 1.00 |" * len(batches) + " 0.85M / 125M |")
    for G, T in SETTINGS:
        reports, paths = {}, {}
        for lowering, lower_options in LOWERINGS.items():
            tag = lowering.replace(", ", "_").replace(" ", "")
            paths[lowering] = args.out / f"kse_resnet56_G{G}T{T}_{tag}.onnx"
            reports[lowering] = optimize(original, paths[lowering], KSEOptions(G=G, T=T),
                                         lower_options=lower_options)
        models = {"original": onnx.load(original)}
        models.update({low: onnx.load(p) for low, p in paths.items()})
        ratios = {b: {t.label: t.ratio for t in interleaved_latency(
            models, b, args.threads, args.repeats)} for b in batches}
        for lowering in LOWERINGS:
            r = reports[lowering]
            t = r.totals()
            graph = r.extra["graph_counts"]["after"]
            cells = [f"{G},{T}", lowering,
                     f"{graph['weights'] / 1e6:.3f}M / {t['params_factored'] / 1e6:.3f}M",
                     f"{graph['macs'] / 1e6:.1f}M / {t['macs_factored'] / 1e6:.1f}M",
                     f"{r.file_size_after / 1e6:.2f} MB ({r.file_size_after / size0:.2f}x)"]
            cells += [f"{ratios[b][lowering]:.2f}" for b in batches]
            cells.append(PUBLISHED[(G, T)])
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
