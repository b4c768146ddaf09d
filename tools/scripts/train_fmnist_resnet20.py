"""Train the CIFAR-style ResNet-20 on Fashion-MNIST and export models/fmnist_resnet20.onnx.

    apt-get install dataset-fashion-mnist
    python -m tools.scripts.train_fmnist_resnet20 [--epochs 15] [--threads 2] [--out models/...]
    python -m tools.scripts.train_fmnist_resnet20 --arch vgg --epochs 6 --out models/fmnist_vgg.onnx

Input of the exported model: raw pixels in [0, 1], float32, (batch, 1, 28, 28); the
normalisation is inside the graph; output: the 10 logits. SGD (momentum 0.9, Nesterov,
weight decay 5e-4), batch 128, lr 0.1 with a cosine schedule, random crop (padding 2)
and horizontal flip.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from kse_onnx.data import fashion_mnist
from models.export import export, max_abs_diff
from models.zoo import CifarResNet, FmnistVGG
from tools import common
from tools.common import ROOT

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training set


class Normalized(nn.Module):
    """``net((x - mean) / std)``: keeps the normalisation inside the exported graph."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net((x - MEAN) / STD)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop with 2 pixels of zero padding, and horizontal flip."""
    n = x.shape[0]
    padded = F.pad(x, (2, 2, 2, 2))
    dy, dx = torch.randint(0, 5, (2,), generator=gen).tolist()
    x = padded[:, :, dy:dy + 28, dx:dx + 28]
    flip = torch.rand(n, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    return float((pred == y).float().mean())


def main() -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--arch", choices=("resnet20", "vgg"), default="resnet20",
                        help="resnet20: CIFAR-style ResNet-20; vgg: models.zoo.FmnistVGG")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "fmnist_resnet20.onnx")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    xtr, ytr = fashion_mnist("train")
    xte, yte = fashion_mnist("test")
    xtr = torch.from_numpy(xtr.astype(np.float32) / 255.0)[:, None]
    xte = torch.from_numpy(xte.astype(np.float32) / 255.0)[:, None]
    ytr, yte = torch.from_numpy(ytr.astype(np.int64)), torch.from_numpy(yte.astype(np.int64))

    net = CifarResNet(3, classes=10, in_channels=1) if args.arch == "resnet20" else FmnistVGG()
    model = Normalized(net)
    steps = args.epochs * (len(xtr) // 128)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps,
                                                pct_start=0.15, anneal_strategy="cos")
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr) - 127, 128):
            idx = order[i:i + 128]
            loss = F.cross_entropy(model(augment(xtr[idx], gen)), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        acc = accuracy(model, xte, yte)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss.item():.3f}, "
              f"test accuracy {acc:.4f}, {time.time() - start:.0f} s", flush=True)

    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = export(model, (1, 28, 28), 17)
    onnx.save(proto, args.out)
    diff = max_abs_diff(model, proto, (1, 28, 28))
    result = {"arch": args.arch, "test_accuracy": acc, "epochs": args.epochs,
              "seconds": round(time.time() - start), "max_abs_diff_torch_onnxruntime": diff}
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}: {result}")


if __name__ == "__main__":
    main()
