"""Torch-Pruning rows of the latency budget table: the trained Fashion-MNIST ResNet-20
(weights read from models/fmnist_resnet20.onnx, BatchNorm folded as exported), pruned
with Torch-Pruning (L1 magnitude importance, DepGraph, uniform ratio, rounded to
multiples of 4 channels) to the same measured latency as the KSE row, exported to ONNX
and fine-tuned exactly like the KSE rows (2 epochs of ``kse_onnx`` finetune).

    pip install --no-deps torch-pruning
    python -m tools.results.tp_resnet20 [--targets 0.6,0.8,0.4] [--int8]

The pruning ratio is found by bisection on the measured ratio (interleaved medians,
batch 1 and 64, 1 thread; max over both) to the original (with --int8: onnxruntime's
INT8 of each). Rows go to out/latency_budget/rows/tp_*.json for latency_budget_table.py.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from kse_onnx.evaluate import evaluate
from kse_onnx.graph.io import save_model
from kse_onnx.quantize.ptq import quantize_int8
from kse_onnx.runtime.bench import interleaved_latency
from models.export import export, max_abs_diff
from tools import common
from tools.common import ROOT
from tools.results.latency_budget_table import (
    OUT,
    TEACHER,
    data,
    describe,
    int8_reference,
    latency,
    tune_two_epochs,
)

MEAN, STD = 0.2860, 0.3530


class Block(nn.Module):
    """BasicBlockA with BatchNorm folded into biased convs. The option-A shortcut
    (``pad(x[:, :, ::2, ::2])`` on channels) is written as the same function in a form
    Torch-Pruning's DepGraph can follow: a 1x1 stride-2 Conv with a fixed 0/1 weight."""

    def __init__(self, inplanes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1)
        self.shortcut = None
        if stride != 1 or inplanes != planes:
            self.shortcut = nn.Conv2d(inplanes, planes, 1, stride, 0, bias=False)
            weight = torch.zeros(planes, inplanes, 1, 1)
            pad = planes // 4
            weight[torch.arange(inplanes) + pad, torch.arange(inplanes)] = 1.0
            self.shortcut.weight.data.copy_(weight)
            self.shortcut.weight.requires_grad_(False)

    def forward(self, x):
        out = self.conv2(F.relu(self.conv1(x)))
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + shortcut)


class ResNet20(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, 1, 1)
        blocks, inplanes = [], 16
        for i, width in enumerate((16, 32, 64)):
            for j in range(3):
                blocks.append(Block(inplanes, width, 2 if i > 0 and j == 0 else 1))
                inplanes = width
        self.blocks = nn.Sequential(*blocks)
        self.linear = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.conv1((x - MEAN) / STD))
        x = self.blocks(x)
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def trained() -> ResNet20:
    """ResNet20 with the ONNX model's weights (Convs in graph order, then the Gemm)."""
    model = onnx.load(TEACHER)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    net = ResNet20()
    modules = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.bias is not None]
    with torch.no_grad():
        for module, node in zip(modules, convs, strict=True):
            module.weight.copy_(torch.from_numpy(inits[node.input[1]]))
            module.bias.copy_(torch.from_numpy(inits[node.input[2]]))
        net.linear.weight.copy_(torch.from_numpy(inits[gemm.input[1]]))
        net.linear.bias.copy_(torch.from_numpy(inits[gemm.input[2]]))
    return net.eval()


def pruned(ratio: float) -> ResNet20:
    import torch_pruning as tp

    net = trained()
    example = torch.zeros(1, 1, 28, 28)
    ignored = [net.linear]
    pruner = tp.pruner.MagnitudePruner(
        net, example, importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio, ignored_layers=ignored, round_to=4)
    pruner.step()
    return net.eval()


def measured(path: Path, reference: Path) -> float:
    ratios = []
    for batch in (1, 64):
        t = interleaved_latency({"reference": onnx.load(reference).SerializeToString(),
                                 "model": onnx.load(path).SerializeToString()}, batch, 1, 200,
                                budget_s=6.0)
        ratios.append(t[1].ratio)
    return max(ratios)


def to_onnx(net: nn.Module, path: Path, int8: bool, calibration) -> Path:
    save_model(export(net, (1, 28, 28), 17), path)
    if not int8:
        return path
    q = path.with_name(path.stem + "_int8.onnx")
    model, _ = quantize_int8(onnx.load(path), "int8-static", set(), np.load(calibration)["x"])
    save_model(model, q)
    return q


def main() -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--targets", default="0.6")
    parser.add_argument("--int8", action="store_true")
    parser.add_argument("--steps", type=int, default=5, help="bisection steps")
    args = parser.parse_args()
    (OUT / "rows").mkdir(parents=True, exist_ok=True)
    _, x_test, y_test, calibration = data()
    kind = "int8" if args.int8 else "float"
    reference = int8_reference(calibration) if args.int8 else TEACHER
    check = max_abs_diff(trained(), onnx.load(TEACHER), (1, 28, 28))
    common.print_header(f"weights loaded: max |torch - onnx| = {check:.2e}")
    for r in (float(v) for v in args.targets.split(",")):
        tag = f"tp_{kind}_{r:g}"
        low, high, best = 0.0, 0.95, None
        for _ in range(args.steps):  # smallest ratio whose measured latency meets r
            mid = (low + high) / 2
            path = to_onnx(pruned(mid), OUT / f"{tag}_try.onnx", args.int8, calibration)
            got = measured(path, reference)
            print(f"  ratio {mid:.3f}: measured {got:.3f}", flush=True)
            if got <= r:
                high, best = mid, mid
            else:
                low = mid
        best = high if best is None else best
        plain = OUT / f"{tag}.onnx"
        save_model(export(pruned(best), (1, 28, 28), 17), plain)
        tuned = OUT / f"{tag}_2ep.onnx"
        start = time.perf_counter()
        tune_two_epochs(plain, tuned, calibration if args.int8 else None)
        seconds = time.perf_counter() - start
        row = {"method": "Torch-Pruning L1", "kind": kind, "R": r, "pruning_ratio": best,
               "model": str(tuned.relative_to(ROOT)), "accuracy_pruned": evaluate(
                   plain, x_test, y_test).top1, "accuracy": evaluate(tuned, x_test, y_test).top1,
               "latency": latency(reference, tuned),
               **describe(tuned, describe(TEACHER, 1)["macs"]),
               "seconds": {"finetune": round(seconds, 1)}, "load": round(os.getloadavg()[0], 1)}
        (OUT / "rows" / f"{tag}.json").write_text(json.dumps(row, indent=1) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
