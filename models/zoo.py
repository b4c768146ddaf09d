"""Plain torch definitions of the zoo's CNNs (no torchvision), for structure tests and
benchmarks. ``build(name, seed)`` gives a randomly initialised model whose BatchNorm
statistics are random too, so an exported graph keeps non-trivial biases."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

CIFAR = (3, 32, 32)
IMAGENET = (3, 224, 224)


class BasicBlockA(nn.Module):
    """CIFAR ResNet block with the parameter-free "option A" shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes // 4 if (stride != 1 or inplanes != planes) else 0

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x
        if self.pad:
            shortcut = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) of He et al. for CIFAR; attribute names match the KSE authors'."""

    def __init__(self, blocks: int, classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        widths, inplanes = (16, 32, 64), 16
        for i, width in enumerate(widths):
            layers = []
            for j in range(blocks):
                layers.append(BasicBlockA(inplanes, width, 2 if (i > 0 and j == 0) else 1))
                inplanes = width
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.linear = nn.Linear(64, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _conv_bn_relu(c_in, c_out, k=3, stride=1, groups=1, act=nn.ReLU):
    return [nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out), act(inplace=True)]


class VGG16BN(nn.Module):
    CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
           512, 512, 512, "M")

    def __init__(self, classes: int = 10):
        super().__init__()
        layers, c = [], 3
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += _conv_bn_relu(c, v)
                c = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512, classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class DenseNet40(nn.Module):
    """DenseNet-40 (growth 12, 3 blocks of 12 BN-ReLU-Conv3x3 layers, no bottleneck)."""

    def __init__(self, growth: int = 12, per_block: int = 12, classes: int = 10):
        super().__init__()
        c = 2 * growth
        self.conv1 = nn.Conv2d(3, c, 3, 1, 1, bias=False)
        stages = []
        for b in range(3):
            for _ in range(per_block):
                stages.append(_DenseLayer(c, growth))
                c += growth
            if b < 2:
                stages.append(nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                                            nn.Conv2d(c, c, 1, bias=False), nn.AvgPool2d(2)))
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        x = F.relu(self.bn(self.stages(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class _DenseLayer(nn.Module):
    def __init__(self, c_in, growth):
        super().__init__()
        self.bn = nn.BatchNorm2d(c_in)
        self.conv = nn.Conv2d(c_in, growth, 3, 1, 1, bias=False)

    def forward(self, x):
        return torch.cat([x, self.conv(F.relu(self.bn(x)))], 1)


class InvertedResidual(nn.Module):
    def __init__(self, c_in, c_out, stride, expand):
        super().__init__()
        hidden = c_in * expand
        layers = [] if expand == 1 else _conv_bn_relu(c_in, hidden, 1, act=nn.ReLU6)
        layers += _conv_bn_relu(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6)
        layers += [nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and c_in == c_out

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0) with torchvision's layout of ``features`` and ``classifier``."""

    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, classes: int = 1000):
        super().__init__()
        features = [nn.Sequential(*_conv_bn_relu(3, 32, 3, 2, act=nn.ReLU6))]
        c = 32
        for t, width, n, s in self.SETTINGS:
            for i in range(n):
                features.append(InvertedResidual(c, width, s if i == 0 else 1, t))
                c = width
        features.append(nn.Sequential(*_conv_bn_relu(c, 1280, 1, act=nn.ReLU6)))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in, width, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """ImageNet ResNet-50 with torchvision's attribute names."""

    def __init__(self, classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c = 64
        for i, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
            layers = []
            for j in range(blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                down = None
                if j == 0:
                    down = nn.Sequential(nn.Conv2d(c, width * 4, 1, stride, bias=False),
                                         nn.BatchNorm2d(width * 4))
                layers.append(Bottleneck(c, width, stride, down))
                c = width * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.fc = nn.Linear(2048, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class SmallCNN(nn.Module):
    """The README's demo: four 3x3 convs on 1x28x28 images, 10 classes."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_relu(1, 16), *_conv_bn_relu(16, 32), nn.MaxPool2d(2),
            *_conv_bn_relu(32, 32), *_conv_bn_relu(32, 64), nn.MaxPool2d(2))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class FmnistVGG(nn.Module):
    """A VGG-style CNN for 1x28x28 images: 32-32, pool, 64-64, pool, 128-128, global
    average pool, 10 classes (the second Fashion-MNIST model of tools/results/refit_table.py)."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_relu(1, 32), *_conv_bn_relu(32, 32), nn.MaxPool2d(2),
            *_conv_bn_relu(32, 64), *_conv_bn_relu(64, 64), nn.MaxPool2d(2),
            *_conv_bn_relu(64, 128), *_conv_bn_relu(128, 128))
        self.fc = nn.Linear(128, classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))
class ConvBnSiLU(nn.Sequential):
    """Conv-BN-SiLU, the YOLO unit (SiLU exports as Sigmoid * x)."""

    def __init__(self, c_in, c_out, k=1, stride=1):
        super().__init__(nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False),
                         nn.BatchNorm2d(c_out), nn.SiLU())


class C2f(nn.Module):
    """YOLOv8's CSP block: split the channels in two (Split), run residual bottlenecks on
    the second half, concatenate every partial result."""

    def __init__(self, c_in, c_out, n=1):
        super().__init__()
        self.c = c_out // 2
        self.cv1 = ConvBnSiLU(c_in, 2 * self.c)
        self.m = nn.ModuleList(nn.Sequential(ConvBnSiLU(self.c, self.c, 3),
                                             ConvBnSiLU(self.c, self.c, 3)) for _ in range(n))
        self.cv2 = ConvBnSiLU((2 + n) * self.c, c_out)

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        for m in self.m:
            y.append(y[-1] + m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.cv1 = ConvBnSiLU(c_in, c_in // 2)
        self.pool = nn.MaxPool2d(5, 1, 2)
        self.cv2 = ConvBnSiLU(c_in * 2, c_out)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.pool(x)
        y2 = self.pool(y1)
        return self.cv2(torch.cat([x, y1, y2, self.pool(y2)], 1))


class TinyYOLO(nn.Module):
    """A small YOLO-style detector on 3x64x64: C2f backbone, SPPF, an FPN/PAN neck
    (nearest 2x upsampling, Concat) and two anchor heads reshaped to (batch, boxes, 5 + classes)
    with sigmoid scores and ``2 sigmoid - 0.5`` box offsets."""

    def __init__(self, classes: int = 4, anchors: int = 3):
        super().__init__()
        self.no, self.na = 5 + classes, anchors
        self.stem = ConvBnSiLU(3, 16, 3, 2)
        self.p3 = nn.Sequential(ConvBnSiLU(16, 32, 3, 2), C2f(32, 32))
        self.p4 = nn.Sequential(ConvBnSiLU(32, 64, 3, 2), C2f(64, 64), SPPF(64, 64))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.top_down = C2f(96, 32)
        self.down = ConvBnSiLU(32, 32, 3, 2)
        self.bottom_up = C2f(96, 64)
        self.heads = nn.ModuleList(nn.Conv2d(c, self.na * self.no, 1) for c in (32, 64))

    def _head(self, i, x):
        b, _, h, w = x.shape
        y = self.heads[i](x).reshape(b, self.na, self.no, h, w).permute(0, 1, 3, 4, 2)
        y = torch.sigmoid(y)
        xy, rest = y.split([2, self.no - 2], dim=-1)
        return torch.cat([xy * 2 - 0.5, rest], -1).reshape(b, -1, self.no)

    def forward(self, x):
        p3 = self.p3(self.stem(x))
        p4 = self.p4(p3)
        n3 = self.top_down(torch.cat([self.up(p4), p3], 1))
        n4 = self.bottom_up(torch.cat([self.down(n3), p4], 1))
        return torch.cat([self._head(0, n3), self._head(1, n4)], 1)


class TinyYOLOv8(TinyYOLO):
    """TinyYOLO's backbone and neck with YOLOv8's (ultralytics) anchor-free head, exported
    the way ultralytics exports it: per level a box branch (4 x ``reg_max`` DFL bins) and a
    class branch; DFL (softmax over the bins, expectation), ``dist2bbox`` to centre x, y,
    width, height, times the level's stride, and sigmoid class scores in [0, 1], joined by
    one Concat into (batch, 4 + classes, anchors). Boxes are in the pixels of a ``frame``
    x ``frame`` image (640, YOLOv8's export size; the 64x64 input is that image resized),
    so the output joins 0..640 coordinates and [0, 1] scores as YOLOv8n's does. The class
    branch starts at ultralytics' prior, bias log(5 / nc / (frame / s)^2), with small
    weights: most scores are near 0 and a few pass 0.25, as in a trained detector."""

    def __init__(self, classes: int = 4, reg_max: int = 4, size: int = 64, frame: int = 640):
        super().__init__(classes)
        self.nc, self.reg_max, self.size, self.frame = classes, reg_max, size, frame
        self.strides = (4, 8)  # of the 64x64 input; times frame / size in the output
        self.box = nn.ModuleList(nn.Sequential(ConvBnSiLU(c, 32, 3), nn.Conv2d(32, 4 * reg_max, 1))
                                 for c in (32, 64))
        self.cls = nn.ModuleList(nn.Sequential(ConvBnSiLU(c, 32, 3), nn.Conv2d(32, classes, 1))
                                 for c in (32, 64))
        del self.heads
        points, steps = [], []
        for s in self.strides:
            n = size // s
            y, x = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5, indexing="ij")
            points.append(torch.stack([x.flatten(), y.flatten()]))
            steps.append(torch.full((1, n * n), float(s)))
        self.register_buffer("anchors", torch.cat(points, 1), persistent=False)
        self.register_buffer("stride_of", torch.cat(steps, 1), persistent=False)
        self.register_buffer("bins", torch.arange(reg_max, dtype=torch.float32).reshape(
            1, reg_max, 1, 1), persistent=False)

    CLASS_WEIGHT_SCALE = 0.1

    def init_priors(self) -> None:
        """ultralytics' ``bias_init`` of the class branch, its weights scaled down."""
        with torch.no_grad():
            for cls, s in zip(self.cls, self.strides, strict=True):
                cls[-1].weight.mul_(self.CLASS_WEIGHT_SCALE)
                cls[-1].bias.fill_(math.log(5 / self.nc / (self.size / s) ** 2))

    def forward(self, x):
        p3 = self.p3(self.stem(x))
        p4 = self.p4(p3)
        n3 = self.top_down(torch.cat([self.up(p4), p3], 1))
        n4 = self.bottom_up(torch.cat([self.down(n3), p4], 1))
        b = x.shape[0]
        box = torch.cat([self.box[i](f).reshape(b, 4 * self.reg_max, -1)
                         for i, f in enumerate((n3, n4))], 2)
        cls = torch.cat([self.cls[i](f).reshape(b, self.nc, -1)
                         for i, f in enumerate((n3, n4))], 2)
        bins = box.reshape(b, 4, self.reg_max, -1).transpose(2, 1).softmax(1)
        dist = (bins * self.bins).sum(1)  # (b, 4, anchors): left, top, right, bottom
        lt, rb = dist.chunk(2, 1)
        centre = self.anchors + (rb - lt) / 2
        boxes = torch.cat([centre, lt + rb], 1) * (self.stride_of * (self.frame / self.size))
        return torch.cat([boxes, cls.sigmoid()], 1)


def _double_conv(c_in, c_out):
    return nn.Sequential(*_conv_bn_relu(c_in, c_out), *_conv_bn_relu(c_out, c_out))


class TinyUNet(nn.Module):
    """A small U-Net on 3x32x32: two poolings, a ConvTranspose and a bilinear
    (align_corners=False) upsampling on the way up, Concat skip connections, per-pixel
    logits of 3 classes."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.enc1, self.enc2, self.mid = _double_conv(3, 16), _double_conv(16, 32), \
            _double_conv(32, 64)
        self.up2 = nn.ConvTranspose2d(64, 32, 2, stride=2)
        self.dec2 = _double_conv(64, 32)
        self.up1 = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear"),
                                 nn.Conv2d(32, 16, 1))
        self.dec1 = _double_conv(32, 16)
        self.out = nn.Conv2d(16, classes, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.out(d1)


BUILDERS = {
    "resnet20_cifar": (lambda: CifarResNet(3), CIFAR),
    "resnet56_cifar": (lambda: CifarResNet(9), CIFAR),
    "vgg16_bn_cifar": (VGG16BN, CIFAR),
    "densenet40_cifar": (DenseNet40, CIFAR),
    "mobilenetv2": (MobileNetV2, IMAGENET),
    "resnet50": (ResNet50, IMAGENET),
    "small_cnn": (SmallCNN, (1, 28, 28)),
    "yolo_tiny": (TinyYOLO, (3, 64, 64)),
    "yolov8_tiny": (TinyYOLOv8, (3, 64, 64)),
    "unet_tiny": (TinyUNet, (3, 32, 32)),
}
NAMES = tuple(BUILDERS)
CONV_COUNTS = {"resnet20_cifar": 19, "resnet56_cifar": 55, "vgg16_bn_cifar": 13,
               "densenet40_cifar": 39, "mobilenetv2": 52, "resnet50": 53, "small_cnn": 4,
               "yolo_tiny": 24, "yolov8_tiny": 30, "unet_tiny": 12}


def build(name: str, seed: int = 0) -> tuple[nn.Module, tuple[int, ...]]:
    """Model ``name`` in eval mode with seeded random weights and BN statistics."""
    factory, input_shape = BUILDERS[name]
    torch.manual_seed(seed)
    model = factory()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen)
                                    * (2.0 / fan_in) ** 0.5)
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.01)
            elif isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(c, generator=gen) * 0.1)
                module.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
        if hasattr(model, "init_priors"):
            model.init_priors()
    return model.eval(), input_shape


CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # the input normalisation of the authors' ResNet-56
CIFAR_STD = (0.2023, 0.1994, 0.2010)


def load_kse_resnet56(path) -> nn.Module:
    """The KSE authors' trained CIFAR-10 ResNet-56 (their ``.mask`` keys dropped).

    It expects inputs normalised with mean (0.4914, 0.4822, 0.4465) and std
    (0.2023, 0.1994, 0.2010); the exported graph takes the normalised input."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    state = {k: v for k, v in state.items() if not k.endswith(".mask")}
    model = CifarResNet(9)
    model.load_state_dict(state, strict=True)
    return model.eval()
