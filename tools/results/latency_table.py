"""The README's latency table: for each model, every lowering and ``auto`` against the
original, on one onnxruntime provider: multiply-adds, file size and measured latency.

    python -m tools.results.latency_table [--models kse_resnet56,resnet50,...] [--batches 1,8,64]
        [--threads 1,2] [--provider cpu|cuda|tensorrt] [--G 4 --T 0] [--budget 20] [--out zoo/]

Models: ``kse_resnet56`` (the authors' trained CIFAR-10 ResNet-56, from
``../shared/models``) and the zoo's randomly initialised models (``models/zoo.py``).
Latency: for each (batch, threads) the original and its optimized versions run
interleaved, each time the median of the repeats (as many as fit in ``--budget``
seconds, at least 5), as a ratio to the original's median in the same loop.
Multiply-adds and weights are what the written graph computes (``graph``), beside the
paper's count for the plan (``KSE``); they are counts, not speed.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import onnx

from kse_onnx.api import optimize
from kse_onnx.options import KSEOptions, LowerOptions, batch_list
from kse_onnx.runtime.bench import interleaved_latency
from kse_onnx.runtime.ort import provider_list
from tools import common
from tools.common import ROOT

LOWERINGS = ("dense", "compact", "factored", "auto")


def original_model(name: str, out: Path, weights: Path) -> Path:
    """Export ``name`` (zoo name or ``kse_resnet56``) to ``out`` once."""
    path = out / f"{name}_op17.onnx"
    if path.exists():
        return path
    from models.export import export, export_kse_resnet56
    from models.zoo import build

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "kse_resnet56":
            export_kse_resnet56(weights, path)
        else:
            model, shape = build(name, seed=0)
            onnx.save(export(model, shape, 17), path)
    return path


def main() -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--models", default="kse_resnet56,resnet20_cifar,vgg16_bn_cifar,"
                                            "resnet50", help="also: mobilenetv2, densenet40_cifar")
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--provider", default="cpu")
    parser.add_argument("--lowerings", default=",".join(LOWERINGS))
    parser.add_argument("--G", type=int, default=4)
    parser.add_argument("--T", type=int, default=0)
    parser.add_argument("--budget", type=float, default=20.0,
                        help="seconds of timed runs per (model, batch, threads)")
    parser.add_argument("--weights", type=Path,
                        default=common.KSE_RESNET56)
    parser.add_argument("--out", type=Path, default=ROOT / "zoo")
    args = common.parse(parser)
    providers = provider_list(args.provider)
    batches, threads = batch_list(args.batches), batch_list(args.threads, "--threads")
    common.print_header(f"{args.provider}, G={args.G},T={args.T}")
    cols = [f"b{b} t{t}" for t in threads for b in batches]
    header = ["model", "lowering", "conv MACs graph (KSE)", "conv weights graph (KSE)", "file",
              "optimize s"] + cols
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name in args.models.split(","):
        src = original_model(name, args.out, args.weights)
        paths, reports, seconds = {}, {}, {}
        lowerings = args.lowerings.split(",")
        for lowering in lowerings:
            paths[lowering] = args.out / f"{name}_G{args.G}T{args.T}_{lowering}.onnx"
            start = time.perf_counter()
            reports[lowering] = optimize(
                src, paths[lowering], KSEOptions(G=args.G, T=args.T),
                lower_options=LowerOptions(lowering, provider=args.provider), overwrite=True)
            seconds[lowering] = time.perf_counter() - start
        models = {"original": src.read_bytes()}
        models.update({low: p.read_bytes() for low, p in paths.items()})
        ratios = {}
        for t in threads:
            for b in batches:
                timings = interleaved_latency(models, b, t, repeats=200, providers=providers,
                                              budget_s=args.budget, min_repeats=5)
                ratios[f"b{b} t{t}"] = {x.label: x.ratio for x in timings}
        size0 = src.stat().st_size
        first = reports[lowerings[0]]
        before = first.extra["graph_counts"]["before"]
        print(f"| {name} | original | {_m(before['macs'])} | {_m(before['weights'])} | "
              f"{size0 / 1e6:.2f} MB | - |" + " 1.00 |" * len(cols))
        for lowering in lowerings:
            r = reports[lowering]
            graph, totals = r.extra["graph_counts"]["after"], r.totals()
            cells = [name, lowering,
                     f"{graph['macs'] / before['macs']:.3f} ({_ratio(totals, 'macs')})",
                     f"{graph['weights'] / before['weights']:.3f} ({_ratio(totals, 'params')})",
                     f"{r.file_size_after / size0:.3f}", f"{seconds[lowering]:.1f}"]
            cells += [f"{ratios[c][lowering]:.2f}" for c in cols]
            print("| " + " | ".join(cells) + " |", flush=True)


def _m(value) -> str:
    return f"{value / 1e6:.1f}M"


def _ratio(totals: dict, kind: str) -> str:
    return f"{totals[f'{kind}_factored'] / totals[f'{kind}_before']:.3f}"


if __name__ == "__main__":
    main()
